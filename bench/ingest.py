"""Ingest throughput and memory: documents/s and MB/s on the sample and on the sample ×10 (≥100 MB),
MB per CPU-second (user + system, all threads: the box is shared, so wall time is inflated by
others), peak working memory (peak RSS minus RSS after imports) of each, and
`ingest_memory_scaling` = (10 × work_1x) / work_10x, and the Parquet bytes written (both zstd level 3).
After timing, every kept row's id, content hash and text are checked equal to the per-row reference
path (the run fails otherwise). Baseline, measured in the same run: load everything at once with
`polars.read_ndjson` and write one Parquet file (no normalisation, validation or quarantine). Each
measure is the median of `--repeats` fresh processes, ours and the baseline alternating, so that a
busy neighbour weighs on both alike.

    python bench/ingest.py [--quick] [--repeats 3] [--data data/raw/shakespeare]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER = r"""
import json, resource, sys, time
from pathlib import Path
def rss_mb():
    return float(open('/proc/self/statm').read().split()[1]) * 4096 / 1e6
mode, src, out, check_rows = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "check"
import polars as pl
from lmdata.ingest import IngestConfig, ingest_source
from lmdata.schema import validate
from lmdata.shards import empty_frame
validate(empty_frame("corpus"), "corpus", where="warm-up")  # pandera loads its backends on first use
base = rss_mb()
t0 = time.perf_counter()
c0 = time.process_time()
if mode == "ours":
    params = {"data": {"shard_max_mb": 64}, "ingest": {"corpus": {"sources": [
        {"type": "jsonl", "source": "bench", "path": str(src)}]}}}
    cfg = IngestConfig.from_params(params, "corpus")
    stats = ingest_source(cfg.sources[0], "corpus", cfg, out)
    docs = stats["rows_kept"]
else:
    df = pl.read_ndjson(src)
    df.write_parquet(out / "all.parquet", compression="zstd")
    docs = df.height
secs = time.perf_counter() - t0
cpu = time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
out_mb = sum(p.stat().st_size for p in out.glob("*.parquet")) / 1e6  # kept shards (ours), the one file (baseline)
check = identical_to_per_row(out, src) if mode == "ours" and check_rows else None  # after the peak is read
print(json.dumps({"docs": docs, "seconds": secs, "cpu_seconds": cpu, "work_mb": peak - base, "out_mb": out_mb,
                  "identical": check}))
"""

# Checked after timing: every kept row's text, content_hash and id equal the per-row reference path
# (json.loads → normalise_text → hash_hex, one record at a time), so batching changed no byte.
CHECK = r"""
def identical_to_per_row(out, src):
    from lmdata.text import document_id, hash_hex, normalise_text
    df = pl.concat([pl.read_parquet(p, columns=["id", "content_hash", "text", "locator"])
                    for p in sorted(out.glob("*.parquet"))])
    ref = []
    with open(src, "rb") as f:
        for n, line in enumerate(f, 1):
            text = normalise_text(json.loads(line)["text"])
            ref.append((document_id("bench", f"{src.name}:{n}", text), hash_hex(text), text))
    return [tuple(r) for r in df.select("id", "content_hash", "text").iter_rows()] == ref
