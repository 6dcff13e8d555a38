"""Streaming text generation: a model, any tokenizer with encode/decode, text pieces as they are ready."""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import torch
import torch.nn as nn


def stream_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 200, top_p: float | None = None, seed: int | None = 0,
                stop_token: int | None = None) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece; pieces joined equal the decoded continuation.

    A token may end in the middle of a multi-byte UTF-8 character; such bytes are held back until
    the character is complete. Tokenizers with `decode_bytes` (tiktoken, lmtrain.hf) are decoded
    incrementally; otherwise pending tokens are held while their text ends in U+FFFD.
    """
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([ids[-model.block_size:]], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    byte_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[int] = []
    try:
        for tok in model.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, generator=generator):
            token = int(tok[0, 0])
            if stop_token is not None and token == stop_token:
                break
            if hasattr(tokenizer, "decode_bytes"):
                piece = byte_decoder.decode(tokenizer.decode_bytes([token]))
            else:
                pending.append(token)
                piece = tokenizer.decode(pending)
                if piece.endswith("\ufffd") and len(pending) < 8:  # probably an unfinished character
                    continue
                pending.clear()
            if piece:
                yield piece
        tail = byte_decoder.decode(b"", final=True) if hasattr(tokenizer, "decode_bytes") else (
            tokenizer.decode(pending) if pending else "")
        if tail:
            yield tail
    finally:
        model.train(was_training)


def sample_text(model: nn.Module, tokenizer, prompt: str, **kwargs) -> str:
    """The whole continuation as one string (stream_text joined)."""
    return "".join(stream_text(model, tokenizer, prompt, **kwargs))
