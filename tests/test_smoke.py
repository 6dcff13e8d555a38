"""`lmforge run --profile FILE --smoke`: the smoke params (a pure function of params + profile), the capped
raw copy, and the GPU profile's whole DAG on CPU in a scratch copy within 5 minutes and 4 GB."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from flows._smoke import (
    SmokeResult,
    copy_capped,
    report,
    smoke_dtype,
    smoke_params,
    stage_raw,
    stage_states,
)
from lmtrain.align.curve import AlignCurveConfig
from lmtrain.align.dpo import DPOConfig
from lmtrain.align.evaluate import AlignEvalConfig
from lmtrain.align.ppo import PPOConfig
from lmtrain.align.reward import JudgeConfig, RewardConfig
from lmtrain.align.rloo import RLOOConfig
from lmtrain.align.sft import SFTConfig
from lmtrain.config import build_config, pretrain_configs
from lmtrain.evaluate.suite import EvaluateConfig
from lmtrain.models.registry import build_model
from lmtrain.pretrain.train import TrainConfig
from tests.conftest import ROOT, copy_project, python_env

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
GPU = yaml.safe_load((ROOT / "profiles" / "gpu.yaml").read_text())


def test_smoke_params_shrink_every_pretrained_model_and_keep_the_vocabulary():
    p = smoke_params(PARAMS, GPU, bf16_ok=True)
    assert p["pretrain"]["models"] == ["gpt"] and p["tokenizer"]["vocab_size"] == 50257
    assert p["tokenizer"]["max_train_mb"] <= 1

    for cfg in pretrain_configs(p, TrainConfig, ("gpt",)).values():
        assert cfg.device == "cpu" and cfg.dtype == "bfloat16" and not cfg.compile and cfg.max_steps <= 5
        model = build_model("gpt", cfg.config, vocab_size=50257)
        assert sum(t.numel() for t in model.parameters()) < 5e6  # 2 x 64: the embedding is most of it
    default = smoke_params(PARAMS, {}, bf16_ok=False)  # the default profile: bigram and MLP shrunk too
    for name in ("bigram", "mlp", "gpt"):
        assert default["pretrain"][name]["max_steps"] <= 5
    assert default["pretrain"]["common"]["dtype"] == "float32"


def test_smoke_params_put_every_alignment_stage_on_the_cpu_with_few_steps():
    p = smoke_params(PARAMS, GPU, bf16_ok=False)
    configs = {"sft": SFTConfig, "reward": RewardConfig, "judge": JudgeConfig, "ppo": PPOConfig, "dpo": DPOConfig,
               "rloo": RLOOConfig, "align_eval": AlignEvalConfig, "align_curve": AlignCurveConfig,
               "evaluate": EvaluateConfig}
    for name, cls in configs.items():
        cfg = build_config(cls, p[name], name)  # every override is a real field of the stage's config
        assert cfg.device == "cpu" and cfg.dtype == "float32", name
    assert p["ppo"]["steps"] <= 5 and p["rloo"]["steps"] <= 5 and p["sft"]["epochs"] == 1 and p["dpo"]["micro_batch_size"] == 4
    assert PARAMS["pretrain"]["models"] == ["bigram", "mlp", "gpt"]  # the input is not modified


def test_smoke_dtype_keeps_bf16_only_where_the_cpu_runs_it():
    assert smoke_dtype("bfloat16", True) == "bfloat16"
    assert smoke_dtype("bfloat16", False) == "float32"
    assert smoke_dtype("auto", True) == "bfloat16"  # auto means bf16 on the GPU the profile is for
    assert smoke_dtype("float32", True) == "float32"


def test_copy_capped_spreads_over_folders_and_cuts_a_lone_file_at_a_line(tmp_path):
    src = tmp_path / "src"
    for d in ("a", "b", "c"):
        for i in range(10):
            (src / d).mkdir(parents=True, exist_ok=True)
            (src / d / f"{i}.txt").write_text("x" * 999 + "\n")
    n = copy_capped(src, tmp_path / "out", 12_000)
    files = list((tmp_path / "out").rglob("*.txt"))
    assert n == 12_000 == sum(f.stat().st_size for f in files)
    assert {f.parent.name for f in files} == {"a", "b", "c"}
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(1000)))
    n = copy_capped(big, tmp_path / "cut.jsonl", 100)
    lines = (tmp_path / "cut.jsonl").read_text().splitlines()
    assert n <= 100 and [json.loads(x)["i"] for x in lines] == list(range(len(lines))) and lines


def test_stage_raw_copies_the_models_whole(tmp_path):
    raw = tmp_path / "raw"
    (raw / "models").mkdir(parents=True)
    (raw / "models" / "lid.ftz").write_bytes(b"m" * 5000)
    (raw / "text").mkdir()
    for i in range(5):
        (raw / "text" / f"{i}.txt").write_bytes(b"t" * 1000)
    copied = stage_raw(raw, tmp_path / "out", cap_mb=0.002)
    assert copied == {"models": 5000, "text": 2000}


def test_stage_states_marks_the_stage_that_failed():
    out = "Running stage 'a':\n> x\nStage 'f' didn't change, skipping\nRunning stage 'b':\nERROR: boom\n"
    assert stage_states(["f", "a", "b", "c"], out, 1) == {"f": "skipped (up to date)", "a": "ok", "b": "failed",
                                                          "c": "not run"}
    assert stage_states(["a", "b"], out, 0)["b"] == "ok"


def test_report_names_the_failed_stage_and_where_the_scratch_copy_is(tmp_path):
    failed = SmokeResult(tmp_path, 1, {"ingest@corpus": "ok", "pretrain": "failed", "sft": "not run"}, {"x": 10})
    text = report(failed, keep=False)
    assert "FAILED at pretrain" in text and f"kept for inspection at {tmp_path}" in text
    assert "\n  sft            not run\n" in text
    assert f"scratch copy {tmp_path} removed" in report(SmokeResult(tmp_path, 0, {"a": "ok"}), keep=False)


def test_smoke_without_a_profile_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--smoke"], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "give --profile FILE" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_smoke_run_of_the_gpu_profile(tmp_path, raw_sample):
    """The GPU profile's DAG, every stage, on CPU in <= 5 minutes and <= 4 GB; the workspace untouched."""
    work = copy_project(tmp_path / "work")
    (work / "profiles").mkdir()
    (work / "profiles" / "gpu.yaml").write_text((ROOT / "profiles" / "gpu.yaml").read_text())
    (work / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (work / "models").mkdir()
    (work / "models" / "keep.txt").write_text("user output")
    before = {p: p.read_bytes() for p in (work / "dvc.lock", work / "params.yaml", work / "models" / "keep.txt")}
    scratch = tmp_path / "scratch"
    env = python_env(PREFECT_HOME=str(tmp_path / "prefect"), LMFORGE_SMOKE_SCRATCH=str(scratch))
    env.pop("PREFECT_API_URL", None)
    wrapper = ("import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print('RUSAGE', json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss])); sys.exit(rc)")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "flows.cli", "run", "--profile",
                           "profiles/gpu.yaml", "--smoke", "--keep", "--raw", str(raw_sample)], cwd=work,
                          env={**env, "PYTHONPATH": str(work)}, capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    cpu_s, peak_kib = json.loads(proc.stdout.split("RUSAGE ")[1])  # the whole process tree, server included
    print(f"smoke: {wall:.0f} s wall, {cpu_s:.0f} s CPU, largest process {peak_kib / 1e6:.2f} GB")
    states = dict(line.split()[:2] for line in proc.stdout.split("lmforge smoke: per stage\n")[1].splitlines()
                  if line.startswith("  "))
    for stage in ("sources-corpus@0", "evalset@corpus", "clean@corpus", "dedup@corpus", "filter@corpus",
                  "tokenizer", "pretokenize", "pretrain", "sft", "reward", "judge", "ppo", "dpo", "align_eval"):
        assert states[stage] == "ok", (stage, states)
    assert states.pop("fetch") == "replaced" and set(states.values()) == {"ok"}, states
    # <= 5 minutes of CPU: what the DAG costs on an idle 2-core box (wall time here depends on other load)
    assert cpu_s <= 300 and peak_kib <= 4e6, (wall, cpu_s, peak_kib)
    pre = json.loads((scratch / "metrics" / "pretrain.json").read_text())
    assert set(pre) == {"gpt"} and 0 < pre["gpt"]["eval_bpb"] < 30
    smoke = yaml.safe_load((scratch / "params.yaml").read_text())
    assert smoke["tokenizer"]["vocab_size"] == 50257 and smoke["pretrain"]["common"]["device"] == "cpu"
    learned = json.loads((scratch / "metrics" / "tokenizer.json").read_text())["vocab_size"]
    assert 10_000 < learned <= 50257  # as many merges as ~1 MB of training text holds (25,451 on the sample)
    assert before == {p: p.read_bytes() for p in before}
    assert not (work / "data").exists() and not (work / "metrics").exists()
