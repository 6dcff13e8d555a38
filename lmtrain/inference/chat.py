"""A terminal conversation with a chat model (`lmforge chat --checkpoint DIR`).

Each user line is added to the history, the history is rendered with the chat template plus the
`<|assistant|>` marker, and the reply streams until `<|end|>`. When the history no longer fits the
model's block, the oldest turns are dropped (a system message is kept). Commands: `/reset` clears
the history, `/exit`, `/quit` or end of input leave.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lmtrain.inference.decode import TextStream
from lmtrain.inference.generate import generate_tokens
from lmtrain.models.bundle import load_gpt
from lmtrain.tokenizer.chat import prompt_ids, stop_ids


def _fit(history: list[dict], tok, budget: int) -> list[int]:
    """Rendered prompt of the newest turns that fit in `budget` tokens (system message kept)."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = history[len(system):]
    while True:
        ids = prompt_ids(tok, system + turns)
        if len(ids) <= budget or len(turns) <= 1:
            return ids[-budget:]
        turns = turns[1:]


def chat_loop(ckpt_dir: str | Path, input_fn: Callable[[str], str] = input, output_fn: Callable[..., None] = print,
              max_new_tokens: int = 128, temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0,
              seed: int = 0, system: str | None = None, max_turns: int | None = None) -> list[dict]:
    """Run the conversation until /exit, end of input or max_turns user turns; return the history."""
    model, tok = load_gpt(ckpt_dir, dropout=0.0)
    model.eval()
    if max_new_tokens >= model.block_size:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be below the model's block_size {model.block_size}")
    stops = stop_ids(tok)
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    turns = 0
    while max_turns is None or turns < max_turns:
        try:
            line = input_fn("you> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = list(base)
            output_fn("(history cleared)")
            continue
        if not line.strip():
            continue
        turns += 1
        history.append({"role": "user", "content": line})
        idx = torch.tensor([_fit(history, tok, model.block_size - max_new_tokens)], device=device)
        text = TextStream(tok)
        reply_ids: list[int] = []
        output_fn("bot> ", end="", flush=True)
        for t in generate_tokens(model, idx, max_new_tokens, temperature, top_k or None,
                                 top_p if 0 < top_p < 1 else None, generator=g):
            token = int(t[0, 0])
            if token in stops:
                break
            reply_ids.append(token)
            piece, _ = text.push(token)  # a token may end mid-character: held back until complete
            if piece:
                output_fn(piece, end="", flush=True)
        output_fn(text.flush())
        history.append({"role": "assistant", "content": tok.decode(reply_ids)})
    return history
