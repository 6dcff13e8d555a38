"""Generation over the model's one forward pass and the one sampler: token by token (the basis of
streaming), whole continuations, streamed text, and sampled chat replies that stop at end-of-turn.

A GPT decodes with its KV cache when prompt + new tokens fit in its block; other models (the
baselines, which look at a few tokens) and longer runs recompute on the last block_size tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from lmtrain.inference.decode import TextStream
from lmtrain.inference.sampling import sample


@torch.no_grad()
def generate_tokens(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                    generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the sampled tokens one step at a time, each (B, 1)."""
    if use_cache and hasattr(model, "new_kv_cache") and idx.size(1) + max_new_tokens <= model.block_size:
        cache = model.new_kv_cache(idx.size(0), idx.size(1) + max_new_tokens)
        logits, _ = model(idx, kv_cache=cache)
        for step in range(max_new_tokens):
            nxt = sample(logits[:, -1, :], temperature, top_k, top_p, generator)
            yield nxt
            if step + 1 < max_new_tokens:
                logits, _ = model(nxt, kv_cache=cache)
        return
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.block_size:])
        nxt = sample(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt


@torch.no_grad()
def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens)."""
    new = list(generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
    return torch.cat([idx, *new], dim=1)


def stream_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 200, top_p: float | None = None, seed: int | None = 0,
                stop_token: int | None = None) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece; pieces joined equal the decoded continuation."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([ids[-model.block_size:]], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    text = TextStream(tokenizer)
    try:
        for tok in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator=generator):
            token = int(tok[0, 0])
            if stop_token is not None and token == stop_token:
                break
            piece, _ = text.push(token)
            if piece:
                yield piece
        tail = text.flush()
        if tail:
            yield tail
    finally:
        model.train(was_training)


def sample_text(model: nn.Module, tokenizer, prompt: str, **kwargs) -> str:
    """The whole continuation as one string (stream_text joined)."""
    return "".join(stream_text(model, tokenizer, prompt, **kwargs))


@torch.no_grad()
def generate_replies(model: nn.Module, prompt: Sequence[int], n: int, max_new_tokens: int, stop: set[int],
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
    """`n` sampled replies to one prompt, each ending at its first stop token (kept) or at max_new_tokens.

    The n rows share the prompt, so one KV cache serves them all. Draws use `generator` on its device
    (the model's: create it with `torch.Generator(device=...)`).
    """
    keep = model.block_size - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in block {model.block_size}")
    device = next(model.parameters()).device
    idx = torch.tensor([list(prompt)[-keep:]] * n, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    was_training = model.training
    model.eval()
    try:
        for tok in generate_tokens(model, idx, max_new_tokens, temperature, top_k or None,
                                   top_p if 0 < top_p < 1 else None, use_cache, generator):
            for i, t in enumerate(tok[:, 0].tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t in stop
            if all(done):
                break
    finally:
        model.train(was_training)
    return out
