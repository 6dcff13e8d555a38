"""Flows through Prefect (Dask and Ray vs threads: tests/test_ray_runner.py, in a loopback-only namespace): a real
server's REST API recording a flow run and its artifact, metrics, and lineage queries."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import httpx
import polars as pl
import pytest

from flows.cli import main as cli_main
from lmdata import lineage
from tests.conftest import ROOT, python_env


def tiny_corpus(tmp_path):
    docs = tmp_path / "src"
    docs.mkdir(parents=True)
    rng = random.Random(0)
    texts = [f"Document {i}: " + " ".join(f"w{rng.randrange(5000)}" for _ in range(60)) for i in range(40)]
    lines = [json.dumps({"text": t, "group": f"g{i}"}) for i, t in enumerate(texts)]
    lines += [json.dumps({"text": texts[3], "group": "copy"}), "{broken"]
    (docs / "a.jsonl").write_text("\n".join(lines[:20]) + "\n")
    (docs / "b.jsonl").write_text("\n".join(lines[20:]) + "\n")
    return docs


def params_for(tmp_path, root, kind: str) -> dict:
    return {
        "data": {"root": str(root), "shard_max_mb": 0.001},
        "runner": {"kind": kind, "workers": 2},
        "ingest": {"eval_fraction": 0.2, "corpus": {"sources": [
            {"type": "jsonl", "source": "web", "path": str(tiny_corpus(tmp_path)), "group_field": "group"}]}},
        "dedup": {"verify": True},
        # random "w123" words: no language, no prose; the held-out rows are only deduplicated
        "evalset": {"langid": {"enabled": False}, "heuristics": {"enabled": False}},
    }


def run_stages(params: dict) -> dict:
    from flows._stage import task_runner
    from flows.clean import clean
    from flows.dedup import dedup
    from flows.evalset import evalset
    from flows.ingest import ingest

    ingest.with_options(task_runner=task_runner(params))("corpus", params)
    evalset.with_options(task_runner=task_runner(params))("corpus", params)
    clean.with_options(task_runner=task_runner(params))("corpus", params)
    return dedup.with_options(task_runner=task_runner(params))("corpus", params)


def test_stage_metrics_conserve_rows_and_lineage_explains_drops(tmp_path, prefect_harness, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = params_for(tmp_path, tmp_path / "data", "threads")
    metrics = run_stages(params)
    ingest_m = json.loads((tmp_path / "metrics" / "ingest" / "corpus.json").read_text())
    assert ingest_m["rows_in"] == 42 and ingest_m["rejected_by_reason"] == {"malformed_json": 1}
    assert ingest_m["shards"] > 2  # tiny shard size: several shards, several tasks
    held = json.loads((tmp_path / "metrics" / "evalset" / "corpus.json").read_text())["rows_in"]
    assert metrics["rows_in"] + held == ingest_m["rows_kept"]  # training rows here, held-out rows in evalset
    assert metrics["rows_in"] == metrics["rows_kept"] + metrics["rows_rejected"]
    assert sum(metrics["rejected_by_reason"].values()) == 1  # the planted copy of document 3
    con = lineage.connect(tmp_path / "data")
    assert {"ingest_corpus", "ingest_corpus_rejected", "dedup_corpus", "dedup_corpus_rejected",
            "lineage"} <= set(lineage.views(con))
    dropped = con.execute("SELECT id, reason, reason_detail FROM dedup_corpus_rejected").fetchall()
    (doc_id, reason, kept_id), = dropped
    assert reason in ("exact_dup", "eval_overlap")
    trail = lineage.why(con, doc_id)
    assert [(s, st) for s, _, st, *_ in trail] == [("ingest", "kept"), ("clean", "kept"), ("dedup", "rejected")]
    kept_in = "evalset_corpus" if reason == "eval_overlap" else "dedup_corpus"  # the copy it matches
    assert con.execute(f"SELECT count(*) FROM {kept_in} WHERE id = ?", [kept_id]).fetchone()[0] == 1
    assert cli_main(["query", "SELECT reason, count(*) AS n FROM lineage WHERE status = 'rejected' "
                              "GROUP BY reason ORDER BY reason", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "malformed_json" in out and reason in out


def test_unknown_runner_kind_fails_before_work(tmp_path):
    from flows._stage import task_runner
    from lmdata.readers import ConfigError

    with pytest.raises(ConfigError, match="runner.kind"):
        task_runner({"runner": {"kind": "ray-on-mars"}})


@pytest.mark.slow
def test_real_server_records_flow_run_and_artifact(tmp_path, prefect_server):
    """Run the ingest flow in a subprocess against a real `prefect server`, then read the run and
    its table artifact back through the REST API."""
    params = params_for(tmp_path, tmp_path / "data", "threads")
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    with httpx.Client(base_url=prefect_server, timeout=30) as client:
        before = {r["id"] for r in client.post("/flow_runs/filter", json={}).json()}
        proc = subprocess.run([sys.executable, "-m", "flows.ingest", "corpus", "--params", "params.yaml"],
                              cwd=tmp_path, env=python_env(PREFECT_API_URL=prefect_server, PYTHONPATH=str(ROOT)),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        flows_ = {f["id"]: f["name"] for f in client.post("/flows/filter", json={}).json()}
        runs = [r for r in client.post("/flow_runs/filter", json={}).json() if r["id"] not in before]
        assert [flows_[r["flow_id"]] for r in runs] == ["ingest"]
        run = runs[0]
        assert run["state_type"] == "COMPLETED"
        tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        assert any(t["name"].startswith("ingest-web") for t in tasks)
        arts = client.post("/artifacts/filter", json={"artifacts": {"key": {"any_": ["ingest-corpus"]},
                                                                    "flow_run_id": {"any_": [run["id"]]}}}).json()
        assert len(arts) == 1 and arts[0]["type"] == "table"
        table = json.loads(arts[0]["data"]) if isinstance(arts[0]["data"], str) else arts[0]["data"]
        outcomes = {row["outcome"]: row["rows"] for row in table}
        assert outcomes["kept"] == 41 and outcomes["rejected: malformed_json"] == 1
    assert pl.read_parquet(tmp_path / "data" / "ingest" / "corpus" / "*.parquet").height == 41
