"""The training loop: schedule, learning, outputs, gradient accumulation, the CLI without Prefect."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lmtrain.data.shards import TokenShards, write_shard
from lmtrain.data.windows import RandomWindows
from lmtrain.pretrain.train import TrainConfig, lr_at, train


def make_corpus(root, vocab=32, n_train=6000, n_eval=1500):
    """A learnable token stream: a fixed random successor table with a little noise."""
    rng = np.random.default_rng(0)
    successor = rng.permutation(vocab)
    for split, n, shards in (("train", n_train, 2), ("eval", n_eval, 1)):
        for k in range(shards):
            toks = [int(rng.integers(vocab))]
            for _ in range(n // shards - 1):
                toks.append(int(successor[toks[-1]]) if rng.random() < 0.9 else int(rng.integers(vocab)))
            write_shard(root / split / f"part{k}", toks, vocab, n_bytes=len(toks) * 3, documents=1, eot_id=0)
    return root / "train", root / "eval"


def small_config(**kw) -> TrainConfig:
    base = dict(model="gpt", config="tiny", block_size=32, batch_size=8, max_steps=12, warmup_steps=2,
                learning_rate=3e-3, log_interval=1, eval_interval=6, eval_batches=2, eval_batch_size=8,
                mc_items=20, mc_context=16, mc_continuation=8, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_warms_up_linearly_then_decays_to_the_floor():
    cfg = TrainConfig(learning_rate=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # cosine midpoint between peak and floor
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)


def test_windows_are_seeded_and_split_disjointly_across_ranks(tmp_path):
    train_dir, _ = make_corpus(tmp_path)
    shards = TokenShards(train_dir)
    a = RandomWindows(shards, 16, seed=5).global_batch(8)[0]
    b = RandomWindows(shards, 16, seed=5).global_batch(8)[0]
    assert np.array_equal(a, b)
    r0 = RandomWindows(shards, 16, seed=5).rank_batches(4, 1, rank=0, world=2)[0][0]
    r1 = RandomWindows(shards, 16, seed=5).rank_batches(4, 1, rank=1, world=2)[0][0]
    assert np.array_equal(np.concatenate([r0, r1]), a)  # the ranks' slices make up the global batch


def test_training_learns_and_writes_its_outputs(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    progress = []
    m = train(small_config(), train_dir, eval_dir, tmp_path / "out", on_progress=progress.append)
    first, last = progress[0]["train_loss"], progress[-1]["train_loss"]
    assert first > math.log(32) - 0.5 and last < first - 0.5
    assert [p["step"] for p in progress] == list(range(1, 13))
    for key in ("eval_loss", "eval_bpb", "mc_accuracy", "tokens_per_s", "matmul_utilisation"):
        assert isinstance(m[key], float), key
    assert m["mfu"] is None and m["peak_flops_spec"].startswith("none")  # a CPU has no spec-sheet peak
    assert m["eval_tokens"] == 1500 and m["eval_bpb"] == pytest.approx(m["eval_loss"] / (3 * math.log(2)))
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == m["eval_loss"]
    assert (out / "curves" / "train.csv").read_text().splitlines()[0] == "step,tokens,train_loss,lr"
    assert len((out / "curves" / "val.csv").read_text().splitlines()) == 3  # header + steps 6, 12
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint" / "model.safetensors").exists()


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    common = dict(model="bigram", max_steps=4, mc_items=0, eval_interval=100)
    big = train(small_config(batch_size=8, **common), train_dir, eval_dir, tmp_path / "big")
    acc = train(small_config(batch_size=4, tokens_per_step=8 * 32, **common), train_dir, eval_dir, tmp_path / "acc")
    assert acc["accum_steps"] == 2
    assert acc["eval_loss"] == pytest.approx(big["eval_loss"], rel=1e-5)


def test_tokens_per_step_must_be_a_multiple_of_the_micro_batch(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    with pytest.raises(ValueError, match="tokens_per_step 100 is not a multiple"):
        train(small_config(tokens_per_step=100), train_dir, eval_dir, tmp_path / "out")


def test_cli_runs_without_prefect_or_polars(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    code = ("import sys; sys.modules['prefect'] = sys.modules['polars'] = sys.modules['dvc'] = None\n"
            "from lmtrain.pretrain.train import main; main(sys.argv[1:])")
    args = ["--model", "mlp", "--config", "tiny", "--train-dir", str(train_dir), "--eval-dir", str(eval_dir),
            "--out", str(tmp_path / "out"), "--max-steps", "3", "--block-size", "32", "--batch-size", "8",
            "--mc-items", "0", "--progress", "false"]
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 3
