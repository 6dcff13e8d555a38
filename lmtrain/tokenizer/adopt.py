"""The tokenizer of a model to start from (`init_from`): an lmforge checkpoint's `tokenizer/` folder, or
a HuggingFace GPT-2 folder's vocab.json + merges.txt with the chat markers appended. No torch needed:
the tokenizer stage adopts it, lmtrain.models.init loads the model beside it.

DVC needs a path to track, even for "no model": `NO_INIT` (init/none, a folder holding only
`none.txt`) means start from scratch, as does null for library callers.
"""

from __future__ import annotations

from pathlib import Path

from lmtrain.config import ConfigError
from lmtrain.tokenizer.core import Tokenizer
from lmtrain.tokenizer.gpt2 import gpt2_tokenizer, is_gpt2_folder, with_chat_specials

NO_INIT = "init/none"
NONE_MARKER = "none.txt"


def is_none(init_from: str | Path | None) -> bool:
    """Whether `init_from` means "start from scratch": null, empty, or the init/none placeholder folder."""
    return init_from is None or str(init_from) == "" or (Path(init_from) / NONE_MARKER).is_file()


def model_format(init_from: str | Path, setting: str = "init_from") -> str:
    """'lmforge' (a checkpoint folder with model.json) or 'hf' (a GPT-2 folder with config.json)."""
    folder = Path(init_from)
    if not folder.is_dir():
        raise ConfigError(f"{setting}: {str(init_from)!r} is not a folder (an lmforge checkpoint or a HF GPT-2 "
                          f"folder; {NO_INIT} to start from scratch)")
    if (folder / "model.json").is_file():
        return "lmforge"
    if (folder / "config.json").is_file():
        return "hf"
    raise ConfigError(f"{setting}: {folder} holds neither model.json (an lmforge checkpoint) nor config.json "
                      "(a HuggingFace GPT-2 folder)")


def model_tokenizer(init_from: str | Path, setting: str = "init_from"):
    """The tokenizer that comes with the model at `init_from` (a GPT-2 one with the chat markers appended)."""
    folder = Path(init_from)
    if model_format(folder, setting) == "lmforge":
        if not (folder / "tokenizer").is_dir():
            raise ConfigError(f"{setting}: {folder} has no tokenizer/ folder; start from a checkpoint that carries "
                              "its tokenizer, such as models/pretrain/<model>/checkpoint")
        return Tokenizer.load(folder / "tokenizer")
    if not is_gpt2_folder(folder):
        raise ConfigError(f"{setting}: {folder} has no vocab.json + merges.txt: the model's tokenizer is unknown, "
                          "and a model only works with the tokenizer it was trained with")
    return with_chat_specials(gpt2_tokenizer(folder))
