"""Models by name: build one from its kind and a named config (or a dict of fields), describe one so
a checkpoint can rebuild it."""

from __future__ import annotations

from dataclasses import asdict

import torch.nn as nn

from lmtrain.models.baselines import (
    BIGRAM_CONFIGS,
    MLP_CONFIGS,
    BigramConfig,
    BigramLanguageModel,
    MLPConfig,
    MLPLanguageModel,
)
from lmtrain.models.gpt import GPT, GPT_CONFIGS, GPTConfig

MODEL_KINDS = ("bigram", "mlp", "gpt")
_TABLES = {"gpt": (GPT_CONFIGS, GPTConfig, GPT),
           "mlp": (MLP_CONFIGS, MLPConfig, MLPLanguageModel),
           "bigram": (BIGRAM_CONFIGS, BigramConfig, BigramLanguageModel)}
_KIND_OF = {cls.__name__: kind for kind, (_, _, cls) in _TABLES.items()}


def config_fields(kind: str, config: str | dict) -> dict:
    """The config fields of a named config (or a copy of a dict of them)."""
    if kind not in _TABLES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    named = _TABLES[kind][0]
    if isinstance(config, str):
        if config not in named:
            raise ValueError(f"unknown {kind} config {config!r}; expected one of {sorted(named)}")
        return dict(named[config])
    return dict(config)


def build_model(kind: str, config: str | dict = "tiny", vocab_size: int | None = None,
                **overrides) -> nn.Module:
    """A model by kind ('bigram', 'mlp', 'gpt') and named config or a dict of config fields."""
    fields = config_fields(kind, config)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    fields.update(overrides)
    _, config_cls, model_cls = _TABLES[kind]
    return model_cls(config_cls(**fields))


def model_spec(model: nn.Module) -> dict:
    """{'kind', 'config'}: enough to rebuild the model with build_model (saved beside checkpoints)."""
    return {"kind": _KIND_OF[type(model).__name__], "config": asdict(model.config)}
