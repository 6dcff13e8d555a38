"""Numerics every alignment method shares: right-padding and log-probabilities of chosen tokens.

No method imports another method's module; what they share lives here, in pairs.py and in
reward_model.py (loading and saving bundles is lmtrain.models.bundle, prompt and reply ids
lmtrain.tokenizer.chat).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.models.gpt import GPT


def fenced(text: str) -> str:
    """`text` as a markdown code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def pad_batch(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """Right-pad rows to the longest one."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position from logits (B, T, V) and targets (B, T).

    Computed by cross-entropy, which runs in fp32 under autocast, without a float copy of the logits.
    """
    return -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def sequence_logprobs(model: GPT, rows: Sequence[tuple[list[int], int]], pad: int) -> torch.Tensor:
    """Sum of log p over each row's reply tokens; rows are (ids, prompt length)."""
    device = model.lm_head.weight.device
    x = pad_batch([ids for ids, _ in rows], pad).to(device)
    logits, _ = model(x[:, :-1])
    logp = token_logprobs(logits, x[:, 1:])
    pos = torch.arange(x.size(1) - 1, device=device)[None, :]
    starts = torch.tensor([n for _, n in rows], device=device)[:, None]
    ends = torch.tensor([len(ids) for ids, _ in rows], device=device)[:, None]
    mask = (pos >= starts - 1) & (pos < ends - 1)  # positions whose next token is a reply token
    return (logp * mask).sum(1)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
