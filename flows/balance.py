"""Stage `balance` for one dataset: mixture weights across sources (temperature or explicit),
whole-epoch up-sampling with a cap (a `repeats` column), deterministic down-sampling
(`downsampled`), and the optional augmentation. The evaluation split passes through untouched.
When `max_repeats` binds, the excess goes to the other sources (UniMax); a plan that would still cut
a source by more than `max_source_cut` fails before anything is written.

    python -m flows.balance corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, dataset_main, map_shards, publish_metrics
from lmdata.atomic import atomic_dir
from lmdata.augment import AugmentConfig, prompt_variants, shuffle_pairs, upsample_source
from lmdata.balance import (
    BalanceConfig,
    apply_plan,
    balance_index,
    check_source_cuts,
    plan_repeats,
    validate_weights,
)
from lmdata.runner import summarise
from lmdata.shards import list_shards
from lmdata.stage import StepResult


@task(name="balance-index", cache_policy=NO_CACHE)
def index_task(shard: Path, cfg: BalanceConfig) -> pl.DataFrame:
    return balance_index(read_index_columns(shard), cfg)


def balance_step(df: pl.DataFrame, plan_path: str, dataset: str, augment: AugmentConfig) -> StepResult:
    result = apply_plan(df, pl.read_parquet(plan_path))
    kept = result.kept
    if augment.enabled:
        if dataset == "corpus" and augment.upsample_source:
            kept = upsample_source(kept, augment)
        elif dataset == "instructions":
            kept = prompt_variants(kept, augment)
        elif dataset == "comparisons" and augment.shuffle_pairs:
            kept = shuffle_pairs(kept, augment)
    return StepResult(kept, result.rejected)


def configs(dataset: str, params: dict) -> tuple[BalanceConfig, AugmentConfig]:
    section = params.get("balance", {}) or {}
    return (BalanceConfig.from_dict(section.get(dataset, section.get("default"))),
            AugmentConfig.from_dict(params.get("augment")))


def make_plan(index: pl.DataFrame, cfg: BalanceConfig, dataset: str) -> tuple[pl.DataFrame, dict]:
    """The repeats plan and its stats; raises ConfigError (nothing written yet) on a bad weight or
    a source cut by more than `max_source_cut`."""
    validate_weights(cfg, sorted(index.filter(pl.col("split") == "train")["source"].unique().to_list()))
    if not cfg.enabled:
        return index.select("id", pl.lit(1, dtype=pl.Int64).alias("repeats")), {}
    plan, stats = plan_repeats(index, cfg)
    check_source_cuts(stats, cfg, section=f"balance.{dataset}")
    return plan, stats


def check(dataset: str, params: dict) -> None:
    """Every config error and the cut guard, before Prefect starts (reads only the index columns)."""
    cfg, _ = configs(dataset, params)
    shards = list_shards(data_root(params) / "filter" / dataset)
    if shards:
        make_plan(pl.concat([balance_index(read_index_columns(s), cfg) for s in shards]), cfg, dataset)


def read_index_columns(shard: Path) -> pl.DataFrame:
    size = "n_bytes" if "n_bytes" in pl.read_parquet_schema(shard) else "text"
    return pl.read_parquet(shard, columns=["id", "source", "split", size])


def report(dataset: str, stats: dict) -> list[str]:
    """Markdown: each source's tokens before and after, the change, and small sources."""
    md = [f"# balance / {dataset}", "", "| source | docs | tokens before | tokens after | change | target weight "
          "| planned (UniMax) | realised | max repeats |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, row in stats.get("sources", {}).items():
        md.append(f"| {s} | {row['docs']} | {row['tokens_before']:,.0f} | {row['tokens_after']:,.0f} | "
                  f"{row['change_pct']:+.1f}% | {stats['target_weights'].get(s, 0):.3f} | "
                  f"{stats['planned_weights'].get(s, 0):.3f} | {stats['realised_weights'].get(s, 0):.3f} | "
                  f"{row['max_repeats_used']}{' (cap)' if row['capped'] else ''} |")
    if stats.get("small_sources"):
        md += ["", "Sources with fewer than `min_source_docs` training documents (their weight rests on "
               f"very few texts): {stats['small_sources']}"]
    return md


@flow(name="balance", log_prints=True)
def balance_stage(dataset: str, params: dict) -> dict:
    cfg, augment = configs(dataset, params)
    root = data_root(params)
    in_dir = root / "filter" / dataset
    shards = list_shards(in_dir)
    t0 = time.perf_counter()
    index = pl.concat([f.result() for f in [index_task.submit(s, cfg) for s in shards]])
    plan, stats = make_plan(index, cfg, dataset)
    with tempfile.TemporaryDirectory(prefix=".balance-", dir=root) as tmp:
        plan_path = Path(tmp) / "plan.parquet"
        plan.write_parquet(plan_path)
        step = functools.partial(balance_step, plan_path=str(plan_path), dataset=dataset, augment=augment)
        with atomic_dir(root / "balance" / dataset) as staging:
            shard_stats = map_shards(step, in_dir, staging, dataset)
    metrics = summarise(shard_stats, time.perf_counter() - t0, **stats)
    publish_metrics("balance", dataset, metrics, markdown="\n".join(report(dataset, stats)))
    changes = {s: f"{r['change_pct']:+.1f}%" for s, r in stats.get("sources", {}).items()}
    print(f"balance {dataset}: {metrics['rows_kept']} documents kept, {metrics.get('rows_out')} rows out, "
          f"tokens per source {changes}" + (f"; small sources {stats['small_sources']}"
                                            if stats.get("small_sources") else ""))
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(balance_stage, __doc__.splitlines()[0], argv, check=check)


if __name__ == "__main__":
    main()
