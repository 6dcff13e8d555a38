"""Stage `clean` for one dataset: ingest's training rows → markup rendered to text, mojibake
repaired, redirect and disambiguation pages rejected (the held-out rows go to `evalset`).

    python -m flows.clean corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import time
from collections import Counter

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, dataset_main, publish_metrics
from lmdata.atomic import atomic_dir
from lmdata.clean import CleanConfig, clean_shard
from lmdata.errors import ConfigError
from lmdata.runner import summarise
from lmdata.shards import list_shards

CLEAN_INPUTS = ("ingest", "plant")


@task(name="clean-shard", cache_policy=NO_CACHE, retries=1)
def clean_shard_task(in_path, out_dir, dataset: str, cfg: CleanConfig) -> dict:
    return clean_shard(in_path, out_dir, dataset, cfg)


def report_markdown(dataset: str, m: dict) -> str:
    lines = [f"# clean / {dataset}", "", f"training rows in {m['rows_in']}, kept {m['rows_kept']}, rejected "
             f"{m['rows_rejected']} {m['rejected_by_reason']}; {m['eval_rows_skipped']} held-out rows left to "
             f"the evaluation set", "", f"bytes {m['bytes_in']} → {m['bytes_out']}", "",
             "| step | documents changed | bytes removed |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['docs_changed']} | {v['bytes_removed']} |" for k, v in m["steps"].items()]
    lines += ["", "| source | rows in | rows kept |", "|---|---:|---:|"]
    lines += [f"| {s} | {v['rows_in']} | {v['rows_kept']} |" for s, v in m["by_source"].items()]
    return "\n".join(lines)


@flow(name="clean", log_prints=True)
def clean(dataset: str, params: dict) -> dict:
    """One task per ingest shard; shards land in `data/clean/<dataset>/` atomically."""
    section = dict(params.get("clean") or {})
    source = section.pop("input", "ingest")  # the stage clean reads: ingest, or plant (the noise study)
    if source not in CLEAN_INPUTS:
        raise ConfigError(f"params: clean.input must be one of {CLEAN_INPUTS}, got {source!r}")
    cfg = CleanConfig.from_dict(section)  # config errors raise before any work
    in_dir = data_root(params) / source / dataset
    shards = list_shards(in_dir)
    t0 = time.perf_counter()
    with atomic_dir(data_root(params) / "clean" / dataset) as staging:
        futures = [clean_shard_task.with_options(task_run_name=f"clean-{p.stem}").submit(p, staging, dataset, cfg)
                   for p in shards]
        stats = [f.result() for f in futures]
    steps: dict[str, Counter] = {}
    by_source: dict[str, Counter] = {}
    for s in stats:
        for name, st in s["steps"].items():
            steps.setdefault(name, Counter()).update(st)
        for name, st in s["by_source"].items():
            by_source.setdefault(name, Counter()).update(st)
    metrics = summarise(stats, time.perf_counter() - t0,
                        eval_rows_skipped=sum(s["eval_rows_skipped"] for s in stats),
                        bytes_in=sum(s["bytes_in"] for s in stats), bytes_out=sum(s["bytes_out"] for s in stats),
                        steps={k: dict(v) for k, v in steps.items()},
                        by_source={k: dict(v) for k, v in sorted(by_source.items())})
    publish_metrics("clean", dataset, metrics, markdown=report_markdown(dataset, metrics))
    print(f"clean {dataset}: {metrics['rows_kept']} kept, rejected {metrics['rejected_by_reason']}, "
          f"steps {metrics['steps']}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(clean, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
