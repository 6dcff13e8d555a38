"""Stage `plant`: noise of known kinds on the clean base, labelled, for the noise study (docs/NOISE.md).

    python -m flows.plant [--params params.yaml]            the stage (off by default: writes an empty
                                                             label table and its metrics, starts no Prefect run)
    python -m flows.plant base [--from data/filter/corpus]   write the base id list (`plant.base`) from a
                                                             default run's filter output
    python -m flows.plant report [--root data] [--out reports/noise]
                                                             per-step recall / precision on the planted kinds

With `plant.enabled: true` it writes `data/plant/corpus` (the base + planted rows; other training rows
rejected as `not_in_base`), `data/plant/instructions` and `data/plant/comparisons` (ingest's shards,
unchanged) and `data/plant/labels.parquet`; `clean.input: plant` then routes the pipeline through it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, load_params, metrics_path, publish_metrics, split_timings, timings_path
from lmdata.atomic import atomic_dir, write_json
from lmdata.errors import ConfigError
from lmdata.plant import LABELS_FILE, PlantConfig, base_ids_from, plant_corpus, write_labels
from lmdata.plant_recall import markdown, plant_report
from lmdata.runner import summarise
from lmdata.shards import list_shards

PASSED_THROUGH = ("instructions", "comparisons")


@task(name="plant-corpus", cache_policy=NO_CACHE)
def plant_task(in_dir: Path, out_dir: Path, cfg: PlantConfig, max_bytes: int) -> dict:
    return plant_corpus(in_dir, out_dir, cfg, max_bytes)


def report_markdown(m: dict) -> str:
    lines = ["# plant / corpus", "", f"training rows in {m['rows_in']}: base {m['rows_kept']} "
             f"({m['base_bytes']} bytes), not in the base {m['rows_rejected']}; planted {m['rows_added']} "
             f"({m['planted_bytes']} bytes)", "", "| kind | planted |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in m["planted_by_kind"].items()]
    lines += ["", "| near-copy Jaccard bin | planted |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in m["near_copy_bins"].items()]
    return "\n".join(lines)


@flow(name="plant", log_prints=True)
def plant(params: dict) -> dict:
    """Plant noise on the base, pass the other datasets through, write labels; one task."""
    cfg = PlantConfig.from_dict(params.get("plant"))
    root = data_root(params)
    max_bytes = int(float(params.get("data", {}).get("shard_max_mb", 64)) * 1e6)
    t0 = time.perf_counter()
    with atomic_dir(root / "plant") as staging:
        stats = plant_task(root / "ingest" / "corpus", staging / "corpus", cfg, max_bytes)
        for dataset in PASSED_THROUGH:
            shutil.copytree(root / "ingest" / dataset, staging / dataset)
    metrics = summarise([stats], time.perf_counter() - t0, enabled=True,
                        **{k: stats[k] for k in ("eval_rows_skipped", "base_ids", "planted_by_kind",
                                                 "near_copy_bins", "planted_bytes", "base_bytes")})
    publish_metrics("plant", None, metrics, markdown=report_markdown(metrics))
    print(f"plant: base {metrics['rows_kept']}, planted {metrics['rows_added']} {metrics['planted_by_kind']}")
    return metrics


def write_disabled(params: dict) -> dict:
    """plant.enabled false: an empty label table and the metrics, nothing else (no Prefect run)."""
    with atomic_dir(data_root(params) / "plant") as staging:
        write_labels([], staging / LABELS_FILE)
    metrics = {"enabled": False, "rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "rejected_by_reason": {}}
    stable, timings = split_timings({**metrics, "seconds": 0.0})
    write_json(metrics_path("plant", None), stable)
    write_json(timings_path("plant", None), timings)
    return metrics


def write_base(source: Path, out: Path) -> int:
    ids = base_ids_from(source)
    if not ids:
        raise ConfigError(f"{source}: no training rows to take as the plant base (run the default pipeline first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# plant base: the training ids kept by {source} ({len(ids)})\n" + "\n".join(ids) + "\n")
    return len(ids)


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="stage", choices=["stage", "base", "report"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--from", dest="source", default=None, help="base: the stage output whose kept ids are the base")
    ap.add_argument("--root", default=None, help="report: the data root holding plant/, clean/, dedup/, filter/")
    ap.add_argument("--out", default=None, help="base: the id list (default plant.base); report: a folder")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    try:
        cfg = PlantConfig.from_dict(params.get("plant"))
        if args.command == "base":
            source = Path(args.source) if args.source else data_root(params) / "filter" / "corpus"
            list_shards(source)
            n = write_base(source, Path(args.out or cfg.base))
            print(f"plant base: {n} ids from {source} -> {args.out or cfg.base}")
            return None
        if args.command == "report":
            result = plant_report(Path(args.root) if args.root else data_root(params),
                                  Path(args.out or "reports/noise"))
            print(markdown(result))
            return result
        if not cfg.enabled:
            return write_disabled(params)
        if not Path(cfg.base).exists():
            raise ConfigError(f"plant.base: no id list at {cfg.base} (write one with `python -m flows.plant base`)")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"plant {args.command}: {e}") from None
    return plant(params)


if __name__ == "__main__":
    main()
