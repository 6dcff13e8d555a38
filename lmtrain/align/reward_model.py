"""The reward model (the SFT GPT with a scalar head on the final token): scoring, saving, loading.

The reward stage trains it, PPO optimises against it and alignment evaluation's judge is one; the
three read it from here. Saved as a bundle (checkpoint + tokenizer/) plus `reward_head.safetensors`
and `reward.json`; no pickle anywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch as st
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.align.common import pad_batch
from lmtrain.models.bundle import TOKENIZER_DIR, load_gpt, save_bundle
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.gpt import GPT

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward.json"


class RewardModel(nn.Module):
    """GPT backbone + linear head reading the hidden state of each row's last real token."""

    def __init__(self, backbone: GPT) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(backbone.config.n_embd + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of right-padded rows idx (B, T) whose real lengths are `lengths`."""
        h = self.backbone.hidden_states(idx)
        last = h[torch.arange(idx.size(0), device=idx.device), lengths - 1]
        return self.head(last).squeeze(-1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean -log σ(r_chosen - r_rejected - margin)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return float((r_chosen > r_rejected).float().mean())


def score_ids(model: RewardModel, rows: Sequence[Sequence[int]], pad: int, batch_size: int = 32) -> torch.Tensor:
    """Scores of token rows (each cropped to the backbone's block, keeping its end), no gradient."""
    block = model.backbone.block_size
    rows = [list(r)[-block:] for r in rows]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            lengths = torch.tensor([len(r) for r in chunk], device=device)
            out.append(model(pad_batch(chunk, pad).to(device), lengths).float())
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0)


def save_reward_model(ckpt_dir: str | Path, model: RewardModel, tok_source, meta: dict) -> Path:
    """Backbone as a bundle, head as safetensors, metadata as JSON. `tok_source`: the tokenizer the model was
    trained with (saved into the bundle: a HF GPT-2 folder has no lmforge tokenizer/ to copy) or a bundle
    folder whose tokenizer/ is copied."""
    if isinstance(tok_source, str | Path):
        ckpt_dir = save_bundle(ckpt_dir, model.backbone, tok_source)
    else:
        ckpt_dir = Path(ckpt_dir)
        tok_source.save(save_checkpoint(ckpt_dir, model.backbone) / TOKENIZER_DIR)
    st.save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(ckpt_dir / HEAD_FILE))
    (ckpt_dir / META_FILE).write_text(json.dumps({"format": "lmforge-reward-v1", **meta}, indent=2))
    return ckpt_dir


def load_reward_model(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, object]:
    """(RewardModel in eval mode on `device`, tokenizer) saved by save_reward_model."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / HEAD_FILE).exists():
        raise FileNotFoundError(f"{ckpt_dir}: no {HEAD_FILE}; not a reward model checkpoint")
    backbone, tok = load_gpt(ckpt_dir)
    model = RewardModel(backbone)
    model.head.load_state_dict(st.load_file(str(ckpt_dir / HEAD_FILE)))
    return model.to(device).eval(), tok
