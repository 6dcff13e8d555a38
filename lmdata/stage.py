"""The stage contract shared by every data step: keep rows, or reject them with a reason.

A *step* is a function `DataFrame -> StepResult`. It never writes files or counts drops itself:
the stage runner (`lmdata.runner`) writes kept and rejected shards atomically, checks conservation
and builds the metrics. Rejected rows keep every input column and add three:

- `reason`: a fixed rule name (`exact_dup`, `near_dup`, `eval_overlap`, `lang`, `quality`, ...),
- `reason_detail`: free text (the id a duplicate points to, a language code, a file:line),
- `reason_value`: the measured number where there is one (a Jaccard estimate, a score), else null.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

REJECT_COLUMNS = {"reason": pl.Utf8, "reason_detail": pl.Utf8, "reason_value": pl.Float64}


@dataclass
class StepResult:
    kept: pl.DataFrame
    rejected: pl.DataFrame

    def __post_init__(self) -> None:
        missing = [c for c in REJECT_COLUMNS if c not in self.rejected.columns]
        if missing:
            raise ValueError(f"rejected rows lack the columns {missing}")


def empty_rejects(df: pl.DataFrame) -> pl.DataFrame:
    """A zero-row reject frame with `df`'s columns plus the reason columns."""
    return add_reason(df.clear(), reason="")


def add_reason(df: pl.DataFrame, reason: str | pl.Expr, detail: str | pl.Expr | None = None,
               value: float | pl.Expr | None = None) -> pl.DataFrame:
    """Attach `reason`, `reason_detail`, `reason_value` (constants or expressions) to `df`."""
    def as_expr(x, dtype):
        return x.cast(dtype) if isinstance(x, pl.Expr) else pl.lit(x, dtype=dtype)

    return df.with_columns(
        as_expr(reason, pl.Utf8).alias("reason"),
        as_expr(detail, pl.Utf8).alias("reason_detail"),
        as_expr(value, pl.Float64).alias("reason_value"),
    )


def split_by_decisions(df: pl.DataFrame, decisions: pl.DataFrame, key: str = "id") -> StepResult:
    """Reject the rows of `df` whose `key` appears in `decisions` (columns: key, reason,
    reason_detail, reason_value); keep the rest, in their original order."""
    decisions = decisions.select(key, *REJECT_COLUMNS).with_columns(
        [pl.col(c).cast(t) for c, t in REJECT_COLUMNS.items()])
    if decisions.is_empty():
        return StepResult(df, empty_rejects(df))
    rejected = df.join(decisions, on=key, how="inner", maintain_order="left")
    kept = df.join(decisions.select(key), on=key, how="anti", maintain_order="left")
    return StepResult(kept, rejected)


def first_failure(df: pl.DataFrame, checks: list[tuple[str, pl.Expr, pl.Expr | None]]) -> StepResult:
    """Apply vectorised checks in order; a row is rejected by the first whose `fails` is true.

    `checks` holds `(reason, fails, value)`: `fails` a boolean expression, `value` the measured
    number reported in `reason_value` (or None)."""
    if not checks:
        return StepResult(df, empty_rejects(df))
    reason = pl.lit(None, dtype=pl.Utf8)
    value = pl.lit(None, dtype=pl.Float64)
    for name, fails, measured in reversed(checks):
        reason = pl.when(fails).then(pl.lit(name)).otherwise(reason)
        m = measured.cast(pl.Float64) if measured is not None else pl.lit(None, dtype=pl.Float64)
        value = pl.when(fails).then(m).otherwise(value)
    tagged = df.with_columns(reason.alias("reason"), value.alias("reason_value"),
                             pl.lit(None, dtype=pl.Utf8).alias("reason_detail"))
    kept = tagged.filter(pl.col("reason").is_null()).drop(list(REJECT_COLUMNS))
    rejected = tagged.filter(pl.col("reason").is_not_null()).select(*df.columns, *REJECT_COLUMNS)
    return StepResult(kept, rejected)
