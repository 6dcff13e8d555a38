"""The data stages on a user's own corpus: a mixed JSONL (wiki markup, HTML, short and multilingual
texts, planted duplicates; bench/corpora_lib/corpus.py) through ingest → clean → evalset → dedup → filter →
balance (each stage run if its flow module exists), then per source kept fractions and reasons and
the issue-12 targets, scored from labels the pipeline never reads.

    python bench/corpora.py [--quick] [--seed 0] [--profile profiles/short_text.yaml]
                            [--set filter.quality.enabled=false ...] [--compare earlier.json] [--keep]

Writes bench/results/corpora.json (rows: measure / ours / baseline = the target / ratio = ours ÷
target, > 1 is better) with the per-source table and the failing documents' ids. The scratch
workspace (corpus, params, data, metrics) is a temporary folder under /tmp, removed unless --keep.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# CORPORA_CODE=DIR runs another checkout's lmdata/flows/params.yaml (e.g. `git archive` of the commit
# before issue 12, for the "before" figures); the corpus generator and the scoring stay these.
CODE = Path(os.environ.get("CORPORA_CODE", ROOT)).resolve()
for _p in (ROOT / "bench", CODE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from corpora_lib.corpus import build_corpus, write_jsonl  # noqa: E402
from corpora_lib.report import Outcomes, build_report, print_report  # noqa: E402

STAGES = ["ingest", "clean", "evalset", "dedup", "filter", "balance"]
RECORD_FIELDS = {"text": "text", "source": "source", "title": "title", "url": "url"}  # identity: either direction


def raw_sample() -> Path:
    """The fetched sample (tests' cache, or the pipeline's data/raw), fetched once if neither exists."""
    for cand in (ROOT / ".cache" / "tests" / "raw", ROOT / "data" / "raw"):
        if (cand / "MANIFEST.json").exists():
            return cand
    from lmdata.fetch import fetch_all

    out = ROOT / ".cache" / "tests" / "raw"
    fetch_all(out, download_cache=ROOT / ".cache" / "tests" / "downloads")
    return out


def set_key(params: dict, dotted: str, value) -> None:
    node = params
    *path, last = dotted.split(".")
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value


def sample_paths(node, raw: Path):
    """Point every `data/raw/...` path in params at the fetched sample `raw`."""
    if isinstance(node, dict):
        return {k: sample_paths(v, raw) for k, v in node.items()}
    if isinstance(node, list):
        return [sample_paths(v, raw) for v in node]
    if isinstance(node, str) and node.startswith("data/raw/"):
        return str(raw / node.removeprefix("data/raw/"))
    return node


def merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def scratch_params(work: Path, corpus: Path, raw: Path, overrides: list[str], profile: str | None = None) -> dict:
    """The project's params.yaml (a profile merged over it) with the one JSONL source, data and
    models inside `work`."""
    params = yaml.safe_load((CODE / "params.yaml").read_text())
    if profile:
        params = merge(params, yaml.safe_load(Path(profile).read_text()) or {})
    params["data"]["root"] = str(work / "data")
    params["runner"] = {"kind": "threads", "workers": 1}
    params["ingest"]["corpus"] = {"sources": [
        {"type": "jsonl", "source": "mixed", "path": str(corpus), "fields": dict(RECORD_FIELDS)}]}
    params["filter"]["model_dir"] = str(work / "models" / "quality")
    params = sample_paths(params, raw)  # every `data/raw/...` setting (lid.176 for filter and evalset)
    params["filter"]["quality"]["positive_source"] = "wiki"
    for item in overrides:
        key, _, value = item.partition("=")
        set_key(params, key, yaml.safe_load(value))
    return params


def stage_flow(name: str):
    """The Prefect flow defined in flows/<name>.py, or None while that module does not exist."""
    from prefect import Flow

    import flows

    if not (Path(flows.__file__).parent / f"{name}.py").exists():  # by file: the editable install's finder
        return None                                                   # would find the main tree's module

    mod = importlib.import_module(f"flows.{name}")
    flows = [v for v in vars(mod).values() if isinstance(v, Flow) and v.fn.__module__ == mod.__name__]
    flows.sort(key=lambda f: (f.name != name, f.name))
    return flows[0] if flows else None


def train_sources(folder: Path) -> set[str]:
    import polars as pl

    shards = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return {s for p in shards for s in pl.read_parquet(p, columns=["source", "split"])
            .filter(pl.col("split") == "train")["source"].unique().to_list()}


def run_stages(params: dict, work: Path, outcomes: Outcomes) -> list[dict]:
    """Run each existing stage's flow in order in this process; stop at the first failure."""
    from flows._stage import task_runner

    log = []
    data = Path(params["data"]["root"])
    last_dir = None
    for name in STAGES:
        flow = stage_flow(name)
        if flow is None:
            log.append({"stage": name, "status": "absent"})
            print(f"  {name:8s} absent (no flows/{name}.py)")
            continue
        note = None
        quality = params["filter"]["quality"]
        if name == "filter" and quality.get("enabled", True) and last_dir is not None:
            sources = train_sources(last_dir)
            if quality.get("positive_source") not in sources:
                note = (f"filter.quality off: positive_source {quality.get('positive_source')!r} not among the "
                        f"training sources {sorted(sources)} (record `source` not kept)")
                params = {**params, "filter": {**params["filter"], "quality": {**quality, "enabled": False}}}
        t0 = time.perf_counter()
        try:
            metrics = flow.with_options(task_runner=task_runner(params))("corpus", params)
        except Exception as e:  # noqa: BLE001 - a failing stage is a finding to report, not a crash
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            log.append({"stage": name, "status": "failed", "error": msg, "seconds": time.perf_counter() - t0})
            print(f"  {name:8s} FAILED {msg}")
            break
        seconds = time.perf_counter() - t0
        out = data / name / "corpus"
        outcomes.read_stage(name, out)
        last_dir = out
        entry = {"stage": name, "status": "ok", "seconds": round(seconds, 1),
                 "rows_in": metrics.get("rows_in") if isinstance(metrics, dict) else None,
                 "rows_kept": metrics.get("rows_kept") if isinstance(metrics, dict) else None,
                 "rejected_by_reason": metrics.get("rejected_by_reason") if isinstance(metrics, dict) else None}
        if note:
            entry["note"] = note
        log.append(entry)
        print(f"  {name:8s} {seconds:6.1f} s  kept {entry['rows_kept']} of {entry['rows_in']}"
              f"{'  (' + note + ')' if note else ''}")
    return log


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller corpus (about a quarter)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params.yaml setting for the run (YAML value)")
    ap.add_argument("--profile", metavar="YAML", help="a params profile merged over params.yaml "
                    "(e.g. profiles/short_text.yaml)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpora.json"))
    ap.add_argument("--compare", metavar="JSON", help="an earlier result (e.g. the code before issue 12) to show "
                    "beside this one; its figures are kept under `compared`")
    args = ap.parse_args(argv)

    raw = raw_sample()
    work = Path(tempfile.mkdtemp(prefix="lmforge-corpora-"))
    os.environ["PREFECT_HOME"] = str(work / ".prefect")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)
    from prefect.testing.utilities import prefect_test_harness

    import flows  # noqa: F401  (offline, quiet defaults before Prefect is imported)

    t0 = time.perf_counter()
    records = build_corpus(raw, seed=args.seed, quick=args.quick)
    corpus = write_jsonl(records, work / "corpus" / "mixed.jsonl")
    print(f"corpus: {len(records)} records, {corpus.stat().st_size / 1e6:.2f} MB at {corpus} "
          f"({time.perf_counter() - t0:.1f} s)")
    params = scratch_params(work, corpus, raw, args.set, args.profile)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outcomes = Outcomes(records, corpus.name)
    cwd = os.getcwd()
    os.chdir(work)  # flows write metrics/ and models/ relative to the working directory
    try:
        with prefect_test_harness(server_startup_timeout=180):
            log = run_stages(params, work, outcomes)
            logging.disable(logging.ERROR)  # the test server's event flushes are cancelled at shutdown
        logging.disable(logging.NOTSET)
        report = build_report(outcomes, params, log)
    finally:
        os.chdir(cwd)
    report.update({"code": str(CODE), "quick": args.quick, "seed": args.seed, "profile": args.profile,
                   "overrides": args.set, "records": len(records),
                   "corpus_mb": round(corpus.stat().st_size / 1e6, 3), "seconds": round(time.perf_counter() - t0, 1)})
    if args.compare:
        earlier = json.loads(Path(args.compare).read_text())
        report["compared"] = {"file": args.compare, "code": earlier.get("code"),
                              "rows": {r["measure"]: r["ours"] for r in earlier["rows"]},
                              "stages": [f"{e['stage']} {e['status']}" for e in earlier["stages"]]}
    print_report(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    if args.keep:
        print(f"scratch workspace kept at {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
