"""The data stages at scale: ingest → evalset → clean → dedup → filter on a generated corpus (the sample's
pieces with words replaced, ~20% planted exact and near copies; bench/scale_lib/corpus.py) at 0.1 and
1 GB, on the local process-pool runner with 1 and 2 workers and on a local Ray (inside a loopback-only
network namespace), plus datatrove's MinHash signature stage and ours on the same documents.

    python bench/scale.py [--quick] [--sizes 0.1,1] [--runs processes:1,processes:2,ray:2]
                          [--corpus-dir /work/scratch/scale] [--datatrove-mb 16]

Per stage: documents/s and MB/s per core (CPU seconds of the driver and every worker, orchestration
processes apart: the box is shared, wall time is inflated by others), peak working memory of the
driver and of each worker process, and the growth of each from the smallest to the largest size.
Writes bench/results/scale.json: rows (ratio > 1 = better) plus every run's per-stage figures.
The corpus (never committed) lives under --corpus-dir, default a folder under /tmp.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scale_lib.corpus import ensure_corpus  # noqa: E402

TARGET_MB_PER_CORE = 2.0  # issue 17: end to end, ingest → dedup → filter on the 1 GB corpus
DATATROVE_PUBLISHED = 0.9  # MB/s per core, MinHash signatures on FineWeb


def raw_sample() -> Path:
    for cand in (ROOT / "data" / "raw", ROOT / ".cache" / "tests" / "raw", Path("/work/main/data/raw")):
        if (cand / "shakespeare").is_dir():
            return cand
    sys.exit("no sample data: run `dvc repro fetch` first")


def sample_paths(node, raw: Path):
    if isinstance(node, dict):
        return {k: sample_paths(v, raw) for k, v in node.items()}
    if isinstance(node, list):
        return [sample_paths(v, raw) for v in node]
    if isinstance(node, str) and node.startswith("data/raw/"):
        return str(raw / node.removeprefix("data/raw/"))
    return node


def scale_params(work: Path, corpus: Path, raw: Path, kind: str, workers: int, max_train_docs: int,
                 shard_mb: float) -> dict:
    """params.yaml with one JSONL source per corpus file, data and models inside `work`, shards of
    `shard_mb` (the default profile's 1 MB makes ~1,000 tasks per stage at 1 GB)."""
    params = sample_paths(yaml.safe_load((ROOT / "params.yaml").read_text()), raw)
    params["data"]["root"] = str(work / "data")
    params["data"]["shard_max_mb"] = shard_mb
    params["runner"] = {"kind": kind, "workers": workers}
    params["ingest"]["corpus"] = {"sources": [
        {"type": "jsonl", "source": f"part{i:03d}", "path": str(p), "fields": {"source": "source"}}
        for i, p in enumerate(sorted(corpus.glob("shard-*.jsonl")))]}
    params["filter"]["model_dir"] = str(work / "models" / "quality")
    params["filter"]["quality"].update(positive_source="curated", max_train_docs=max_train_docs)
    return params


def run_pipeline(params: dict, work: Path, kind: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(work / ".prefect"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "bench.scale_lib.run", str(work / "params.yaml"), str(work / "run.json")]
    if kind in ("ray", "dask"):  # never outside a loopback-only network namespace (see tests/offline_runners.py)
        script = ("ip link set lo up && python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(3); "
                  "sys.exit(0 if s.connect_ex((\"1.1.1.1\", 53)) == 0 else 1)' && exit 3; exec " + " ".join(cmd))
        cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", script]
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode:
        raise RuntimeError(f"{kind} run failed (exit {proc.returncode}); see {work}")
    return json.loads((work / "run.json").read_text())


SIGNATURES = r"""
import json, sys, time, resource
import polars as pl
mode, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
texts = [json.loads(line)["text"] for line in open(src, encoding="utf-8")]
mb = sum(len(t.encode()) for t in texts) / 1e6
if mode == "ours":
    from lmdata.dedup import DedupConfig, sign_shard
    import yaml
    cfg = DedupConfig.from_dict(yaml.safe_load(open("params.yaml"))["dedup"])
    df = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "split": ["train"] * len(texts), "text": texts})
    c0 = time.process_time()
    sign_shard(df, ["text"], cfg, __import__("pathlib").Path(out) / "s", "s")
else:
    import xxhash
    import datatrove.utils.hashes.xxhash as dt_xx  # datatrove 0.10 hands str to xxhash, which now wants bytes
    dt_xx.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig
    step = MinhashDedupSignature(output_folder=out, config=MinhashConfig(
        hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5))
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    c0 = time.process_time()
    step.run(iter(docs), rank=0, world_size=1)
cpu = time.process_time() - c0
print(json.dumps({"docs": len(texts), "mb": mb, "cpu_s": cpu}))
"""


def signature_speeds(corpus: Path, mb: float, work: Path) -> dict:
    """MB/s per core of datatrove's MinhashDedupSignature and our sign_shard on the first `mb` MB of texts."""
    subset = work / "subset.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    with open(subset, "wb") as out, open(sorted(corpus.glob("shard-*.jsonl"))[0], "rb") as src:
        for line in src:
            out.write(line)
            if out.tell() >= mb * 1e6:
                break
    res = {}
    for mode in ("ours", "datatrove"):
        out = work / f"sig-{mode}"
        out.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, "-c", SIGNATURES, mode, str(subset), str(out)], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  signatures {mode:9s} {res[mode]['mb'] / res[mode]['cpu_s']:6.2f} MB/s per core "
              f"({res[mode]['docs']} docs, {res[mode]['mb']:.1f} MB)", flush=True)
    return res


