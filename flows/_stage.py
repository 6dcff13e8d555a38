"""The Prefect half of the stage runner: params, task runners, one task per shard, metrics and
artifacts. Logic lives in `lmdata` / `lmtrain`; this module only wires it into Prefect."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from lmdata.atomic import atomic_dir, write_json
from lmdata.errors import ConfigError
from lmdata.runner import reason_table, run_step_on_shard, summarise
from lmdata.shards import list_shards

RUNNER_KINDS = ("threads", "processes", "dask")


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def data_root(params: dict) -> Path:
    return Path(params.get("data", {}).get("root", "data"))


def task_runner(params: dict):
    """The task runner named by `runner.kind`: threads, processes, or a Dask cluster
    (`runner.dask_address`, or a local cluster of `runner.workers` processes on loopback)."""
    cfg = params.get("runner", {}) or {}
    kind, workers = cfg.get("kind", "threads"), int(cfg.get("workers", 2))
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.get("dask_address"):
            return DaskTaskRunner(address=cfg["dask_address"])
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "host": "127.0.0.1", "dashboard_address": None})
    raise ConfigError(f"runner.kind must be one of {RUNNER_KINDS}, got {kind!r}")


@task(name="shard", cache_policy=NO_CACHE, retries=1)
def shard_task(step: Callable, in_path: Path, out_dir: Path, dataset: str, reject_suffix: str = "") -> dict:
    """Apply a step to one shard (paths in, small stats out)."""
    return run_step_on_shard(step, in_path, out_dir, dataset, reject_suffix)


def map_shards(step: Callable, in_dir: Path, out_dir: Path, dataset: str, reject_suffix: str = "") -> list[dict]:
    """Submit one task per input shard; all write into `out_dir` (a staging folder)."""
    shards = list_shards(in_dir)
    if not shards:
        raise FileNotFoundError(f"no input shards in {in_dir}: run the previous stage first")
    futures = [shard_task.with_options(task_run_name=f"shard-{p.stem}").submit(step, p, out_dir, dataset,
                                                                            reject_suffix) for p in shards]
    return [f.result() for f in futures]


def run_shard_stage(stage: str, dataset: str, params: dict, step: Callable, in_dir: Path,
                    **extra: Any) -> dict:
    """The whole per-shard stage: map `step` over `in_dir`'s shards into `data/<stage>/<dataset>`
    atomically, then write metrics and publish the artifact."""
    t0 = time.perf_counter()
    out = data_root(params) / stage / dataset
    with atomic_dir(out) as staging:
        stats = map_shards(step, in_dir, staging, dataset)
    metrics = summarise(stats, time.perf_counter() - t0, **extra)
    publish_metrics(stage, dataset, metrics)
    return metrics


def metrics_path(stage: str, dataset: str | None) -> Path:
    return Path("metrics") / stage / f"{dataset}.json" if dataset else Path("metrics") / f"{stage}.json"


def publish_metrics(stage: str, dataset: str | None, metrics: dict, markdown: str | None = None) -> None:
    """Write `metrics/<stage>[/<dataset>].json` and the same counts as a Prefect table artifact."""
    write_json(metrics_path(stage, dataset), metrics)
    key = f"{stage}-{dataset}" if dataset else stage
    key = key.replace("_", "-").lower()
    if "rows_in" in metrics:
        create_table_artifact(key=key, table=reason_table(metrics),
                              description=f"{stage} / {dataset}: rows by outcome "
                                          f"(in={metrics['rows_in']}, kept={metrics['rows_kept']}, "
                                          f"rejected={metrics['rows_rejected']})")
    if markdown:
        create_markdown_artifact(key=f"{key}-report", markdown=markdown)


def dataset_main(stage_flow, description: str, argv: list[str] | None = None,
                 check: Callable[[str, dict], Any] | None = None) -> dict:
    """Command line of a per-dataset stage: `python -m flows.<stage> DATASET [--params FILE]`,
    run with the task runner `runner` in params names. `check(dataset, params)` runs first, outside
    Prefect: a ConfigError it raises exits with one line on stderr (no traceback, nothing written)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("dataset", choices=["corpus", "instructions", "comparisons"])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if check is not None:
        try:
            check(args.dataset, params)
        except ConfigError as e:
            raise SystemExit(f"{stage_flow.name} {args.dataset}: {e}") from None
    return stage_flow.with_options(task_runner=task_runner(params))(args.dataset, params)


def staged(out: Path):
    """Alias of `atomic_dir` for flows that write a whole output folder at once."""
    return atomic_dir(out)
