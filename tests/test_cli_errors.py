"""A user's ordinary mistakes give one clear line on stderr and a non-zero exit, never a traceback
(which `--debug` shows); chat's default reply length fits the model it loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows._errors import UsageError
from flows.cli import main
from tests.conftest import ROOT, python_env


def fake_checkpoint(folder, kind: str = "gpt", block_size: int = 128):
    """The files a checkpoint folder has (checks run before anything loads the weights)."""
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"kind": kind, "config": {"block_size": block_size}}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_line(rc: int, err: str) -> str:
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_checkpoint_names_the_path_not_the_tokenizer(capsys, tmp_path):
    line = assert_one_line(*run_cli(capsys, "sample", "--checkpoint", str(tmp_path / "nope")))
    assert str(tmp_path / "nope") in line and "no such folder" in line
    assert "tokenizer" not in line.split(";")[0]


def test_model_folder_instead_of_its_checkpoint_suggests_the_right_one(capsys, tmp_path):
    fake_checkpoint(tmp_path / "gpt" / "checkpoint")
    line = assert_one_line(*run_cli(capsys, "sample", "--checkpoint", str(tmp_path / "gpt")))
    assert f"did you mean {tmp_path / 'gpt' / 'checkpoint'}" in line


def test_checkpoint_missing_its_weights_is_named(capsys, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    line = assert_one_line(*run_cli(capsys, "evaluate", "--checkpoint", str(ckpt), "--hellaswag", __file__))
    assert "model.safetensors" in line


def test_empty_prompt(capsys, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    line = assert_one_line(*run_cli(capsys, "sample", "--checkpoint", str(ckpt), "--prompt", ""))
    assert "--prompt is empty" in line


def test_missing_hellaswag_file(capsys, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ckpt")
    line = assert_one_line(*run_cli(capsys, "evaluate", "--checkpoint", str(ckpt), "--hellaswag",
                                    str(tmp_path / "hellaswag_val.jsonl")))
    assert str(tmp_path / "hellaswag_val.jsonl") in line and "no such file" in line


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_serve_and_chat_refuse_a_bigram_checkpoint(capsys, tmp_path, command):
    ckpt = fake_checkpoint(tmp_path / "bigram", kind="bigram")
    line = assert_one_line(*run_cli(capsys, command, "--checkpoint", str(ckpt)))
    assert "a bigram model" in line and "needs a GPT checkpoint" in line


def test_chat_reply_longer_than_the_context_is_refused(capsys, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ckpt", block_size=64)
    line = assert_one_line(*run_cli(capsys, "chat", "--checkpoint", str(ckpt), "--max-tokens", "64"))
    assert "1 to 63 tokens" in line and "default is 32" in line


def test_sql_typo_in_query(capsys, tmp_path):
    line = assert_one_line(*run_cli(capsys, "query", "--data", str(tmp_path), "SELEC 1"))
    assert line.startswith("lmforge query:") and "syntax error" in line and "SELEC" in line


def test_missing_profile(capsys, tmp_path):
    line = assert_one_line(*run_cli(capsys, "run", "--profile", str(tmp_path / "gpu.yaml")))
    assert "no such file" in line


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UsageError):
        main(["--debug", "sample", "--checkpoint", str(tmp_path / "nope")])


def test_chat_starts_with_defaults_on_a_model_of_context_128(tmp_path):
    """The README's `lmforge chat` crashed: its default reply length equalled the model's context."""
    import torch

    from lmtrain.models.bundle import attach_tokenizer
    from lmtrain.models.checkpoint import save_checkpoint
    from lmtrain.models.registry import build_model
    from lmtrain.tokenizer import train_bpe

    tok = train_bpe(["to be or not to be, that is the question\n"] * 20, vocab_size=300)
    tok.save(tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model("gpt", dict(n_layer=1, n_head=2, n_embd=16, block_size=128, dropout=0.0),
                        vocab_size=tok.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model)
    attach_tokenizer(tmp_path / "ckpt", tmp_path / "tok")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "chat", "--checkpoint", str(tmp_path / "ckpt")],
                         input="to be\n/exit\n", capture_output=True, text=True, cwd=ROOT, env=python_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("you> ") == 2 and "bot> " in out.stdout