"""


def sample_documents(data: Path, piece_chars: int) -> list[str]:
    """The sample's text files cut into pieces of about `piece_chars` characters, at line ends."""
    docs = []
    for path in sorted(data.rglob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        start = 0
        while start < len(text):
            end = text.find("\n", start + piece_chars)
            end = len(text) if end == -1 else end
            docs.append(text[start:end])
            start = end + 1
    return docs


def write_jsonl(path: Path, docs: list[str], copies: int) -> int:
    with open(path, "w", encoding="utf-8") as f:
        for c in range(copies):
            for i, d in enumerate(docs):
                f.write(json.dumps({"text": f"[copy {c}] {d}" if c else d, "n": i}) + "\n")
    return path.stat().st_size


def measure(mode: str, src: Path, check: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", CHECK + WORKER, mode, str(src), out, "check" if check else "-"],
                              capture_output=True,
                              text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per measure (the median is kept)")
    args = ap.parse_args()
    data = args.data or next((p for p in (ROOT / "data/raw/shakespeare", ROOT / ".cache/tests/raw/shakespeare")
                              if p.exists()), None)
    if data is None:
        sys.exit("no sample data: run `dvc repro fetch` (or pass --data)")
    docs = sample_documents(data, 4000)
    if args.quick:
        docs = docs[: len(docs) // 4]
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 10):
            src = Path(tmp) / f"x{scale}.jsonl"
            mb = write_jsonl(src, docs, scale) / 1e6
            runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
            for rep in range(args.repeats):
                for mode in ("ours", "baseline"):
                    r = measure(mode, src, check=mode == "ours" and rep == 0)
                    runs[mode].append(r)
                    print(f"{mode:>8} x{scale:<2} {mb:7.1f} MB  {r['docs'] / r['seconds']:9.0f} docs/s  "
                          f"{mb / r['seconds']:6.1f} MB/s  {mb / r['cpu_seconds']:6.1f} MB/cpu-s  "
                          f"work {r['work_mb']:7.1f} MB  out {r['out_mb']:6.1f} MB", flush=True)
                    if mode == "ours" and rep == 0 and not r["identical"]:
                        sys.exit(f"x{scale}: kept rows differ from the per-row reference path")
            for mode, rs in runs.items():
                results[(mode, scale)] = {k: statistics.median(r[k] for r in rs)
                                          for k in ("docs", "seconds", "cpu_seconds", "work_mb", "out_mb")}
                results[(mode, scale)]["mb"] = mb
    base_name = "polars.read_ndjson + write_parquet (load all, no validation)"
    for scale in (1, 10):
        o, b = results[("ours", scale)], results[("baseline", scale)]
        rows.append({"measure": f"ingest_docs_per_s_x{scale}", "ours": o["docs"] / o["seconds"], "baseline": base_name,
                     "baseline_value": b["docs"] / b["seconds"], "unit": "docs/s",
                     "ratio": (o["docs"] / o["seconds"]) / (b["docs"] / b["seconds"])})
        rows.append({"measure": f"ingest_mb_per_s_x{scale}", "ours": o["mb"] / o["seconds"], "baseline": base_name,
                     "baseline_value": b["mb"] / b["seconds"], "unit": "MB/s",
                     "ratio": (o["mb"] / o["seconds"]) / (b["mb"] / b["seconds"])})
        rows.append({"measure": f"ingest_mb_per_cpu_s_x{scale}", "ours": o["mb"] / o["cpu_seconds"],
                     "baseline": base_name, "baseline_value": b["mb"] / b["cpu_seconds"], "unit": "MB/CPU-s",
                     "ratio": (o["mb"] / o["cpu_seconds"]) / (b["mb"] / b["cpu_seconds"])})
        rows.append({"measure": f"ingest_work_memory_x{scale}", "ours": o["work_mb"], "baseline": base_name,
                     "baseline_value": b["work_mb"], "unit": "MB", "ratio": b["work_mb"] / max(o["work_mb"], 1e-9)})
    scaling = {m: 10 * results[(m, 1)]["work_mb"] / max(results[(m, 10)]["work_mb"], 1e-9) for m in ("ours", "baseline")}
    rows.append({"measure": "ingest_memory_scaling", "ours": scaling["ours"], "baseline": base_name,
                 "baseline_value": scaling["baseline"], "unit": "(10 x work_1x) / work_10x",
                 "ratio": scaling["ours"] / scaling["baseline"]})
    o, b = results[("ours", 10)], results[("baseline", 10)]
    rows.append({"measure": "ingest_output_mb_x10", "ours": o["out_mb"], "baseline": base_name,
                 "baseline_value": b["out_mb"], "unit": "MB of Parquet (zstd 3)", "ratio": b["out_mb"] / o["out_mb"]})
    out = ROOT / "bench" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ingest", "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(f"{r['measure']:<28} ours {r['ours']:10.2f} {r['unit']:<26} baseline {r['baseline_value']:10.2f}  "
              f"ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
