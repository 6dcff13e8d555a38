"""Mixture balancing across sources: target weights by temperature or explicit.

Sizes are approximate tokens (UTF-8 bytes / `bytes_per_token`) of the train split. A source over
its target is down-sampled by a stable hash order (rejects: reason `downsampled`); a source under
it is up-sampled by whole repetitions of its documents (a `repeats` column: every document gets
`floor(r)` copies, and the first documents in hash order one more until the target is met), at
most `max_repeats`. When the cap binds for a small source, its excess share goes to the other
sources in proportion to their weights (UniMax, Chung et al. 2023), so the budget is kept instead
of shrinking every source. A plan that would still cut a source by more than `max_source_cut`
fails before anything is written, naming the source and the setting. Documents are never copied
here: `repeats` tells later stages how often to emit each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import xxhash

from lmdata.errors import ConfigError
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
    max_source_cut: float = 0.5  # fail when a source would lose more than this share of its tokens
    min_source_docs: int = 5  # sources with fewer training documents are reported (small_sources)
    total_tokens: float | None = None  # budget; None = the train split's current size
    bytes_per_token: float = 4.0  # the approximation used for sizes (GPT-2 BPE on English ~4)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                            for k, v in self.weights.items()}
        check_field_types(self, "balance")
        if self.mode not in ("temperature", "explicit"):
            raise ConfigError(f"balance.mode: 'temperature' or 'explicit', got {self.mode!r}")
        if self.mode == "temperature" and self.temperature <= 0:
            raise ConfigError(f"balance.temperature: must be > 0, got {self.temperature}")
        if self.mode == "explicit" and (not self.weights or any(w < 0 for w in self.weights.values())
                                        or sum(self.weights.values()) <= 0):
            raise ConfigError(f"balance.weights: explicit mode needs non-negative weights with a positive "
                              f"sum, got {self.weights}")
        if self.max_repeats < 1:
            raise ConfigError(f"balance.max_repeats: must be >= 1, got {self.max_repeats}")
        if not 0.0 <= self.max_source_cut <= 1.0:
            raise ConfigError(f"balance.max_source_cut: expected 0..1 (1 allows any cut), got {self.max_source_cut}")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ConfigError(f"balance.total_tokens: must be > 0 or null, got {self.total_tokens}")
        if self.bytes_per_token <= 0:
            raise ConfigError(f"balance.bytes_per_token: must be > 0, got {self.bytes_per_token}")

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
        raise ConfigError(f"balance.weights: source(s) {unknown} do not exist in the data; sources: "
                          f"{sorted(sources)}")
    missing = sorted(set(sources) - set(cfg.weights))
    if missing:
        raise ConfigError(f"balance.weights: no weight for source(s) {missing} (give 0 to drop one)")


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


def unimax_allocation(sizes: dict[str, float], weights: dict[str, float], budget: float,
                      max_repeats: int) -> dict[str, float]:
    """Target tokens per source: `weights x budget`, except that a source whose share would need
    more than `max_repeats` epochs gets exactly `max_repeats` epochs and its excess goes to the
    uncapped sources in proportion to their weights, repeated until no cap binds (UniMax's
    water-filling, Chung et al. 2023). When every source is capped the total is below `budget`."""
    alloc = {s: 0.0 for s in sizes}
    free = {s for s in sizes if weights.get(s, 0.0) > 0}
    remaining = budget
    while free:
        wsum = sum(weights[s] for s in free)
        capped = {s for s in free if weights[s] / wsum * remaining > max_repeats * sizes[s]}
        if not capped:
            for s in free:
                alloc[s] = weights[s] / wsum * remaining
            break
        for s in capped:
            alloc[s] = max_repeats * sizes[s]
            remaining -= alloc[s]
        free -= capped
    return alloc


def plan_repeats(index: pl.DataFrame, cfg: BalanceConfig) -> tuple[pl.DataFrame, dict]:
    """From (id, source, split, tokens) rows, each id's `repeats` (0 = down-sampled) and stats.

    Works on a small index of the whole dataset, so shards can then be balanced one by one."""
    train = index.filter(pl.col("split") == "train")
    sizes = dict(sorted(train.group_by("source").agg(pl.col("tokens").sum()).iter_rows()))
    docs_by_source = dict(sorted(train.group_by("source").len().iter_rows()))
    weights = mixture_weights(sizes, cfg)
    budget = cfg.total_tokens if cfg.total_tokens is not None else sum(sizes.values())
    targets = unimax_allocation(sizes, weights, budget, cfg.max_repeats)
    parts = []
    for s in sizes:
        docs = train.filter(pl.col("source") == s)
        docs = docs.with_columns(pl.Series("h", _unit_hash(docs["id"].to_list(), cfg.seed)))
        docs = docs.sort("h", "id")
        target = targets[s]
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
    after = {s: 0.0 for s in sizes} | dict(plan.join(train.select("id", "tokens"), on="id").group_by("source")
                                           .agg((pl.col("tokens") * pl.col("repeats")).sum()).iter_rows())
    total_after = sum(after.values())
    total_target = sum(targets.values())
    repeats_max = dict(plan.group_by("source").agg(pl.col("repeats").max()).iter_rows())
    per_source = {s: {"docs": docs_by_source[s], "tokens_before": round(sizes[s], 1),
                      "tokens_after": round(after[s], 1),
                      "change_pct": round(100 * (after[s] / sizes[s] - 1), 1) if sizes[s] else 0.0,
                      "max_repeats_used": int(repeats_max.get(s, 0)),
                      "capped": bool(weights[s] > 0 and targets[s] >= cfg.max_repeats * sizes[s] > 0)}
                  for s in sizes}
    stats = {"tokens_before": sizes, "tokens_after": dict(sorted(after.items())), "target_weights": weights,
             "planned_weights": {s: (t / total_target if total_target else 0.0) for s, t in targets.items()},
             "realised_weights": {s: (t / total_after if total_after else 0.0) for s, t in sorted(after.items())},
             "budget_tokens": budget, "rows_out": int(plan["repeats"].sum()) + index.height - train.height,
             "repeats_by_source": {s: int(r) for s, r in sorted(repeats_max.items())},
             "sources": per_source,
             "small_sources": {s: n for s, n in docs_by_source.items() if n < cfg.min_source_docs}}
    return plan.select("id", "repeats"), stats


def source_cuts(stats: dict, cfg: BalanceConfig) -> dict[str, float]:
    """Sources the plan cuts by more than `max_source_cut` (share of tokens lost), except sources
    an explicit weight of 0 drops on purpose."""
    cuts = {}
    for s, before in stats.get("tokens_before", {}).items():
        if before <= 0 or (cfg.mode == "explicit" and cfg.weights.get(s) == 0):
            continue
        cut = 1.0 - stats["tokens_after"].get(s, 0.0) / before
        if cut > cfg.max_source_cut + 1e-9:
            cuts[s] = cut
    return cuts


def check_source_cuts(stats: dict, cfg: BalanceConfig, section: str = "balance") -> None:
    """Raise ConfigError naming the most-cut source, its tokens and the setting to change."""
    cuts = source_cuts(stats, cfg)
    if not cuts:
        return
    s = max(cuts, key=lambda k: (cuts[k], k))
    before, after = stats["tokens_before"][s], stats["tokens_after"].get(s, 0.0)
    others = f" (also {', '.join(f'{o} -{100 * c:.0f}%' for o, c in sorted(cuts.items()) if o != s)})" \
        if len(cuts) > 1 else ""
    how = (f"{section}.weights" if cfg.mode == "explicit" else f"{section}.temperature")
    raise ConfigError(
        f"{section}: source {s!r} would be cut by {100 * cuts[s]:.0f}% ({before:,.0f} -> {after:,.0f} "
        f"approx. tokens){others}, more than {section}.max_source_cut {cfg.max_source_cut}; raise "
        f"{section}.max_source_cut (1.0 allows any cut), or change {how}"
        + (f" or {section}.total_tokens" if cfg.total_tokens is not None else "")
        + f" or {section}.max_repeats")


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
    check_source_cuts(stats, cfg)
    return apply_plan(df, plan), stats
