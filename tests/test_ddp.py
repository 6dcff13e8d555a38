"""DDP under torchrun (2 processes, gloo, CPU) gives the losses of one process with the same global batch."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import make_corpus

ARGS = ["--model", "gpt", "--config", "tiny", "--dropout", "0", "--block-size", "32", "--max-steps", "6",
        "--warmup-steps", "2", "--learning-rate", "3e-3", "--log-interval", "1", "--eval-interval", "100",
        "--eval-batches", "1", "--mc-items", "0", "--progress", "false"]


def losses(out: Path) -> list[float]:
    with open(out / "curves" / "train.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_rank_ddp_matches_single_process(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    dirs = ["--train-dir", str(train_dir), "--eval-dir", str(eval_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lmtrain.pretrain.train", *ARGS, *dirs, "--batch-size", "8",
                    "--out", str(tmp_path / "single")], check=True, capture_output=True, env=env)
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lmtrain.pretrain.train", *ARGS,
                          *dirs, "--batch-size", "4", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single, multi = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert len(single) == len(multi) == 6
    assert multi == pytest.approx(single, rel=1e-4)
    assert single[-1] < single[0]
