"""Mixture balancing across sources: target weights by temperature or explicit.

Sizes are approximate tokens (UTF-8 bytes / `bytes_per_token`) of the train split. A source over
its target is down-sampled by a stable hash order (rejects: reason `downsampled`); a source under
it is up-sampled by whole repetitions of its documents (a `repeats` column: every document gets
`floor(r)` copies, and the first documents in hash order one more until the target is met), at
most `max_repeats`. When a cap would bind, the total budget shrinks so the weights still hold.
Documents are never copied here: `repeats` tells later stages how often to emit each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import xxhash

from lmdata.filters.heuristics import check_field_types, config_from_dict
from lmdata.stage import REJECT_COLUMNS, StepResult, add_reason


@dataclass
class BalanceConfig:
    """Maps 1:1 to params.yaml `balance`."""

    enabled: bool = True
    mode: str = "temperature"  # "temperature": weight ∝ size^(1/T); "explicit": `weights`
    temperature: float = 2.0  # 1 = natural proportions; larger flattens towards uniform
    weights: dict[str, float] = field(default_factory=dict)  # explicit mode: source -> weight (normalised)
    max_repeats: int = 4  # most copies of one document (whole epochs of a source)
    total_tokens: float | None = None  # budget; None = the train split's current size
    bytes_per_token: float = 4.0  # the approximation used for sizes (GPT-2 BPE on English ~4)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                            for k, v in self.weights.items()}
        check_field_types(self, "balance")
        if self.mode not in ("temperature", "explicit"):
            raise ValueError(f"balance.mode: 'temperature' or 'explicit', got {self.mode!r}")
        if self.mode == "temperature" and self.temperature <= 0:
            raise ValueError(f"balance.temperature: must be > 0, got {self.temperature}")
        if self.mode == "explicit" and (not self.weights or any(w < 0 for w in self.weights.values())
                                        or sum(self.weights.values()) <= 0):
            raise ValueError(f"balance.weights: explicit mode needs non-negative weights with a positive "
                             f"sum, got {self.weights}")
        if self.max_repeats < 1:
            raise ValueError(f"balance.max_repeats: must be >= 1, got {self.max_repeats}")

    @classmethod
    def from_dict(cls, d: dict | None) -> BalanceConfig:
        return config_from_dict(cls, d or {}, "balance")


def _approx_tokens(df: pl.DataFrame, cfg: BalanceConfig) -> pl.Expr:
    size = pl.col("n_bytes") if "n_bytes" in df.columns else pl.col("text").str.len_bytes()
    return (size.cast(pl.Float64) / cfg.bytes_per_token).alias("tokens")


def source_tokens(df: pl.DataFrame, cfg: BalanceConfig, split: str = "train") -> dict[str, float]:
    """Approximate tokens per source in `split`, sorted by source."""
    sizes = df.filter(pl.col("split") == split).group_by("source").agg(_approx_tokens(df, cfg).sum())
    return dict(sorted(sizes.iter_rows()))


def validate_weights(cfg: BalanceConfig, sources: list[str]) -> None:
    """Explicit weights must name exactly the train sources; call before any work starts."""
    if cfg.mode != "explicit":
        return
    unknown = sorted(set(cfg.weights) - set(sources))
    if unknown:
        raise ValueError(f"balance.weights: source(s) {unknown} do not exist in the data; sources: "
                         f"{sorted(sources)}")
    missing = sorted(set(sources) - set(cfg.weights))
    if missing:
        raise ValueError(f"balance.weights: no weight for source(s) {missing} (give 0 to drop one)")


def mixture_weights(sizes: dict[str, float], cfg: BalanceConfig) -> dict[str, float]:
    """Target share of tokens per source, summing to 1."""
    validate_weights(cfg, list(sizes))
    if cfg.mode == "explicit":
        raw = {s: cfg.weights[s] for s in sizes}
    else:
        raw = {s: n ** (1.0 / cfg.temperature) if n > 0 else 0.0 for s, n in sizes.items()}
    total = sum(raw.values())
    return {s: w / total for s, w in raw.items()}


def _unit_hash(ids: list[str], seed: int) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(i.encode(), seed=seed) for i in ids], dtype=np.uint64)


def plan_repeats(index: pl.DataFrame, cfg: BalanceConfig) -> tuple[pl.DataFrame, dict]:
    """From (id, source, split, tokens) rows, each id's `repeats` (0 = down-sampled) and stats.

    Works on a small index of the whole dataset, so shards can then be balanced one by one."""
    train = index.filter(pl.col("split") == "train")
    sizes = dict(sorted(train.group_by("source").agg(pl.col("tokens").sum()).iter_rows()))
    weights = mixture_weights(sizes, cfg)
    budget = cfg.total_tokens if cfg.total_tokens is not None else sum(sizes.values())
    # Shrink the budget until no source needs more than max_repeats copies of itself.
    for s, w in weights.items():
        if w > 0 and sizes[s] > 0:
            budget = min(budget, cfg.max_repeats * sizes[s] / w)
    parts = []
    for s in sizes:
        docs = train.filter(pl.col("source") == s)
        docs = docs.with_columns(pl.Series("h", _unit_hash(docs["id"].to_list(), cfg.seed)))
        docs = docs.sort("h", "id")
        target = weights[s] * budget
        whole = min(int(target // sizes[s]) if sizes[s] > 0 else 0, cfg.max_repeats)
        rest = target - whole * sizes[s]
        cum = docs["tokens"].cum_sum().to_numpy()
        # One more copy for the leading documents (hash order) while that brings us closer to target.
        extra = int(np.searchsorted(cum, rest, side="left"))
        if extra < len(cum) and abs(cum[extra] - rest) < abs((cum[extra - 1] if extra else 0.0) - rest):
            extra += 1
        if whole >= cfg.max_repeats:
            extra = 0
        reps = np.full(len(cum), whole, dtype=np.int64)
        reps[:extra] += 1
        parts.append(docs.select("id", "source").with_columns(pl.Series("repeats", reps)))
    plan = pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.Utf8, "source": pl.Utf8,
                                                               "repeats": pl.Int64})
    after = dict(sorted(plan.join(train.select("id", "tokens"), on="id")
                        .group_by("source").agg((pl.col("tokens") * pl.col("repeats")).sum()).iter_rows()))
    total_after = sum(after.values())
    stats = {"tokens_before": sizes, "tokens_after": after, "target_weights": weights,
             "realised_weights": {s: (t / total_after if total_after else 0.0) for s, t in after.items()},
             "budget_tokens": budget, "rows_out": int(plan["repeats"].sum()) + index.height - train.height,
             "repeats_by_source": {s: int(r) for s, r in sorted(
                 plan.group_by("source").agg(pl.col("repeats").max()).iter_rows())}}
    return plan.select("id", "repeats"), stats


def balance_index(df: pl.DataFrame, cfg: BalanceConfig) -> pl.DataFrame:
    """The (id, source, split, tokens) index that `plan_repeats` needs, from a shard."""
    return df.select("id", "source", "split", _approx_tokens(df, cfg))


def apply_plan(df: pl.DataFrame, plan: pl.DataFrame) -> StepResult:
    """Attach `repeats`; train rows planned 0 are rejected as `downsampled`; eval rows get 1."""
    joined = df.join(plan, on="id", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("split") == "eval").then(1).otherwise(pl.col("repeats")).cast(pl.Int64).alias("repeats"))
    unplanned = joined.filter(pl.col("repeats").is_null())
    if not unplanned.is_empty():
        raise ValueError(f"balance: {unplanned.height} train rows are missing from the plan "
                         f"(first id {unplanned['id'][0]})")
    dropped = joined.filter(pl.col("repeats") == 0)
    rejected = add_reason(dropped.drop("repeats"), reason="downsampled", detail=pl.col("source"))
    return StepResult(joined.filter(pl.col("repeats") > 0), rejected.select(*df.columns, *REJECT_COLUMNS))


def balance(df: pl.DataFrame, cfg: BalanceConfig) -> tuple[StepResult, dict]:
    """Balance a whole dataset in memory: (kept with `repeats` + downsampled rejects, stats)."""
    if not cfg.enabled:
        return apply_plan(df, df.select("id", pl.lit(1, dtype=pl.Int64).alias("repeats"))), {}
    plan, stats = plan_repeats(balance_index(df, cfg), cfg)
    return apply_plan(df, plan), stats
