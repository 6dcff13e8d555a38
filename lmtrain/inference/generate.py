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
from lmtrain.inference.sampling import filtered_probs, sample, sample_at


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


@torch.no_grad()
def generate_replies_batched(model: nn.Module, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
                             stop: set[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                             seed: int = 0, max_rows: int = 128) -> tuple[list[list[list[int]]], torch.Tensor]:
    """`n` sampled replies to every prompt (as `generate_replies` gives one prompt's), many prompts at once,
    and the log-probability (prompts, n) of each reply under the distribution it was drawn from (after
    temperature, top-k and top-p; temperature 0 scores the argmax under temperature 1).

    Whole prompts go `max_rows // n` at a time into one KV cache: each prompt is prefilled once (the
    vocabulary projection only at its last position) and its keys and values copied into its n rows;
    then every row advances one token per forward, each at its own position (the cache's per-row
    lengths). Batch b draws from a generator seeded `seed + b` on the model's device, so two models
    given the same prompts see the same random stream (common random numbers).
    """
    if not hasattr(model, "new_kv_cache"):
        raise TypeError(f"batched generation needs a GPT's KV cache; got {type(model).__name__}")
    keep = model.block_size - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in block {model.block_size}")
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    per_batch = max(1, max_rows // max(1, n))
    top_k, top_p = top_k or None, (top_p if 0 < top_p < 1 else None)
    out: list[list[list[int]]] = []
    logprobs = torch.zeros(len(prompts), n)
    was_training = model.training
    model.eval()
    try:
        for b, first in enumerate(range(0, len(prompts), per_batch)):
            group = [list(p)[-keep:] for p in prompts[first:first + per_batch]]
            cache = model.new_kv_cache(n * len(group), max(len(p) for p in group) + max_new_tokens)
            last = []
            for i, p in enumerate(group):
                h = model.hidden_states(torch.tensor([p], dtype=torch.long, device=device), cache, i * n)
                last.append(model.lm_head(h[:, -1])[:, :vocab].expand(n, -1))
                for j in range(1, n):
                    cache.move(i * n, i * n + j)
            logits = torch.cat(last)
            gen = torch.Generator(device=device).manual_seed(seed + b)
            rows: list[list[int]] = [[] for _ in range(n * len(group))]
            done = torch.zeros(len(rows), dtype=torch.bool)
            total = torch.zeros(len(rows))
            for step in range(max_new_tokens):
                # inverse CDF at seeded uniforms (torch.multinomial is ~20x slower on a CPU at this size)
                uniform = torch.rand(len(rows), generator=gen, device=device)
                nxt = sample_at(logits, [temperature] * len(rows), [top_k] * len(rows), [top_p] * len(rows),
                                uniform)[:, None]
                probs = filtered_probs(logits, temperature if temperature > 0 else 1.0, top_k, top_p)
                total += torch.where(done, 0.0, probs.gather(1, nxt)[:, 0].log().float().cpu())
                for i, t in enumerate(nxt[:, 0].tolist()):
                    if not done[i]:
                        rows[i].append(t)
                        done[i] = t in stop
                if bool(done.all()) or step + 1 == max_new_tokens:
                    break
                logits = model(nxt, kv_cache=cache)[0][:, -1]
            out += [rows[i * n:(i + 1) * n] for i in range(len(group))]
            logprobs[first:first + len(group)] = total.view(len(group), n)
    finally:
        model.train(was_training)
    return out, logprobs
