"""Statistics of an ablation: each step's paired effect on eval bits per byte, tested two ways.

- across seeds: a paired t-test on the per-seed differences (same seed, same data windows and
  initialisation, so seed-to-seed variation cancels), with its 95% t interval;
- across the evaluation set: a paired bootstrap over its fixed 512-token blocks (the per-block
  differences averaged over the paired seeds, blocks resampled with replacement), percentile 95% CI.

A step's effect counts (helped / hurt) only when both agree: p < ALPHA in the t-test and the
bootstrap interval excludes 0, on the same side. The power note gives the seeds a paired t-test needs
to detect the observed effect with POWER at ALPHA (two-sided), from the observed mean and spread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
N_BOOT = 10_000
RULE = (f"helped / hurt only when the paired t-test across seeds gives p < {ALPHA:g} and the 95% paired "
        "bootstrap interval over evaluation blocks excludes 0 on the same side")


def paired_t(diffs: Sequence[float], alpha: float = ALPHA) -> dict:
    """Paired t-test of per-seed differences (scipy.stats.ttest_rel on pairs = ttest_1samp on the
    differences): n, mean, std, t, two-sided p and the (1 - alpha) t interval of the mean difference.
    With one pair there is no test (p and interval None); with zero spread the test is exact (p 0 or 1)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        raise ValueError("paired_t needs at least one difference")
    mean = float(d.mean())
    out = {"n": n, "mean": mean, "std": None, "t": None, "p": None, "ci": None}
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    out["std"] = std
    if std == 0.0:  # every seed moved by exactly the same amount: no noise to test against
        out.update(p=1.0 if mean == 0 else 0.0, ci=(mean, mean), t=0.0 if mean == 0 else math.copysign(math.inf, mean))
        return out
    res = stats.ttest_1samp(d, 0.0)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / math.sqrt(n)
    out.update(t=float(res.statistic), p=float(res.pvalue), ci=(mean - half, mean + half))
    return out


