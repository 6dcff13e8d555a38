"""Metrics for judging aligned policies: a reference metric, bootstrap confidence intervals over prompts,
win rates (overall, length-matched, by reply length), a two-sided length flag, length distributions,
and the model-side scores (judge score, KL to the reference under the sampling temperature).

Statistics are over prompts, never over samples: the replies of one prompt are not independent, so
every interval resamples whole prompts. `align_eval` and the over-optimisation curve share these.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from lmtrain.align.common import pad_batch, token_logprobs
from lmtrain.align.reward_model import score_ids


def _char_ngrams(text: str, n: int) -> Counter:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, char_order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF (Popović 2015) in 0..100, as sacrebleu's CHRF() scores a sentence by default.

    Whitespace is removed; for each character n-gram order 1..char_order that both texts have,
    precision and recall of the n-gram multiset; their means over those orders give F-beta (beta 2:
    recall counts twice). Identical texts score 100, texts sharing no character 0.
    """
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions, recalls = [], []
    for n in range(1, char_order + 1):
        h, r = _char_ngrams(hyp, n), _char_ngrams(ref, n)
        if not h or not r:
            continue
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    f = beta ** 2
    return 100.0 * (1 + f) * p * r / (f * p + r)


def bootstrap_ci(values: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray | None = None,
                 resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of per-prompt `values` and its percentile bootstrap interval, resampling prompts.

    With `weights` (e.g. pairs per prompt) the statistic is the weighted mean sum(w·v)/sum(w), so a
    ratio over pairs (length-matched win rate) is resampled by prompt too; prompts of weight 0 count
    as drawn but add nothing. Returns {"mean", "lo", "hi", "n"}; lo/hi are None for no data.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    if v.shape != w.shape or v.ndim != 1:
        raise ValueError(f"values {v.shape} and weights {w.shape} must be one value per prompt")
    if not 0 < level < 1:
        raise ValueError(f"level {level} must lie in (0, 1)")
    if not len(v) or w.sum() <= 0:
        return {"mean": None, "lo": None, "hi": None, "n": int(len(v))}
    v = np.where(w > 0, v, 0.0)  # a prompt without pairs may carry NaN: it weighs nothing
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(resamples, len(v)))
    num, den = (v * w)[idx].sum(1), w[idx].sum(1)
    stats = num[den > 0] / den[den > 0]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return {"mean": float((v * w).sum() / w.sum()), "lo": float(lo), "hi": float(hi), "n": int(len(v))}


