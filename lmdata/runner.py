"""The Prefect-free half of the stage runner: apply a step to one shard, and sum shard stats
into a stage's metrics with the conservation check (rows_in == rows_kept + rows_rejected).

`flows._stage` submits `run_step_on_shard` as one Prefect task per shard; tests and notebooks
can call it directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

from lmdata.shards import REJECTED_DIR, read_shard, write_shard
from lmdata.stage import StepResult

Step = Callable[[pl.DataFrame], StepResult]


class ConservationError(AssertionError):
    """A step lost or invented rows."""


def run_step_on_shard(step: Step, in_path: Path, out_dir: Path, dataset: str, reject_suffix: str = "") -> dict:
    """Read one shard, apply `step`, write kept rows to `out_dir/<name>` and rejected rows to
    `out_dir/rejected/<stem><reject_suffix>.parquet` (both validated, atomic); return its stats.

    Conservation counts input documents: augmentation may add rows (marked by a non-null
    `augmented_from`), reported as `rows_added`; balance's up-sampling is a `repeats` column."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    df = read_shard(in_path)
    result = step(df)
    rows_in, rejected = df.height, result.rejected.height
    kept_df = result.kept
    added = kept_df.filter(pl.col("augmented_from").is_not_null()).height if "augmented_from" in kept_df.columns else 0
    kept = kept_df.height - added
    if rows_in != kept + rejected:
        raise ConservationError(f"{in_path.name}: rows_in={rows_in} != kept={kept} + rejected={rejected}")
    write_shard(kept_df, out_dir / in_path.name, dataset)
    write_shard(result.rejected, out_dir / REJECTED_DIR / f"{in_path.stem}{reject_suffix}.parquet", dataset,
                rejected=True)
    by_reason = Counter(result.rejected.get_column("reason").to_list()) if rejected else Counter()
    rows_out = int(kept_df["repeats"].sum()) if "repeats" in kept_df.columns else kept_df.height
    return {"shard": in_path.name, "rows_in": rows_in, "rows_kept": kept, "rows_added": added,
            "rows_out": rows_out, "rows_rejected": rejected, "rejected_by_reason": dict(by_reason)}


def summarise(stats: Iterable[dict], seconds: float, **extra) -> dict:
    """Sum per-shard (or per-source) stats into stage metrics; raise if rows were lost."""
    stats = list(stats)
    by_reason: Counter[str] = Counter()
    for s in stats:
        by_reason.update(s.get("rejected_by_reason", {}))
    m = {
        "rows_in": sum(s["rows_in"] for s in stats),
        "rows_kept": sum(s["rows_kept"] for s in stats),
        "rows_rejected": sum(s["rows_rejected"] for s in stats),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "seconds": round(seconds, 3),
        "shards": len(stats),
    }
    if any("rows_out" in s for s in stats):
        m["rows_out"] = sum(s.get("rows_out", s["rows_kept"]) for s in stats)
    if any(s.get("rows_added") for s in stats):
        m["rows_added"] = sum(s.get("rows_added", 0) for s in stats)
    if m["rows_in"] != m["rows_kept"] + m["rows_rejected"]:
        raise ConservationError(f"rows_in={m['rows_in']} != rows_kept={m['rows_kept']} + "
                                f"rows_rejected={m['rows_rejected']}")
    m.update(extra)
    return m


def reason_table(metrics: dict) -> list[dict]:
    """Rows for a Prefect table artifact: kept, then each rejection reason, with shares."""
    total = max(1, metrics["rows_in"])
    rows = [{"outcome": "kept", "rows": metrics["rows_kept"], "share": round(metrics["rows_kept"] / total, 4)}]
    for reason, n in sorted(metrics["rejected_by_reason"].items(), key=lambda kv: -kv[1]):
        rows.append({"outcome": f"rejected: {reason}", "rows": n, "share": round(n / total, 4)})
    return rows


def shard_outputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(kept shards, rejected shards) of a stage output folder."""
    folder = Path(folder)
    return sorted(folder.glob("*.parquet")), sorted((folder / REJECTED_DIR).glob("*.parquet"))