def paired_bootstrap(block_diffs: Sequence[float], block_weights: Sequence[float] | None = None,
                     n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> dict:
    """Bootstrap of the weighted mean block difference (sum of diffs / sum of weights; weights = the
    blocks' bytes, so the statistic is the whole-split Δ bits per byte when diffs are in bits).
    Percentile (1 - alpha) interval and a two-sided p: twice the smaller share of resamples at or
    beyond 0 on either side ((count + 1) / (n_boot + 1), capped at 1)."""
    d = np.asarray(block_diffs, dtype=np.float64)
    w = np.ones_like(d) if block_weights is None else np.asarray(block_weights, dtype=np.float64)
    if len(d) == 0 or d.shape != w.shape:
        raise ValueError(f"paired_bootstrap: {len(d)} block differences and {len(w)} weights (need equal, > 0)")
    estimate = float(d.sum() / w.sum())
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for lo in range(0, n_boot, 1000):  # 1,000 resamples at a time: bounded memory for large splits
        idx = rng.integers(0, len(d), size=(min(1000, n_boot - lo), len(d)))
        boots[lo:lo + len(idx)] = d[idx].sum(axis=1) / w[idx].sum(axis=1)
    lo_q, hi_q = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    below, above = int((boots <= 0).sum()), int((boots >= 0).sum())
    p = 1.0 if estimate == 0 else min(1.0, 2 * (min(below, above) + 1) / (n_boot + 1))
    return {"mean": estimate, "ci": (float(lo_q), float(hi_q)), "p": p, "blocks": len(d), "n_boot": n_boot}


def paired_t_power(n: int, effect_size: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with n pairs at standardised effect dz = mean / std."""
    if n < 2:
        return 0.0
    df, nc = n - 1, abs(effect_size) * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_for_power(mean: float, std: float | None, power: float = POWER, alpha: float = ALPHA,
                    max_n: int = 10_000) -> int | None:
    """Fewest seeds (pairs) for which a paired t-test detects `mean` given the per-seed spread `std`
    with the given power; None when it cannot be said (no spread measured, or no effect at all)."""
    if std is None or mean == 0:
        return None
    if std == 0:
        return 2
    dz = mean / std
    lo, hi = 1, 2  # power grows with n: double to bracket it, then bisect
    while paired_t_power(hi, dz, alpha) < power:
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if paired_t_power(mid, dz, alpha) >= power else (mid, hi)
    return hi


def verdict(t: dict, boot: dict | None, lower_is_better: bool = True, identical: bool = False,
            need_boot: bool = True) -> str:
    """The stated rule (RULE) applied to one step's t-test and bootstrap (Δ = with step − without);
    with need_boot False (a metric without per-block values) the t-test alone decides."""
    if identical:
        return "no effect (identical results: the step changed no training data here)"
    if t["p"] is None:
        return "undecided (one seed: no t-test)"
    t_side = 0 if t["p"] >= ALPHA else (1 if t["mean"] > 0 else -1)
    if boot is None and not need_boot:
        b_side = t_side
    else:
        b_side = 0 if boot is None else (1 if boot["ci"][0] > 0 else -1 if boot["ci"][1] < 0 else 0)
    if t_side == 0 or t_side != b_side:
        return "not significant" + ("" if boot is not None or not need_boot else " (no per-block losses)")
    return "helped" if (t_side < 0) == lower_is_better else "hurt"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def block_bits(blocks: dict, eval_bytes: int, eval_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(bits per block, bytes per block) from an eval_blocks.json payload: a block's bytes are its
    tokens at the split's mean bytes per token, so the weighted mean of bits/bytes is the split's bpb."""
    nats = np.asarray(blocks["nats"], dtype=np.float64)
    size = int(blocks["block_tokens"])
    tokens = np.full(len(nats), float(size))
    if len(nats):
        tokens[-1] = eval_tokens - size * (len(nats) - 1)
    return nats / math.log(2), tokens * (eval_bytes / eval_tokens)


def _by_variant(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            out.setdefault(r["variant"], {})[int(r["seed"])] = float(r[metric])
    return out


def _blocks_by_variant(rows: list[dict]) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for r in rows:
        raw = r.get("eval_blocks")
        if raw:
            payload = json.loads(raw) if isinstance(raw, str) else raw
            out.setdefault(r["variant"], {})[int(r["seed"])] = block_bits(payload, int(r["eval_bytes"]),
                                                                         int(r["eval_tokens"]))
    return out


def effects(variants: Sequence, rows: list[dict], metric: str = "eval_bpb", n_boot: int = N_BOOT) -> list[dict]:
    """Per variant (objects with name, kind, compare_to): mean ± std over seeds; and for each compared
    one, the effect Δ = with the step − without (a leave-one-out variant lacks its step, so Δ =
    compare_to − it), its paired t-test over seeds, for bits per byte its paired block bootstrap
    (n_boot resamples; 0 skips it), the verdict and the seeds needed for POWER."""
    values = _by_variant(rows, metric)
    blocks = _blocks_by_variant(rows) if metric == "eval_bpb" and n_boot else {}
    out = []
    for v in variants:
        mine = values.get(v.name, {})
        if not mine:
            continue
        mean, std = mean_std(list(mine.values()))
        row = {"variant": v.name, "kind": v.kind, "compare_to": v.compare_to, "n": len(mine), "mean": mean,
               "std": std, "pairs": 0, "effect": None, "t": None, "boot": None, "verdict": "", "seeds_needed": None}
        other = values.get(v.compare_to or "", {})
        seeds = sorted(set(mine) & set(other))
        if seeds:
            sign = -1.0 if v.kind == "leave-one-out" else 1.0
            diffs = [sign * (mine[s] - other[s]) for s in seeds]
            t = paired_t(diffs)
            mb, ob = blocks.get(v.name, {}), blocks.get(v.compare_to or "", {})
            bseeds = [s for s in seeds if s in mb and s in ob and len(mb[s][0]) == len(ob[s][0])]
            boot, block_diff = None, None
            if bseeds and len({len(mb[s][0]) for s in bseeds}) == 1:
                block_diff = sign * np.mean([mb[s][0] - ob[s][0] for s in bseeds], axis=0)
                boot = paired_bootstrap(block_diff, mb[bseeds[0]][1], n_boot)
            identical = all(d == 0 for d in diffs) and (block_diff is None or not block_diff.any())
            row.update(pairs=len(seeds), effect=t["mean"], t=t, boot=boot,
                       verdict=verdict(t, boot, lower_is_better=metric != "mc_accuracy", identical=identical,
                                       need_boot=metric == "eval_bpb"),
                       seeds_needed=seeds_for_power(t["mean"], t["std"]))
        out.append(row)
    return out