def code_commit() -> str:
    """The commit measured, with `+dirty` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head.strip() + ("+dirty" if dirty else "")


def stage_figures(run: dict) -> list[dict]:
    """Per stage: documents and MB per CPU-second (input text; ingest: the JSONL), peak RSS and working
    memory (peak minus a fresh interpreter's after imports) of the largest worker process, and the
    working memory of the flow process (the driver: tasks a flow calls inline run there)."""
    out = []
    base = run.get("import_rss_mb")
    for st in run["stages"]:
        mb = run["corpus_mb"] if st["stage"] == "ingest" else (st["bytes_in"] or 0) / 1e6
        docs = st["rows_in"] if st["stage"] == "ingest" else st["docs_in"]
        cpu = max(st["cpu_s"], 1e-9)
        out.append({"stage": st["stage"], "mb": mb, "docs": docs, "cpu_s": cpu, "wall_s": st["wall_s"],
                    "mb_per_cpu_s": mb / cpu, "docs_per_cpu_s": (docs or 0) / cpu,
                    "orchestration_cpu_s": st["orchestration_cpu_s"],
                    "largest_worker_rss_mb": max(st["worker_peak_rss_mb"] or [0.0]),
                    "largest_worker_work_mb": None if base is None else max(st["worker_peak_rss_mb"] or [0.0]) - base,
                    "driver_work_mb": st["driver_work_mb"]})
    return out


def summarise(runs: list[dict], rows: list[dict]) -> list[dict]:
    """Rows of bench/results/scale.json: end to end and per stage throughput per core for every run,
    and how the largest worker's peak memory grows from the smallest to the largest corpus."""
    rows = [r for r in rows if r["measure"] == "minhash_signatures_mb_per_cpu_s"]
    aim = "issue 17 aim: 2 MB/s per core end to end"
    for run in [r for r in runs if "library" in r][-1:]:  # the latest measurement
        lib = run["library"]
        steps = [k.removesuffix("_mb_per_cpu_s") for k in lib if k.endswith("_mb_per_cpu_s")]
        for step in steps:
            rows.append({"measure": f"library_{step}_mb_per_cpu_s", "ours": lib[f"{step}_mb_per_cpu_s"],
                         "baseline": aim, "baseline_value": TARGET_MB_PER_CORE, "unit": "MB/CPU-s (no Prefect)",
                         "ratio": lib[f"{step}_mb_per_cpu_s"] / TARGET_MB_PER_CORE})
        total = sum(lib[f"{s}_s"] for s in steps)
        rows.append({"measure": "library_clean_to_filter_mb_per_cpu_s", "ours": lib["mb"] / total, "baseline": aim,
                     "baseline_value": TARGET_MB_PER_CORE, "unit": "MB/CPU-s (no Prefect)",
                     "ratio": lib["mb"] / total / TARGET_MB_PER_CORE})
    for run in runs:
        figs = stage_figures(run)
        total = sum(f["cpu_s"] for f in figs)
        rows.append({"measure": f"end_to_end_mb_per_cpu_s_{run['label']}", "ours": run["corpus_mb"] / total,
                     "baseline": aim, "baseline_value": TARGET_MB_PER_CORE, "unit": "MB/CPU-s",
                     "ratio": run["corpus_mb"] / total / TARGET_MB_PER_CORE})
        for f in figs:
            rows.append({"measure": f"{f['stage']}_mb_per_cpu_s_{run['label']}", "ours": f["mb_per_cpu_s"],
                         "baseline": aim, "baseline_value": TARGET_MB_PER_CORE, "unit": "MB/CPU-s",
                         "ratio": f["mb_per_cpu_s"] / TARGET_MB_PER_CORE})
    by_kind: dict[str, list[dict]] = {}
    for run in runs:
        by_kind.setdefault(run["label"].split("_", 1)[1], []).append(run)
    for kind, group in by_kind.items():
        group = sorted(group, key=lambda r: r["gb"])
        if len(group) < 2:
            continue
        small, large = group[0], group[-1]
        scale = large["corpus_mb"] / small["corpus_mb"]
        fs = {f["stage"]: f for f in stage_figures(small)}
        for f in stage_figures(large):
            if f["stage"] not in fs:
                continue
            growth = f["largest_worker_rss_mb"] / max(fs[f["stage"]]["largest_worker_rss_mb"], 1e-9)
            sizes = f"{small['gb']:g}_to_{large['gb']:g}gb_{kind}"
            rows.append({"measure": f"{f['stage']}_worker_peak_rss_growth_{sizes}",
                         "ours": growth, "baseline": f"linear in corpus size (x{scale:.1f})", "baseline_value": scale,
                         "unit": "peak RSS ratio, largest worker", "ratio": scale / growth})
            for who, key in (("worker", "largest_worker_work_mb"), ("flow_process", "driver_work_mb")):
                w_small, w_large = fs[f["stage"]][key], f[key]
                if w_small is None or w_large is None:
                    continue
                w_small, w_large = max(w_small, 1.0), max(w_large, 1.0)  # below 1 MB: sampling noise
                rows.append({"measure": f"{f['stage']}_{who}_work_growth_{sizes}", "ours": w_large / w_small,
                             "baseline": f"linear in corpus size (x{scale:.1f})", "baseline_value": scale,
                             "unit": f"working memory ratio, {who.replace('_', ' ')} ({w_small:.0f} -> {w_large:.0f} MB)",
                             "ratio": scale * w_small / w_large})
    return rows


def print_table(runs: list[dict]) -> None:
    for run in runs:
        print(f"{run['label']}: {run['corpus_mb']:.0f} MB")
        for f in stage_figures(run):
            work = "" if f["largest_worker_work_mb"] is None else f" (work {f['largest_worker_work_mb']:5.0f})"
            print(f"  {f['stage']:8s} {f['mb_per_cpu_s']:7.2f} MB/CPU-s {f['docs_per_cpu_s']:8.0f} docs/CPU-s  "
                  f"cpu {f['cpu_s']:7.1f} s  wall {f['wall_s']:7.1f} s  largest worker {f['largest_worker_rss_mb']:6.0f} MB"
                  f"{work}  driver work {f['driver_work_mb']:5.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 10 MB corpus, one thread, 2 MB of signatures")
    ap.add_argument("--sizes", default="0.1,1", help="corpus sizes in GB")
    ap.add_argument("--runs", default="processes:1,processes:2,ray:2", help="kind:workers at the smallest size")
    ap.add_argument("--large-runs", default="processes:2", help="kind:workers at the other sizes")
    ap.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmforge-scale")
    ap.add_argument("--datatrove-mb", type=float, default=16.0, help="0: no signature comparison")
    ap.add_argument("--max-train-docs", type=int, default=20000, help="filter.quality.max_train_docs")
    ap.add_argument("--shard-mb", type=float, default=64.0, help="data.shard_max_mb (DESIGN: tens of MB)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/scale.json (--quick: scale-quick.json, so the measured figures stay)")
    ap.add_argument("--append", action="store_true", help="add this invocation's runs to --out's")
    ap.add_argument("--report-only", action="store_true", help="recompute --out's rows from its runs")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.runs, args.large_runs, args.datatrove_mb = "0.01", "threads:1", "", 2.0
    args.out = args.out or ROOT / "bench" / "results" / ("scale-quick.json" if args.quick else "scale.json")
    if args.datatrove_mb > 0 and importlib.util.find_spec("datatrove") is None:
        print("datatrove is not installed (pip install -e '.[bench]'): no signature comparison")
        args.datatrove_mb = 0
    if args.report_only:
        res = json.loads(args.out.read_text())
        res["rows"] = summarise(res["runs"], res["rows"])
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        print_table(res["runs"])
        return
    sizes = [float(s) for s in args.sizes.split(",")]
    raw = raw_sample()
    runs, rows = [], []
    if args.append and args.out.exists():
        earlier = json.loads(args.out.read_text())
        runs, rows = earlier["runs"], earlier["rows"]
    library_done = False
    for n, gb in enumerate(sizes):
        corpus = args.corpus_dir / f"corpus-{gb:g}gb"
        t0 = time.perf_counter()
        planted = ensure_corpus(raw, corpus, gb * 1000)
        corpus_mb = planted["bytes"] / 1e6
        print(f"corpus {gb:g} GB: {planted} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if n == 0 and args.datatrove_mb > 0:
            sig = signature_speeds(corpus, args.datatrove_mb, args.corpus_dir / "signatures")
            o, d = (sig[m]["mb"] / sig[m]["cpu_s"] for m in ("ours", "datatrove"))
            rows = [r for r in rows if r["measure"] != "minhash_signatures_mb_per_cpu_s"]
            rows.append({"measure": "minhash_signatures_mb_per_cpu_s", "ours": o,
                         "baseline": "datatrove MinhashDedupSignature (14 x 8, 5-grams), same documents",
                         "baseline_value": d, "unit": "MB/CPU-s", "ratio": o / d})
        for spec in (args.runs if n == 0 else args.large_runs).split(","):
            if not spec:
                continue
            kind, workers = spec.split(":")
            label = f"{gb:g}gb_{kind}{workers}"
            work = args.corpus_dir / f"work-{label}"
            shutil.rmtree(work, ignore_errors=True)
            print(f"run {label}", flush=True)
            params = scale_params(work, corpus, raw, kind, int(workers), args.max_train_docs, args.shard_mb)
            run = run_pipeline(params, work, kind)
            run.update(label=label, gb=gb, corpus_mb=corpus_mb, planted=planted, commit=code_commit(),
                       finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_avg=os.getloadavg())
            if not library_done:  # the work without Prefect, on the first ingest shard of this invocation's first run
                library_done = True
                shard = sorted((work / "data" / "ingest" / "corpus").glob("*.parquet"))[0]
                proc = subprocess.run([sys.executable, "-m", "bench.scale_lib.library", str(work / "params.yaml"),
                                       str(shard), "5000"], cwd=ROOT, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                if proc.returncode:  # keep the pipeline run: it took far longer than this
                    print(f"library speeds failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                    run["library_error"] = proc.stderr[-3000:]
                else:
                    run["library"] = json.loads(proc.stdout[proc.stdout.index("{"):])
            runs = [r for r in runs if r["label"] != label] + [run]  # a rerun replaces an earlier one
            rows = summarise(runs, rows)
            shutil.rmtree(work / "data", ignore_errors=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"benchmark": "scale", "rows": rows, "runs": runs}, indent=1) + "\n")
    for r in rows:
        print(f"{r['measure']:<40} ours {r['ours']:9.2f} {r['unit']:<10} baseline {r['baseline_value']:9.2f}  "
              f"ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
