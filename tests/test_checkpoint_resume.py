"""Checkpoints: exact resume after an interruption, optimizer round trip, loading never unpickles."""

import pickle
from pathlib import Path

import pytest
import safetensors
import torch

from lmtrain.models.checkpoint import load_model, load_training_state, save_checkpoint
from lmtrain.models.registry import build_model
from lmtrain.pretrain.train import train
from lmtrain.runtime import adamw
from tests.test_train import make_corpus, small_config


class Interrupt(Exception):
    pass


def test_resumed_run_reproduces_the_uninterrupted_one_exactly(tmp_path):
    train_dir, eval_dir = make_corpus(tmp_path)
    cfg = small_config(max_steps=8, eval_interval=4, mc_items=0, dropout=0.1)  # dropout: RNG state matters
    full = train(cfg, train_dir, eval_dir, tmp_path / "full")

    def stop_at_5(record):
        if record["step"] == 5:
            raise Interrupt  # a crash after step 5; the last checkpoint is at step 4

    with pytest.raises(Interrupt):
        train(small_config(max_steps=8, eval_interval=4, mc_items=0, dropout=0.1, checkpoint_interval=4),
              train_dir, eval_dir, tmp_path / "resumed", on_progress=stop_at_5)
    resumed = train(small_config(max_steps=8, eval_interval=4, mc_items=0, dropout=0.1, checkpoint_interval=4),
                    train_dir, eval_dir, tmp_path / "resumed")
    a = (tmp_path / "full" / "curves" / "train.csv").read_text()
    b = (tmp_path / "resumed" / "curves" / "train.csv").read_text()
    assert a == b  # every step's loss, bit for bit
    assert resumed["eval_loss"] == full["eval_loss"]
    wa = safetensors.torch.load_file(tmp_path / "full" / "checkpoint" / "model.safetensors")
    wb = safetensors.torch.load_file(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_optimizer_state_round_trips(tmp_path):
    model = build_model("gpt", {"block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8}, vocab_size=10)
    opt = adamw(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
    model(torch.randint(10, (2, 8)), torch.randint(10, (2, 8)))[1].backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", model, opt, {"step": 1}, {"x": torch.arange(3)})
    fresh = build_model("gpt", {"block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8}, vocab_size=10)
    opt2 = adamw(fresh, 0.1, 1e-3, (0.9, 0.95), "cpu")
    meta, extra = load_training_state(tmp_path / "ck", fresh, opt2)
    assert meta["step"] == 1 and torch.equal(extra["x"], torch.arange(3))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid, st in s1["state"].items():
        for k, v in st.items():
            assert torch.equal(v, s2["state"][pid][k])
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "model.json", "model.safetensors", "state.json", "state.safetensors"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if ever unpickled


def test_loading_a_pickle_disguised_as_a_checkpoint_fails_without_running_it(tmp_path):
    model = build_model("bigram", "tiny", vocab_size=10)
    ck = save_checkpoint(tmp_path / "ck", model)
    marker = tmp_path / "pwned"
    (ck / "model.safetensors").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_model(ck)
    assert not marker.exists()


def test_no_training_module_calls_unsafe_loaders():
    import lmtrain

    for path in sorted(Path(lmtrain.__file__).parent.rglob("*.py")):
        text = path.read_text()
        assert "import pickle" not in text and "torch.load(" not in text, path
