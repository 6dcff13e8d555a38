"""The scaling bench (bench/scale.py): its generated corpus is reused only when it matches, and its rows
turn measured runs into throughput and memory-growth figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402
from scale_lib.corpus import ensure_corpus  # noqa: E402


def test_corpus_is_planted_and_reused_only_when_its_settings_match(raw_sample, tmp_path):
    out = tmp_path / "corpus"
    made = ensure_corpus(raw_sample, out, 0.4, file_mb=0.25)
    files = sorted(out.glob("shard-*.jsonl"))
    assert made["files"] == len(files) == 2 and made["bytes"] == sum(f.stat().st_size for f in files) >= 0.4e6
    records = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(records) == made["records"] == made["unique"] + made["exact"] + made["near"]
    assert made["exact"] + made["near"] > 0 and {r["source"] for r in records} <= {"curated", "web"}
    stamps = [f.stat().st_mtime_ns for f in files]

    assert ensure_corpus(raw_sample, out, 0.4, file_mb=0.25) == made
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not rewritten

    files[-1].write_bytes(files[-1].read_bytes()[:-10])  # a cut file is never reused
    assert ensure_corpus(raw_sample, out, 0.4, file_mb=0.25) == made
    assert sum(f.stat().st_size for f in sorted(out.glob("shard-*.jsonl"))) == made["bytes"]
    bigger = ensure_corpus(raw_sample, out, 0.6, file_mb=0.25)
    assert bigger["bytes"] >= 0.6e6 and bigger["files"] == len(list(out.glob("shard-*.jsonl")))


def fake_run(gb: float, worker_peak: float, driver_work: float, cpu_s: float) -> dict:
    stage = {"stage": "dedup", "wall_s": 1.0, "cpu_s": cpu_s, "orchestration_cpu_s": 0.0, "docs_in": 100 * gb,
             "bytes_in": gb * 1e9, "rows_in": 100 * gb, "worker_peak_rss_mb": [worker_peak, 13.0],
             "driver_work_mb": driver_work}
    return {"label": f"{gb:g}gb_processes2", "gb": gb, "corpus_mb": gb * 1000, "import_rss_mb": 300.0,
            "stages": [stage]}


def test_rows_give_throughput_and_working_memory_growth():
    runs = [fake_run(0.1, worker_peak=400.0, driver_work=50.0, cpu_s=20.0),
            fake_run(1.0, worker_peak=500.0, driver_work=1000.0, cpu_s=100.0)]
    rows = {r["measure"]: r for r in scale.summarise(runs, [])}
    assert rows["dedup_mb_per_cpu_s_1gb_processes2"]["ours"] == 10.0
    assert rows["end_to_end_mb_per_cpu_s_0.1gb_processes2"]["ratio"] == 100 / 20 / scale.TARGET_MB_PER_CORE
    worker = rows["dedup_worker_work_growth_0.1_to_1gb_processes2"]
    assert worker["ours"] == 2.0 and worker["ratio"] == 5.0  # 100 -> 200 MB of work for 10x the data
    driver = rows["dedup_flow_process_work_growth_0.1_to_1gb_processes2"]
    assert driver["ours"] == 20.0 and driver["ratio"] == 0.5  # faster than the corpus: below 1
    assert rows["dedup_worker_peak_rss_growth_0.1_to_1gb_processes2"]["ours"] == 1.25
