"""The DVC DAG in a temporary git repo: a first repro runs every stage, a second runs nothing, and
changing one dataset's ingest param reruns only that dataset's stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, python_env

STAGES = ["ingest@corpus", "ingest@instructions", "ingest@comparisons",
          "evalset@corpus", "evalset@instructions", "evalset@comparisons",
          "clean@corpus", "clean@instructions", "clean@comparisons",
          "dedup@corpus", "dedup@instructions", "dedup@comparisons"]


def sh(repo: Path, *cmd: str, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 20 stages in 3 repros; 846 s measured at load 10 on the shared 2-core box
def test_repro_is_incremental(tmp_path, prefect_server, raw_sample):
    repo = copy_project(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["corpus"]["sources"] = [s for s in params["ingest"]["corpus"]["sources"]
                                             if s["type"] != "shakespeare"]  # keep the test quick
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = python_env(PREFECT_API_URL=prefect_server, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                     GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    dvc = str(Path(sys.executable).parent / "dvc")
    sh(repo, "git", "init", "-q", env=env)
    sh(repo, dvc, "init", "-q", env=env)
    sh(repo, dvc, "config", "core.analytics", "false", env=env)
    first = sh(repo, dvc, "repro", *STAGES, env=env)  # fetch and the sources' fingerprints run too: upstream
    fingerprints = [f"sources-{d}@{i}" for d in ("corpus", "instructions", "comparisons")
                    for i in range(len(params["ingest"][d]["sources"]))]
    assert ran(first) == sorted(["fetch", *fingerprints, *STAGES])
    assert ran(sh(repo, dvc, "repro", *STAGES, env=env)) == []

    params["ingest"]["instructions"]["sources"][0]["options"] = {"max_response_chars": 600}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = sh(repo, sys.executable, "-m", "flows.cli", "status", env=env)
    changed = {line.split()[0] for line in status.splitlines() if "changed" in line} & set(STAGES)
    assert changed == {"ingest@instructions"}  # dedup@instructions follows once its input changes
    assert ran(sh(repo, dvc, "repro", *STAGES, env=env)) == ["clean@instructions", "dedup@instructions",
                                                              "evalset@instructions", "ingest@instructions"]


def rerun_set(key: str) -> set[str]:
    """Stages `dvc repro` reruns after `key` changes in params.yaml: those that list the key (or a
    section holding it) as a param, and every stage downstream of them in the DAG."""
    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(str(Path(__file__).resolve().parents[1]))
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    direct = {st for st in repo.index.stages
              for d in st.deps if d.__class__.__name__ == "ParamsDependency"
              for p in (d.params or []) if key == p or key.startswith(p + ".")}
    return {st.addressing for st in direct | {a for st in direct for a in nx.ancestors(graph, st)}}


ALIGN = {"sft", "reward", "judge", "ppo", "rloo", "dpo", "align_eval", "align_curve"}
DATASETS = ("corpus", "instructions", "comparisons")
TRAIN_SIDE = {f"{s}@{d}" for s in ("dedup", "filter", "balance") for d in DATASETS}


@pytest.mark.parametrize("key, expected", [
    ("tokenizer.vocab_size", {"tokenizer", "pretokenize", "pretrain", *ALIGN}),
    ("balance.corpus.weights", {"balance@corpus", "tokenizer", "pretokenize", "pretrain", *ALIGN}),
    ("balance.comparisons.enabled", {"balance@comparisons", "reward", "judge", "ppo", "rloo", "dpo", "align_eval",
                                     "align_curve"}),
    ("pretrain.gpt.learning_rate", {"pretrain", *ALIGN}),
    # what ablations vary never reaches the evaluation set; its own settings rerun it and what follows
    ("dedup.near", {*TRAIN_SIDE, "tokenizer", "pretokenize", "pretrain", *ALIGN}),
    ("filter.langid.min_score", TRAIN_SIDE - {f"dedup@{d}" for d in DATASETS} | {"tokenizer", "pretokenize",
                                                                                 "pretrain", *ALIGN}),
    ("evalset.langid.min_score", {f"evalset@{d}" for d in DATASETS} | TRAIN_SIDE | {"tokenizer", "pretokenize",
                                                                                   "pretrain", *ALIGN}),
    ("evaluate.derived.items", {"evaluate"}),
])
def test_a_param_change_reruns_its_stage_and_what_follows_nothing_before(key, expected):
    assert rerun_set(key) == with_evaluate(expected)


def with_evaluate(stages: set[str]) -> set[str]:
    """`stages` and the evaluation suite behind them: the fingerprint stage of each model in
    `evaluate.models` that one of them trains (models/<stage>/...), then `evaluate`."""
    models = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["evaluate"]["models"]
    fingerprints = {f"evaluate-models@{i}" for i, m in enumerate(models) if m["path"].split("/")[1] in stages}
    return stages | fingerprints | ({"evaluate"} if fingerprints else set())
