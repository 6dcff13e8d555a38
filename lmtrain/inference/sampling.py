"""The one sampler: temperature → top-k → renormalise → top-p (nucleus) → draw, as HuggingFace does.

Settings may differ per row (the engine batches requests with their own settings). A draw either
uses torch.multinomial with one generator for the whole batch (generation, rollouts, evaluation), or
the inverse CDF at given uniforms, one per row (the engine: a seeded request draws its uniform from
its own generator, so its output does not depend on what else is in the batch). Temperature 0 is
greedy. A generator is only ever used on its own device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def _rows(values: float | int | None | Sequence, rows: int) -> list:
    """A setting given once or per row, as one value per row."""
    return [values] * rows if values is None or isinstance(values, int | float) else list(values)


def filtered_probs(logits: torch.Tensor, temperature: float | Sequence[float] = 1.0,
                   top_k: int | None | Sequence[int | None] = None,
                   top_p: float | None | Sequence[float | None] = None) -> torch.Tensor:
    """Next-token probabilities (B, vocab) after temperature, top-k and top-p (rows with temperature <= 0
    are left unscaled: callers take their argmax). Settings are plain numbers: no host sync."""
    B, V = logits.shape
    dev = logits.device
    temps = [t if t > 0 else 1.0 for t in _rows(temperature, B)]
    if len(set(temps)) == 1:
        logits = logits.float() / temps[0]
    else:
        logits = logits.float() / torch.tensor(temps, device=dev)[:, None]
    ks = [k if k and 0 < k < V else V for k in _rows(top_k, B)]
    if any(k < V for k in ks):
        if len(set(ks)) == 1:
            kth = torch.topk(logits, ks[0]).values[:, [-1]]
        else:
            index = torch.tensor(ks, device=dev)[:, None] - 1
            kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, index)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    ps = [p if p is not None and 0 < p < 1 else 2.0 for p in _rows(top_p, B)]
    if any(p < 1 for p in ps):
        # nucleus over the renormalised top-k distribution: keep the smallest set of most likely tokens
        # whose mass reaches top_p (a token is dropped when the mass before it already does)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        limit = ps[0] if len(set(ps)) == 1 else torch.tensor(ps, device=dev)[:, None]
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= limit
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return F.softmax(logits, dim=-1)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row (B, 1) from logits (B, vocab), drawn with torch.multinomial and `generator`."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    if generator is not None and generator.device != probs.device:
        raise ValueError(f"generator on {generator.device} cannot draw for logits on {probs.device}")
    return torch.multinomial(probs, num_samples=1, generator=generator)


def sample_at(logits: torch.Tensor, temperature: Sequence[float], top_k: Sequence[int | None],
              top_p: Sequence[float | None], uniform: torch.Tensor) -> torch.Tensor:
    """One token per row (B,) by inverse CDF at `uniform` (B,), each row with its own settings."""
    probs = filtered_probs(logits, temperature, top_k, top_p)
    cdf = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1])[:, None]).clamp_(max=probs.size(1) - 1)
    greedy = [t <= 0 for t in _rows(temperature, logits.size(0))]
    if not any(greedy):
        return picked[:, 0]
    return torch.where(torch.tensor(greedy, device=logits.device), logits.argmax(dim=-1), picked[:, 0])
