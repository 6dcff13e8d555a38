"""A self-contained model folder: a checkpoint (lmtrain.checkpoint) plus its tokenizer in
`tokenizer/`, so sampling, chat, serving, SFT, reward and PPO need only one path."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn

from lmtrain.checkpoint import load_model
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