def per_prompt(values: Sequence[float] | torch.Tensor, prompts: int) -> np.ndarray:
    """(prompts, samples) from a flat list ordered prompt by prompt."""
    a = np.asarray(values.tolist() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if prompts <= 0 or a.size % prompts:
        raise ValueError(f"{a.size} values do not split into {prompts} prompts")
    return a.reshape(prompts, -1)


def wins(policy_scores: np.ndarray, base_scores: np.ndarray) -> np.ndarray:
    """1 where the policy's reply scores higher than the paired reference reply, 0.5 on a tie, else 0."""
    return (policy_scores > base_scores) + 0.5 * (policy_scores == base_scores)


def length_matched(policy_len: np.ndarray, base_len: np.ndarray, tolerance: float) -> np.ndarray:
    """Pairs whose lengths differ by at most `tolerance` of the longer one (at least one token)."""
    return np.abs(policy_len - base_len) <= np.maximum(tolerance * np.maximum(policy_len, base_len), 1.0)


def length_flag(policy_mean: float, base_mean: float, margin: float) -> str | None:
    """'longer' or 'shorter' when the policy's mean reply length differs from the reference's by more
    than `margin` (relative to the reference), else None: a reward can be gamed in either direction."""
    if base_mean <= 0:
        return None if policy_mean <= 0 else "longer"
    ratio = policy_mean / base_mean
    if ratio > 1 + margin:
        return "longer"
    if ratio < 1 - margin:
        return "shorter"
    return None


def bin_labels(edges: Sequence[int]) -> list[str]:
    """Names of the bins that integer `edges` cut lengths into: '<e0', 'e0-(e1-1)', ..., '>=eK'."""
    if list(edges) != sorted(set(edges)):
        raise ValueError(f"length bin edges {list(edges)} must be strictly increasing")
    if not edges:
        return ["all"]
    inner = [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{edges[0]}", *inner, f">={edges[-1]}"]


def win_rate_by_length(win: np.ndarray, lengths: np.ndarray, edges: Sequence[int]) -> list[dict]:
    """Win rate and pair count per bin of the policy's reply length (bins from `edges`, in tokens)."""
    w, n = np.asarray(win, dtype=np.float64).ravel(), np.asarray(lengths).ravel()
    which = np.searchsorted(np.asarray(edges), n, side="right")
    out = []
    for b, label in enumerate(bin_labels(edges)):
        sel = which == b
        out.append({"bin": label, "pairs": int(sel.sum()), "win_rate": float(w[sel].mean()) if sel.any() else None})
    return out


def length_summary(lengths: np.ndarray, edges: Sequence[int],
                   quantiles: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Mean, quantiles and histogram (bin labels and counts, bins from `edges`) of reply lengths in tokens."""
    n = np.asarray(lengths, dtype=np.float64).ravel()
    which = np.searchsorted(np.asarray(edges), n, side="right")
    return {"mean": float(n.mean()) if n.size else None,
            "quantiles": {f"p{round(q * 100)}": float(np.quantile(n, q)) for q in quantiles} if n.size else {},
            "histogram": {"bins": bin_labels(edges), "counts": [int((which == b).sum())
                                                                for b in range(len(edges) + 1)]}}


def judge_scores(judge, prompts: Sequence[list[int]], replies: Sequence[Sequence[list[int]]], end: int,
                 pad: int) -> torch.Tensor:
    """The judge's (a reward model's) score of every reply, prompt by prompt; a reply cut at the length
    budget is closed with the end-of-turn token `end` first, as the reward model was trained."""
    rows = [p + (r if r and r[-1] == end else r + [end]) for p, rs in zip(prompts, replies) for r in rs]
    return score_ids(judge, rows, pad)


@torch.no_grad()
def reply_logprobs(model, prompts: Sequence[list[int]], replies: Sequence[Sequence[list[int]]],
                   temperature: float = 1.0, batch_size: int = 32, autocast=None, pad: int = 0) -> torch.Tensor:
    """log p_T(reply | prompt) (prompts, samples): the sum over each reply's tokens under softmax(logits / T),
    teacher-forced; the vocabulary projection runs only at the positions that predict a reply token."""
    rows = [(p, r) for p, rs in zip(prompts, replies) for r in rs]
    device = model.lm_head.weight.device
    out = []
    for i in range(0, len(rows), max(1, batch_size)):
        chunk = rows[i:i + max(1, batch_size)]
        x = pad_batch([p + r for p, r in chunk], pad).to(device)
        targets = pad_batch([r for _, r in chunk], pad).to(device)
        j = torch.arange(targets.size(1), device=device)[None, :]
        valid = j < torch.tensor([len(r) for _, r in chunk], device=device)[:, None]
        pos = torch.where(valid, torch.tensor([len(p) - 1 for p, _ in chunk], device=device)[:, None] + j, 0)
        with autocast() if autocast is not None else contextlib.nullcontext():
            h = model.hidden_states(x)
            h = h.gather(1, pos[..., None].expand(-1, -1, h.size(-1)))
            logits = model.lm_head(h)[..., :model.config.vocab_size]
            out.append((token_logprobs(logits, targets, temperature) * valid).sum(1).float().cpu())
    flat = torch.cat(out) if out else torch.zeros(0)
    return flat.view(len(prompts), -1) if len(prompts) else flat


def kl_to_reference(policy, reference, prompts: Sequence[list[int]], replies: Sequence[Sequence[list[int]]],
                    pad: int, temperature: float, batch_size: int = 32, autocast=None,
                    policy_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """log π_T(y|x) − log ref_T(y|x) per reply (flat, prompt by prompt), in nats, both at the sampling
    temperature T: on the policy's own samples the mean estimates KL(π_T ‖ ref_T).

    `policy_logprobs` (prompts, samples), the log-probs of the draws as generate_replies_batched returns
    them, save the policy's forward; `policy` is then not run.
    """
    if policy_logprobs is None:
        policy_logprobs = reply_logprobs(policy, prompts, replies, temperature, batch_size, autocast, pad)
    ref = reply_logprobs(reference, prompts, replies, temperature, batch_size, autocast, pad)
    return (policy_logprobs.reshape(-1) - ref.reshape(-1)).float()
