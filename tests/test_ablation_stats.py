"""Ablation statistics against known answers (Student's sleep data, G*Power sample sizes, bootstraps
of known mean differences), per-block evaluation losses, effects in both orders, and content keys
unchanged by an unrelated commit."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lmdata.ablation import AblationSpec, code_hash, stage_code
from lmdata.ablation_stats import (
    block_bits,
    effects,
    paired_bootstrap,
    paired_t,
    paired_t_power,
    seeds_for_power,
    verdict,
)
from lmtrain.data.shards import TokenShards, write_shard
from lmtrain.models.registry import build_model
from lmtrain.pretrain.evaluate import evaluate_loss

# Student (1908) / Cushny & Peebles: extra hours of sleep, drug 2 vs drug 1 in the same ten patients.
# R: t.test(extra ~ group, data = sleep, paired = TRUE) -> t = -4.0621, df = 9, p-value = 0.002833,
# 95 percent confidence interval: -2.4598858 -0.7001142, mean difference -1.58.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_t_matches_the_textbook_sleep_data_and_scipy():
    d = [b - a for a, b in zip(SLEEP_1, SLEEP_2)]
    t = paired_t(d)
    assert t["n"] == 10 and t["mean"] == pytest.approx(1.58)
    assert t["t"] == pytest.approx(4.0621, abs=1e-4) and t["p"] == pytest.approx(0.002833, abs=1e-6)
    assert t["ci"] == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    ref = stats.ttest_rel(SLEEP_2, SLEEP_1)
    assert (t["t"], t["p"]) == pytest.approx((ref.statistic, ref.pvalue))


def test_paired_t_with_one_pair_or_no_spread():
    assert paired_t([0.3])["p"] is None and paired_t([0.3])["ci"] is None
    same = paired_t([-0.02, -0.02, -0.02])
    assert same["p"] == 0.0 and same["ci"] == (-0.02, -0.02)
    assert paired_t([0.0, 0.0])["p"] == 1.0


def test_bootstrap_recovers_a_known_mean_difference():
    z = np.random.default_rng(7).normal(0, 1, 400)
    d = 0.05 + 0.01 * (z - z.mean()) / z.std()  # mean exactly 0.05, spread 0.01
    b = paired_bootstrap(d, n_boot=4000)
    assert b["mean"] == pytest.approx(0.05)
    assert b["ci"][0] < 0.05 < b["ci"][1] and b["ci"][0] > 0 and b["p"] < 0.001
    # the interval's half-width is ~1.96 standard errors (0.01 / sqrt(400) = 0.0005)
    assert (b["ci"][1] - b["ci"][0]) / 2 == pytest.approx(1.96 * 0.0005, rel=0.15)
    const = paired_bootstrap([0.2] * 50, n_boot=500)
    assert const["ci"] == pytest.approx((0.2, 0.2)) and const["p"] < 0.01


def test_bootstrap_of_no_difference_is_not_significant_and_weights_give_the_ratio():
    d = np.concatenate([np.full(100, 0.1), np.full(100, -0.1)])  # mean exactly 0
    b = paired_bootstrap(d, n_boot=2000)
    assert b["ci"][0] < 0 < b["ci"][1] and b["p"] > 0.5
    w = paired_bootstrap([3.0, 1.0], [2.0, 2.0], n_boot=100)
    assert w["mean"] == pytest.approx(1.0)  # sum of diffs / sum of weights (bits / bytes)
    assert paired_bootstrap([1.0, 2.0], n_boot=100, seed=3) == paired_bootstrap([1.0, 2.0], n_boot=100, seed=3)


def test_seeds_for_power_match_gpower():
    # G*Power, paired t (matched pairs), two-tailed, alpha 0.05, power 0.8: dz 0.5 -> 34, dz 1.0 -> 10
    assert seeds_for_power(0.5, 1.0) == 34 and seeds_for_power(-0.01, 0.01) == 10
    assert paired_t_power(34, 0.5) >= 0.8 > paired_t_power(33, 0.5)
    assert seeds_for_power(0.0, 1.0) is None and seeds_for_power(0.1, None) is None
    assert seeds_for_power(1e-6, 1.0) is None  # beyond any practical number of seeds


def test_verdict_rule_needs_both_tests_on_the_same_side():
    sig = {"p": 0.01, "mean": -0.05}
    assert verdict(sig, {"ci": (-0.08, -0.02)}) == "helped"
    assert verdict({"p": 0.01, "mean": 0.05}, {"ci": (0.02, 0.08)}) == "hurt"
    assert verdict(sig, {"ci": (-0.08, 0.01)}) == "not significant"   # bootstrap CI spans 0
    assert verdict({"p": 0.2, "mean": -0.05}, {"ci": (-0.08, -0.02)}) == "not significant"
    assert verdict(sig, {"ci": (0.02, 0.08)}) == "not significant"    # the two disagree in sign
    assert verdict({"p": None, "mean": -0.05}, None).startswith("undecided")
    assert verdict(sig, None, identical=True).startswith("no effect")
    assert verdict({"p": 0.01, "mean": 0.05}, None, lower_is_better=False, need_boot=False) == "helped"


def blocks(values: list[float]) -> str:
    return json.dumps({"block_tokens": 10, "nats": values})


def run_row(variant: str, seed: int, bpb: float, nats: list[float]) -> dict:
    return {"variant": variant, "seed": seed, "eval_bpb": bpb, "mc_accuracy": 0.5, "eval_tokens": 10 * len(nats),
            "eval_bytes": 30 * len(nats), "eval_blocks": blocks(nats)}


def test_block_bits_spreads_bytes_by_tokens():
    bits, nbytes = block_bits({"block_tokens": 512, "nats": [math.log(2) * 10, math.log(2)]}, 2000, 1000)
    assert bits == pytest.approx([10.0, 1.0]) and nbytes == pytest.approx([1024.0, 976.0])  # 2 bytes/token


def test_leave_one_out_effect_is_with_minus_without_and_uses_the_blocks():
    spec = AblationSpec.from_dict({"order": "leave-one-out", "grid": [
        {"name": "raw", "set": {"dedup.exact": False}}, {"name": "+exact", "set": {"dedup.exact": True}}]})
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        base = rng.normal(20, 1, 40)
        noise = 0.1 * seed
        rows += [run_row("all", seed, 2.0 + noise, list(base)),
                 run_row("-exact", seed, 2.05 + noise + 0.001 * seed, list(base + 0.5))]  # without: worse
    e = {r["variant"]: r for r in effects(spec.variants, rows, n_boot=2000)}["-exact"]
    assert e["effect"] == pytest.approx(-0.051)  # with − without: the step helped
    assert e["boot"]["mean"] == pytest.approx(-0.5 / (math.log(2) * 30))  # 0.5 nats per 30-byte block
    assert e["verdict"] == "helped" and e["t"]["p"] < 0.05 and e["seeds_needed"] == 2


def test_unchanged_data_reads_as_no_effect():
    spec = AblationSpec.from_dict({"grid": [{"name": "a", "set": {}}, {"name": "b", "set": {}}]})
    rows = [run_row(v, s, 2.0 + s, [1.0, 2.0]) for v in ("a", "b") for s in range(2)]
    assert effects(spec.variants, rows, n_boot=100)[1]["verdict"].startswith("no effect")


def test_evaluation_block_losses_are_fixed_blocks_of_the_split_in_order(tmp_path):
    # shard 0: the cycle 1..19,0 a bigram can know (300 tokens); shard 1: 77 random tokens
    write_shard(tmp_path / "s0", np.arange(1, 301) % 20, 20, n_bytes=600, documents=1, eot_id=0)
    write_shard(tmp_path / "s1", np.random.default_rng(0).integers(0, 20, 77), 20, n_bytes=154, documents=1, eot_id=0)
    shards = TokenShards(tmp_path)
    uniform = build_model("bigram", {"block_size": 16}, vocab_size=20)
    ev = evaluate_loss(uniform, shards, batch_size=4, score_block=100)
    assert ev["block_nats"] == pytest.approx([100 * math.log(20)] * 3 + [77 * math.log(20)], rel=1e-5)
    knows = build_model("bigram", {"block_size": 16}, vocab_size=20)
    with torch.no_grad():
        knows.token_logits.weight.fill_(-10.0)
        for t in range(20):
            knows.token_logits.weight[t, (t + 1) % 20] = 10.0
    ev = evaluate_loss(knows, shards, batch_size=3, stride=5, score_block=100)
    assert max(ev["block_nats"][:3]) < 0.01 < ev["block_nats"][3]  # the random shard is the last block
    assert sum(ev["block_nats"]) == pytest.approx(ev["eval_loss"] * ev["eval_tokens"])


def test_content_key_ignores_an_unrelated_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "code").mkdir(parents=True)
    (repo / "code" / "a.py").write_text("A = 1\n")
    (repo / "code" / "b.py").write_text("B = 1\n")
    (repo / "c.py").write_text("C = 1\n")
    (repo / "README.md").write_text("hello\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: python code/a.py, deps: [code/a.py], outs: [x]}\n"
        "  b: {cmd: python code/b.py, deps: [x, code], outs: [y]}\n"
        "  c: {cmd: python c.py, deps: [y, c.py], outs: [z]}\n")
    dvc = str(Path(sys.executable).parent / "dvc")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    assert stage_code("b", repo)[0] == ["code/a.py", "code/b.py"]  # x is an output, c.py is downstream
    key = code_hash("b", repo)
    (repo / "README.md").write_text("changed\n")
    (repo / "c.py").write_text("C = 2\n")  # another stage's code
    subprocess.run([*git, "commit", "-qam", "unrelated"], cwd=repo, check=True, capture_output=True)
    assert code_hash("b", repo) == key
    (repo / "code" / "a.py").write_text("A = 2\n")  # upstream code the target runs
    assert code_hash("b", repo) != key
