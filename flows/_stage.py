"""The Prefect half of the stage runner: params, task runners, one task per shard, metrics and
artifacts. Logic lives in `lmdata` / `lmtrain`; this module only wires it into Prefect."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FailedRun
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from lmdata.atomic import atomic_dir, write_json
from lmdata.errors import ConfigError
from lmdata.runner import reason_table, run_step_on_shard, summarise
from lmdata.shards import list_shards

RUNNER_KINDS = ("threads", "processes", "dask", "ray")
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # storage each machine has its own of


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


def check_shared_root(root: Path, address: str) -> None:
    """With a Ray cluster, every task opens the data root on whatever machine runs it: the root must be
    a path every worker sees the same (a shared filesystem: NFS, Lustre, a mounted bucket). A relative
    path resolves against each worker's own directory, and /tmp is each machine's own."""
    where = f"runner.ray_address {address!r}: data.root {str(root)!r}"
    if not root.is_absolute():
        raise ConfigError(f"{where} is relative; Ray workers on other machines resolve it against their own "
                          "working directory. Set data.root to an absolute path on storage every worker mounts")
    resolved = str(root.resolve())
    for local in NODE_LOCAL:
        if resolved == local or resolved.startswith(local + "/"):
            raise ConfigError(f"{where} is under {local}, which each machine has its own of; put it on "
                              "storage every worker mounts")


def ray_runner(cfg: dict, root: Path):
    """prefect-ray: `runner.ray_address` (a cluster; the data root must be shared), or a local Ray of
    `runner.workers` CPUs bound to 127.0.0.1, without dashboard or usage statistics."""
    from prefect_ray import RayTaskRunner

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read by ray.init and inherited by its workers
    if cfg.get("ray_address"):
        check_shared_root(root, cfg["ray_address"])
        return RayTaskRunner(address=cfg["ray_address"])
    return RayTaskRunner(init_kwargs={"num_cpus": int(cfg.get("workers", 2)), "include_dashboard": False,
                                      "_node_ip_address": "127.0.0.1", "log_to_driver": False})


def task_runner(params: dict):
    """The task runner named by `runner.kind`: threads, processes, a Dask cluster
    (`runner.dask_address`, or a local cluster of `runner.workers` processes on loopback) or Ray
    (`ray_runner`)."""
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
    if kind == "ray":
        return ray_runner(cfg, data_root(params))
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


def metrics_path(stage: str, dataset: str | None, root: Path = Path("metrics")) -> Path:
    return root / stage / f"{dataset}.json" if dataset else root / f"{stage}.json"


def timings_path(stage: str, dataset: str | None) -> Path:
    """`metrics/timings/<stage>[/<dataset>].json`: wall times, kept out of DVC and git (they differ
    on every run, and a DVC-tracked file that changes marks the stage and the tree as changed)."""
    return metrics_path(stage, dataset, Path("metrics") / "timings")


def is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith(("_seconds", "_per_s")) or key in ("host", "hostname")


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """(metrics without timing or host fields, those fields), at any depth, nesting kept."""
    stable, timings = {}, {}
    for k, v in metrics.items():
        if is_timing(k):
            timings[k] = v
        elif isinstance(v, dict):
            stable[k], nested = split_timings(v)
            if nested:
                timings[k] = nested
        else:
            stable[k] = v
    return stable, timings


def publish_metrics(stage: str, dataset: str | None, metrics: dict, markdown: str | None = None) -> None:
    """Write `metrics/<stage>[/<dataset>].json` (same inputs, same bytes: timings go to
    `timings_path`) and the same counts, with the time taken, as Prefect artifacts."""
    stable, timings = split_timings(metrics)
    write_json(metrics_path(stage, dataset), stable)
    if timings:
        write_json(timings_path(stage, dataset), timings)
    name = f"{stage} / {dataset}" if dataset else stage
    key = (f"{stage}-{dataset}" if dataset else stage).replace("_", "-").lower()
    took = f", {metrics['seconds']:.1f} s" if isinstance(metrics.get("seconds"), int | float) else ""
    if "rows_in" in metrics:
        create_table_artifact(key=key, table=reason_table(metrics),
                              description=f"{name}: rows by outcome (in={metrics['rows_in']}, "
                                          f"kept={metrics['rows_kept']}, rejected={metrics['rows_rejected']}{took})")
    if markdown:
        create_markdown_artifact(key=f"{key}-report", markdown=markdown,
                                 description=f"{name}: report (metrics in {metrics_path(stage, dataset)}{took})")


def md_cell(value: Any, limit: int = 200) -> str:
    """Any value as the text of one markdown table cell: floats rounded, newlines shown as ⏎, pipes
    and backslashes escaped, HTML neutralised, cut to `limit` characters with an ellipsis."""
    text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    text = " ⏎ ".join(text.splitlines()) if len(text.splitlines()) > 1 else text.strip("\r\n")
    if len(text) > limit:
        text = text[:limit - 1].rstrip() + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def md_table(rows: list[dict], columns: list[str] | None = None, limit: int = 200) -> str:
    """A GitHub-flavoured markdown table whose cells survive any text (see `md_cell`); numbers align right."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    numeric = [bool(rows) and all(isinstance(r.get(c), int | float) for r in rows if r.get(c) is not None)
               for c in columns]
    lines = ["| " + " | ".join(md_cell(c, limit) for c in columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(md_cell(r.get(c), limit) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


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
    try:
        return stage_flow.with_options(task_runner=task_runner(params))(args.dataset, params)
    except FailedRun as e:  # a flow that returned a Failed state with its reason: one line
        raise SystemExit(str(e)) from None


def staged(out: Path):
    """Alias of `atomic_dir` for flows that write a whole output folder at once."""
    return atomic_dir(out)
