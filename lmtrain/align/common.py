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


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per position from logits (B, T, V) and targets (B, T), under `temperature`.

    p is softmax(logits / temperature): the distribution a sampler at that temperature draws from (with
    no top-k / top-p), so ratios and KL of sampled replies are scored where they were sampled. Computed by
    cross-entropy, which runs in fp32 under autocast, without a float copy of the logits at temperature 1.
    """
    check_temperature(temperature)
    if temperature != 1.0:
        logits = logits.float() / temperature
    return -F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature {temperature!r}: log-probabilities need a temperature > 0 "
                         "(temperature 0 is greedy decoding, which has no sampling distribution to score)")


def sequence_logprobs(model: GPT, rows: Sequence[tuple[list[int], int]], pad: int,
                      temperature: float = 1.0) -> torch.Tensor:
    """Sum of log p over each row's reply tokens under `temperature`; rows are (ids, prompt length)."""
    device = model.lm_head.weight.device
    x = pad_batch([ids for ids, _ in rows], pad).to(device)
    logits, _ = model(x[:, :-1])
    logp = token_logprobs(logits, x[:, 1:], temperature)
    pos = torch.arange(x.size(1) - 1, device=device)[None, :]
    starts = torch.tensor([n for _, n in rows], device=device)[:, None]
    ends = torch.tensor([len(ids) for ids, _ in rows], device=device)[:, None]
    mask = (pos >= starts - 1) & (pos < ends - 1)  # positions whose next token is a reply token
    return (logp * mask).sum(1)


def rollout_sampling_error(section: str, temperature: float, top_k: int, top_p: float) -> str | None:
    """Why these sampling settings cannot drive an RL rollout, or None when they can.

    The policy-gradient ratio and the KL penalty score each sampled token under softmax(logits / T);
    top-k / top-p truncate and renormalise the distribution the tokens are drawn from, so the scored
    distribution would not be the sampled one (and a truncated token has log-prob -inf).
    """
    if not temperature > 0:
        return (f"params {section}.temperature: {temperature} (greedy) gives no sampling distribution; "
                "rollouts need a temperature > 0")
    if top_k or (top_p != 1.0):
        return (f"params {section}.top_k={top_k}, top_p={top_p}: rollouts must sample from the full "
                f"distribution (top_k 0, top_p 1.0) — log-probs, ratio and KL are scored under "
                f"softmax(logits / temperature), so with top-k / top-p the scored distribution would not be "
                "the sampled one; use temperature to sharpen instead")
    return None


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
