"""Baseline language models with the GPT's interface: a bigram table and a makemore-style MLP.

Both take idx (B, T) and return (logits (B, T, vocab), loss or None) and expose `block_size` (the
window the training loop feeds them), so one training loop and one generator serve all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class BigramConfig:
    vocab_size: int = 256
    block_size: int = 128  # training window only; the model itself looks at one token


BIGRAM_CONFIGS: dict[str, dict] = {"tiny": dict(block_size=128)}


@dataclass
class MLPConfig:
    vocab_size: int = 256
    block_size: int = 128  # training window; each position still sees only `context` tokens
    context: int = 8  # tokens of history per prediction (Bengio et al. 2003; makemore part 2)
    n_embd: int = 48  # embedding width per context token
    n_hidden: int = 512
    dropout: float = 0.1


# n_hidden 256 matches the tiny GPT's parameter count (1.35M vs 1.33M at vocab 4096): a fair baseline.
MLP_CONFIGS: dict[str, dict] = {"tiny": dict(block_size=128, context=8, n_embd=48, n_hidden=256, dropout=0.1)}


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    if targets is None:
        return None
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


class _Baseline:
    """What the training loop and the generator read from every model."""

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())


class BigramLanguageModel(_Baseline, nn.Module):
    """Next token from the current token alone: a vocab x vocab table of logits."""

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.token_logits = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.token_logits.weight)  # start from the uniform distribution

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.token_logits(idx)
        return logits, _cross_entropy(logits, targets)


class MLPLanguageModel(_Baseline, nn.Module):
    """Concatenated embeddings of the last `context` tokens -> Linear -> BatchNorm -> tanh -> dropout -> logits.

    Positions before the start of the window see a dedicated padding token (id vocab_size).
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # +1: the padding token
        # no bias before BatchNorm: the norm's own shift makes it redundant (makemore part 3)
        self.hidden = nn.Linear(config.context * config.n_embd, config.n_hidden, bias=False)
        self.bn = nn.BatchNorm1d(config.n_hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)
        nn.init.normal_(self.wte.weight, std=1.0)
        # Kaiming-style gain for tanh so activations start unsaturated; a small output layer so the
        # initial loss is close to ln(vocab) (makemore part 3's "fixing the initial loss")
        nn.init.normal_(self.hidden.weight, std=(5 / 3) / (config.context * config.n_embd) ** 0.5)
        nn.init.normal_(self.lm_head.weight, std=0.01)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.size()
        k = self.config.context
        padded = F.pad(idx, (k - 1, 0), value=self.config.vocab_size)
        windows = padded.unfold(1, k, 1)  # (B, T, k): the k tokens ending at each position
        x = self.wte(windows).view(B * T, k * self.config.n_embd)
        x = self.dropout(torch.tanh(self.bn(self.hidden(x))))
        logits = self.lm_head(x).view(B, T, -1)
        return logits, _cross_entropy(logits, targets)
