"""Configured source files are tracked inputs: editing, adding or removing a file of a source
outside data/raw makes DVC rerun ingest (through the source's fingerprint stage), and a second
`dvc repro` runs nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdata.sources import fingerprint
from tests.conftest import copy_project, python_env
from tests.test_dvc_pipeline import ran, sh


def test_fingerprint_follows_contents_names_and_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n')
    first = fingerprint(tmp_path)
    assert first["files"] == 1 and first["bytes"] == 16
    assert fingerprint(tmp_path) == first  # stable
    (tmp_path / "a.jsonl").write_text('{"text": "two"}\n')
    second = fingerprint(tmp_path)
    assert second["xxh3_128"] != first["xxh3_128"]
    (tmp_path / "a.jsonl").rename(tmp_path / "b.jsonl")
    assert fingerprint(tmp_path)["xxh3_128"] != second["xxh3_128"]  # a rename is a change too


@pytest.mark.slow
def test_editing_a_source_outside_data_raw_reruns_ingest_and_only_once(tmp_path, prefect_server):
    repo = copy_project(tmp_path / "repo")
    notes = tmp_path / "elsewhere" / "notes"  # a user's corpus outside the repository
    notes.mkdir(parents=True)
    (notes / "a.jsonl").write_text("".join(json.dumps({"id": i, "text": f"Note number {i}."}) + "\n" for i in range(5)))
    (notes / "b.jsonl").write_text(json.dumps({"id": 99, "text": "Another note."}) + "\n")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["corpus"]["sources"] = [{"type": "jsonl", "source": "notes", "path": str(notes)}]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = python_env(PREFECT_API_URL=prefect_server)
    dvc = str(Path(sys.executable).parent / "dvc")
    sh(repo, "git", "init", "-q", env=env)
    sh(repo, dvc, "init", "-q", env=env)
    sh(repo, dvc, "config", "core.analytics", "false", env=env)

    def kept() -> int:
        return json.loads((repo / "metrics" / "ingest" / "corpus.json").read_text())["rows_kept"]

    assert ran(sh(repo, dvc, "repro", "ingest@corpus", env=env)) == ["ingest@corpus", "sources-corpus@0"]
    assert kept() == 6
    assert ran(sh(repo, dvc, "repro", "ingest@corpus", env=env)) == []

    with open(notes / "a.jsonl", "a") as f:  # change a file
        f.write(json.dumps({"id": 5, "text": "A note added later."}) + "\n")
    status = json.loads(subprocess.run([dvc, "status", "--json"], cwd=repo, env=env, capture_output=True,
                                       text=True, check=True).stdout)
    assert "sources-corpus@0" in status
    cli = sh(repo, sys.executable, "-m", "flows.cli", "status", env=env)
    assert any(line.split()[0] == "ingest@corpus" and "changed" in line and "notes" in line
               for line in cli.splitlines())
    assert ran(sh(repo, dvc, "repro", "ingest@corpus", env=env)) == ["ingest@corpus", "sources-corpus@0"]
    assert kept() == 7

    (notes / "b.jsonl").unlink()  # remove one file, add another
    (notes / "c.jsonl").write_text(json.dumps({"id": 7, "text": "A new file of notes."}) + "\n")
    assert ran(sh(repo, dvc, "repro", "ingest@corpus", env=env)) == ["ingest@corpus", "sources-corpus@0"]
    assert kept() == 7
    assert ran(sh(repo, dvc, "repro", "ingest@corpus", env=env)) == []
