"""Stage `ingest` for one dataset: sources → normalised, hashed, split, validated shards.

    python -m flows.ingest corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, dataset_main, publish_metrics
from lmdata.atomic import atomic_dir
from lmdata.ingest import IngestConfig, ingest_source
from lmdata.runner import summarise


@task(name="ingest-source", cache_policy=NO_CACHE, retries=1)
def ingest_source_task(spec: dict, dataset: str, cfg: IngestConfig, out_dir: Path) -> dict:
    return ingest_source(spec, dataset, cfg, out_dir)


@flow(name="ingest", log_prints=True)
def ingest(dataset: str, params: dict) -> dict:
    """One task per source; shards land in `data/ingest/<dataset>/` atomically."""
    cfg = IngestConfig.from_params(params, dataset)  # every config error raises before any work
    t0 = time.perf_counter()
    with atomic_dir(data_root(params) / "ingest" / dataset) as staging:
        futures = [ingest_source_task.with_options(task_run_name=f"ingest-{s['source']}").submit(
            s, dataset, cfg, staging) for s in cfg.sources]
        stats = [f.result() for f in futures]
    splits: Counter[str] = Counter()
    kept_by_source: Counter[str] = Counter()
    for s in stats:
        splits.update(s["splits"])
        kept_by_source.update(s["kept_by_source"])
    metrics = summarise(stats, time.perf_counter() - t0, splits=dict(sorted(splits.items())),
                        kept_bytes=sum(s["kept_bytes"] for s in stats),
                        repaired_bytes=sum(s["repaired_bytes"] for s in stats),
                        kept_by_source=dict(sorted(kept_by_source.items())),
                        by_source={s["source"]: {k: s[k] for k in ("rows_in", "rows_kept", "rows_rejected")}
                                   for s in stats})
    metrics["shards"] = sum(s["shards"] for s in stats)
    publish_metrics("ingest", dataset, metrics)
    print(f"ingest {dataset}: {metrics['rows_kept']} kept, {metrics['rows_rejected']} rejected, "
          f"splits {metrics['splits']}, {metrics['shards']} shards")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(ingest, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
