"""Expected user mistakes, checked before any work, and the one line the CLI prints for any error."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINT_FILES = ("model.json", "model.safetensors", "tokenizer/tokenizer.json")


class UsageError(Exception):
    """An expected mistake (a wrong path, an empty value): one line on stderr and exit code 2,
    no traceback (`--debug` shows it)."""


def checkpoint_spec(path: str, command: str, gpt_only: bool = False) -> dict:
    """The checkpoint's model.json ({"kind", "config"}), after checking that `path` holds every file
    a checkpoint has, before anything loads it."""
    folder = Path(path)
    if not folder.exists():
        problem = "no such folder"
    elif not folder.is_dir():
        problem = "not a folder"
    else:
        missing = [f for f in CHECKPOINT_FILES if not (folder / f).is_file()]
        problem = f"not a checkpoint folder (no {', '.join(missing)})" if missing else ""
    if problem:
        nested = folder / "checkpoint"
        hint = (f"did you mean {nested}?" if (nested / "model.json").is_file() else
                "pass a folder that training wrote (model.json, model.safetensors, tokenizer/), e.g. "
                "models/pretrain/gpt/checkpoint; `make run` trains them")
        raise UsageError(f"--checkpoint {path}: {problem}; {hint}")
    try:
        spec = json.loads((folder / "model.json").read_text())
        kind, block_size = spec["kind"], int(spec["config"]["block_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--checkpoint {path}: model.json is unreadable ({type(e).__name__}: {e}); "
                         "the folder is damaged: retrain it (dvc repro) or pass another") from e
    if gpt_only and kind != "gpt":
        raise UsageError(f"--checkpoint {path}: a {kind} model; `lmforge {command}` needs a GPT checkpoint "
                         "(models/pretrain/gpt/checkpoint, or models/sft|ppo|dpo/checkpoint for chat)")
    return {**spec, "block_size": block_size}


def error_line(e: BaseException) -> str:
    """One line for an error: a UsageError as it is; anything else with its type and a pointer to --debug."""
    if isinstance(e, UsageError):
        return str(e)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip().strip("^")]
    text = " | ".join(lines) or type(e).__name__
    text = text if len(text) <= 400 else text[:399] + "…"
    if type(e).__module__.split(".")[0].lstrip("_") == "duckdb":
        return f"SQL error: {text} (`lmforge query` without SQL lists the views; --debug for the traceback)"
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or type(e).__name__}: {e.filename} (--debug for the traceback)"
    return f"{type(e).__name__}: {text} (--debug for the traceback)"
