"""Stage `balance` for one dataset: mixture weights across sources (temperature or explicit),
whole-epoch up-sampling with a cap (a `repeats` column), deterministic down-sampling
(`downsampled`), and the optional augmentation. The evaluation split passes through untouched.

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
from lmdata.balance import BalanceConfig, apply_plan, balance_index, plan_repeats, validate_weights
from lmdata.runner import summarise
from lmdata.shards import list_shards
from lmdata.stage import StepResult


@task(name="balance-index", cache_policy=NO_CACHE)
def index_task(shard: Path, cfg: BalanceConfig) -> pl.DataFrame:
    return balance_index(pl.read_parquet(shard), cfg)


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


@flow(name="balance", log_prints=True)
def balance_stage(dataset: str, params: dict) -> dict:
    cfg = BalanceConfig.from_dict(params.get("balance", {}).get(dataset, params.get("balance", {}).get("default")))
    augment = AugmentConfig.from_dict(params.get("augment"))
    root = data_root(params)
    in_dir = root / "filter" / dataset
    shards = list_shards(in_dir)
    t0 = time.perf_counter()
    index = pl.concat([f.result() for f in [index_task.submit(s, cfg) for s in shards]])
    validate_weights(cfg, sorted(index.filter(pl.col("split") == "train")["source"].unique().to_list()))
    if cfg.enabled:
        plan, stats = plan_repeats(index, cfg)
    else:
        plan, stats = index.select("id", pl.lit(1, dtype=pl.Int64).alias("repeats")), {}
    with tempfile.TemporaryDirectory(prefix=".balance-", dir=root) as tmp:
        plan_path = Path(tmp) / "plan.parquet"
        plan.write_parquet(plan_path)
        step = functools.partial(balance_step, plan_path=str(plan_path), dataset=dataset, augment=augment)
        with atomic_dir(root / "balance" / dataset) as staging:
            shard_stats = map_shards(step, in_dir, staging, dataset)
    metrics = summarise(shard_stats, time.perf_counter() - t0, **stats)
    md = [f"# balance / {dataset}", "", "| source | tokens before | tokens after | target weight | realised |",
          "|---|---:|---:|---:|---:|"]
    for s in stats.get("tokens_before", {}):
        md.append(f"| {s} | {stats['tokens_before'][s]:,.0f} | {stats['tokens_after'].get(s, 0):,.0f} | "
                  f"{stats['target_weights'].get(s, 0):.3f} | {stats['realised_weights'].get(s, 0):.3f} |")
    publish_metrics("balance", dataset, metrics, markdown="\n".join(md))
    print(f"balance {dataset}: {metrics['rows_kept']} documents kept, {metrics.get('rows_out')} rows out, "
          f"realised weights {stats.get('realised_weights')}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(balance_stage, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
