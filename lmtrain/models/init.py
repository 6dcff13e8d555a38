"""`init_from`: start training from a model you already have instead of from random weights.

A model to start from is either an lmforge checkpoint that carries its tokenizer (a bundle such as
`models/pretrain/gpt/checkpoint`: model.json + model.safetensors + tokenizer/) or a local HuggingFace
GPT-2 folder (config.json + model.safetensors, and vocab.json + merges.txt for its tokenizer). The
model always comes with its own tokenizer: the tokenizer stage adopts it (`tokenizer.init_from`) so
pretokenize re-encodes the corpus with it, and a model whose vocabulary differs from the token
shards' is refused before any work (`check_shards`).

A GPT-2 vocabulary lacks the chat template's special tokens; they are appended to the tokenizer
(lmtrain.tokenizer.gpt2.with_chat_specials) and the model gets one new embedding row each, set to
the mean of the existing rows (so their logits start at an average token's, not at noise).

The tokenizer side (which folder means "none", the tokenizer of a model folder) is
lmtrain.tokenizer.adopt, so the tokenizer stage needs no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from lmtrain.config import ConfigError
from lmtrain.models.checkpoint import load_model
from lmtrain.models.gpt import GPT, GPTConfig
from lmtrain.models.hf import import_hf
from lmtrain.models.registry import build_model, model_spec
from lmtrain.tokenizer.adopt import NO_INIT, is_none, model_format, model_tokenizer
from lmtrain.tokenizer.gpt2 import gpt2_tokenizer, is_gpt2_folder

__all__ = ["NO_INIT", "check_shards", "check_vocab", "grow_vocab", "init_spec", "is_none", "load_init",
           "load_pretrained"]


def init_spec(init_from: str | Path, setting: str = "init_from") -> dict:
    """{'kind', 'vocab_size'} of the model at `init_from`, read from its config (no weights loaded)."""
    folder = Path(init_from)
    if model_format(folder, setting) == "lmforge":
        spec = json.loads((folder / "model.json").read_text())
        return {"kind": spec["kind"], "vocab_size": int(spec["config"]["vocab_size"])}
    return {"kind": "gpt", "vocab_size": int(json.loads((folder / "config.json").read_text())["vocab_size"])}


def check_vocab(init_from: str | Path, tok, setting: str = "init_from") -> None:
    """Refuse a model whose vocabulary the tokenizer's does not extend by special tokens only."""
    n_model = init_spec(init_from, setting)["vocab_size"]
    extra = range(n_model, tok.vocab_size)
    if n_model > tok.vocab_size or any(i not in tok.special_tokens.values() for i in extra):
        raise ConfigError(f"{setting}: the model at {init_from} has a vocabulary of {n_model} but its tokenizer "
                          f"has {tok.vocab_size}; they must match (up to appended special tokens)")


def check_shards(init_from: str | Path, shards, setting: str = "init_from", tokenizer_setting: str =
                 "tokenizer.init_from") -> None:
    """Fail before any work unless the token shards were encoded with the tokenizer of `init_from`."""
    tok = model_tokenizer(init_from, setting)
    check_vocab(init_from, tok, setting)
    if tok.vocab_size != shards.vocab_size or tok.hash != shards.tokenizer_hash:
        same = "the same size but another tokenizer" if tok.vocab_size == shards.vocab_size else "another size"
        raise ConfigError(
            f"{setting}: the model at {init_from} has a vocabulary of {tok.vocab_size} (tokenizer "
            f"{tok.hash[:12]}) but the token shards in {shards.folder} have {shards.vocab_size} (tokenizer "
            f"{shards.tokenizer_hash[:12]}): {same}. Set {tokenizer_setting}: {init_from} so that pretokenize "
            f"re-encodes the corpus with the model's tokenizer, or start from a model trained with this one")


def grow_vocab(model: nn.Module, vocab_size: int) -> GPT:
    """A GPT with `vocab_size` rows: the old rows kept, each new one set to the mean of the old ones."""
    if not isinstance(model, GPT):
        raise ConfigError(f"only a GPT's vocabulary can grow, not a {type(model).__name__}'s")
    old = model.config.vocab_size
    if vocab_size == old:
        return model
    grown = GPT(GPTConfig(**{**asdict(model.config), "vocab_size": vocab_size}))
    sd = model.state_dict()
    wte = sd.pop("transformer.wte.weight")[:old]
    sd.pop("lm_head.weight", None)  # tied to wte
    missing, unexpected = grown.load_state_dict(sd, strict=False)
    if set(missing) - {"transformer.wte.weight", "lm_head.weight"} or unexpected:
        raise ValueError(f"growing the vocabulary: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        rows = grown.transformer.wte.weight
        rows[:old] = wte
        rows[old:] = wte.mean(0)
    return grown


def load_init(init_from: str | Path, kind: str | None = None, dropout: float | None = None,
              setting: str = "init_from") -> tuple[nn.Module, object]:
    """(model in train mode on the CPU, its tokenizer) from `init_from`; `kind` the model kind expected,
    `dropout` rebuilds a GPT or MLP with that dropout."""
    folder = Path(init_from)
    tok = model_tokenizer(folder, setting)
    check_vocab(folder, tok, setting)
    spec = init_spec(folder, setting)
    if kind is not None and spec["kind"] != kind:
        raise ConfigError(f"{setting}: {folder} holds a {spec['kind']} model, not a {kind}")
    model = load_model(folder) if model_format(folder, setting) == "lmforge" else import_hf(folder)[0]
    model = grow_vocab(model, tok.vocab_size) if tok.vocab_size != spec["vocab_size"] else model
    if dropout is not None and spec["kind"] != "bigram" and dropout != model.config.dropout:
        rebuilt = build_model(spec["kind"], {**model_spec(model)["config"], "dropout": dropout})
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model.train(), tok


def load_pretrained(path: str | Path, device: str | torch.device = "cpu",
                    setting: str = "path") -> tuple[nn.Module, object]:
    """(model in eval mode on `device`, tokenizer) to score as it is: an lmforge checkpoint with its
    tokenizer, or a HF GPT-2 folder with its own vocabulary (no chat markers appended: an extra row would
    take probability from the real tokens)."""
    folder = Path(path)
    if model_format(folder, setting) == "lmforge":
        return load_model(folder, device).eval(), model_tokenizer(folder, setting)
    if not is_gpt2_folder(folder):
        raise ConfigError(f"{setting}: {folder} has no vocab.json + merges.txt: the model's tokenizer is unknown")
    model, tok = import_hf(folder)[0], gpt2_tokenizer(folder)
    check_vocab(folder, tok, setting)
    return model.to(device).eval(), tok
