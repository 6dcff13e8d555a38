"""A self-contained model folder: a checkpoint (lmtrain.models.checkpoint) plus its tokenizer in
`tokenizer/`, so sampling, chat, serving, SFT, reward and PPO need only one path. `load_gpt` /
`save_bundle` are what the alignment stages and chat use."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from lmtrain.models.checkpoint import load_model, load_weights, save_checkpoint
from lmtrain.models.gpt import GPT
from lmtrain.models.registry import build_model
from lmtrain.tokenizer import load_tokenizer

TOKENIZER_DIR = "tokenizer"


def attach_tokenizer(ckpt_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """Copy a saved tokenizer folder into the checkpoint folder (replacing any earlier copy)."""
    dest = Path(ckpt_dir) / TOKENIZER_DIR
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tokenizer_dir, dest)


def load_bundle(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) from a checkpoint folder that carries its tokenizer."""
    ckpt_dir = Path(ckpt_dir)
    tok_dir = ckpt_dir / TOKENIZER_DIR
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no {TOKENIZER_DIR}/ folder; attach one with attach_tokenizer()")
    return load_model(ckpt_dir, device), load_tokenizer(tok_dir)


def load_gpt(ckpt_dir: str | Path, dropout: float | None = None,
             device: str | torch.device = "cpu") -> tuple[GPT, object]:
    """(GPT in train mode on `device`, tokenizer) from a bundle folder; rebuilt with `dropout` if given."""
    model, tok = load_bundle(ckpt_dir)
    if not isinstance(model, GPT):
        raise ValueError(f"{ckpt_dir}: alignment needs a GPT checkpoint, found {type(model).__name__}")
    if dropout is not None and dropout != model.config.dropout:
        model = build_model("gpt", {**asdict(model.config), "dropout": dropout})
        load_weights(model, ckpt_dir)
    return model.to(device).train(), tok


def save_bundle(out: str | Path, model: nn.Module, tok_source: str | Path, state: dict | None = None) -> Path:
    """Checkpoint `model` into `out` and copy the tokenizer of bundle `tok_source` beside it."""
    save_checkpoint(out, model, state=state)  # tensors are copied to the CPU
    attach_tokenizer(out, Path(tok_source) / "tokenizer")
    return Path(out)
