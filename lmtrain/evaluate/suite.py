"""The evaluation suite: every model on bits per byte and every zero-shot task, and a CORE-style
aggregate (each task's accuracy centred on its chance level, averaged), as nanochat and DCLM report.

    centred = (accuracy - chance) / (1 - chance)     CORE = mean of the centred accuracies

A multiple-choice task enters the aggregate with `core_metric` (acc or acc_norm); a last-word task
with its exact-match accuracy (chance 0). Chat models (SFT, PPO, RLOO, DPO) are scored as language models
on the same text as the base models, without their chat template: the tasks are continuations of
prose, so every row of the table measures the same thing, and the gap to the GPT they started from
is what alignment cost (or bought) in plain language modelling.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmtrain.config import ConfigError, RunConfig
from lmtrain.data.shards import TokenShards, write_token_shard
from lmtrain.evaluate.derived import DerivedConfig, derived_tasks, eval_documents
from lmtrain.evaluate.scoring import score_task
from lmtrain.evaluate.tasks import LAST_WORD, MULTIPLE_CHOICE, TaskSpec, read_task, task_spec
from lmtrain.models.init import load_pretrained
from lmtrain.pretrain.evaluate import evaluate_loss
from lmtrain.runtime import Runtime

CORE_METRICS = ("acc", "acc_norm")
DERIVED_KINDS = {"heldout_continuation": MULTIPLE_CHOICE, "heldout_last_word": LAST_WORD}


@dataclass
class EvaluateConfig(RunConfig):
    """params.yaml `evaluate` section; defaults equal params.yaml's."""

    models: list = field(default_factory=lambda: [
        {"name": name, "path": path} for name, path in (
            ("bigram", "models/pretrain/bigram/checkpoint"), ("mlp", "models/pretrain/mlp/checkpoint"),
            ("gpt", "models/pretrain/gpt/checkpoint"), ("sft", "models/sft/checkpoint"),
            ("ppo", "models/ppo/checkpoint"), ("rloo", "models/rloo/checkpoint"),
            ("dpo", "models/dpo/checkpoint"))])  # {name, path}: a checkpoint
    # folder carrying its tokenizer or a HF GPT-2 folder; a list, not a mapping, so a profile can replace it whole
    eval_text: str = "data/evalset/corpus"  # the frozen evaluation set (derived tasks; bpb for other tokenizers)
    eval_tokens: str = "data/tokens/eval"  # its token shards: bits per byte where the tokenizer matches
    bpb: bool = True
    derived: dict = field(default_factory=lambda: {"items": 200, "context_words": 48, "continuation_words": 8,
                                                   "choices": 4})  # lmtrain.evaluate.derived.DerivedConfig
    tasks: list = field(default_factory=list)  # your own: {name, format, path[, delimiter]} (tasks.FORMATS)
    max_items: int = 500  # items read per task file (the first ones); 0 = all
    core_metric: str = "acc_norm"  # acc | acc_norm: a multiple-choice task's accuracy in the aggregate
    batch_size: int = 8  # rows per forward pass


def centred(acc: float, chance: float) -> float:
    """Accuracy rescaled so that chance is 0 and perfect is 1 (below chance is negative)."""
    return (acc - chance) / (1.0 - chance)


def core_score(results: dict[str, dict], metric: str = "acc_norm") -> float | None:
    """Mean centred accuracy over tasks; `metric` for multiple choice, `acc` where it has no acc_norm."""
    values = [centred(r[metric] if r.get(metric) is not None else r["acc"], r["chance"]) for r in results.values()]
    return float(np.mean(values)) if values else None


def derived_config(cfg: EvaluateConfig) -> DerivedConfig:
    unknown = sorted(set(cfg.derived) - set(DerivedConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"params evaluate.derived: unknown setting(s) {unknown}; "
                          f"known: {sorted(DerivedConfig.__dataclass_fields__)}")
    for key, value in cfg.derived.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (2 if key == "choices" else 0):
            raise ConfigError(f"params evaluate.derived.{key}: {value!r} is not a whole number"
                              f"{' of at least 2' if key == 'choices' else ''}")
    return DerivedConfig(**cfg.derived)


def check_config(cfg: EvaluateConfig) -> list[TaskSpec]:
    """Everything that can be wrong before any work: models, settings, task entries and files."""
    if not cfg.models:
        raise ConfigError("params evaluate.models: empty; list at least one {name, path} of a checkpoint")
    for i, entry in enumerate(cfg.models):
        where = f"params evaluate.models[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "path"} or not all(
                isinstance(v, str) and v for v in entry.values()):
            raise ConfigError(f"{where}: expected {{name, path}} (two non-empty strings), got {entry!r}")
        hf = (Path(entry["path"]) / "config.json").is_file() and not (Path(entry["path"]) / "model.json").is_file()
        for needed in (("config.json", "model.safetensors", "vocab.json", "merges.txt") if hf else
                       ("model.json", "model.safetensors", "tokenizer/tokenizer.json")):
            if not (Path(entry["path"]) / needed).is_file():
                raise ConfigError(f"{where} ({entry['name']}): {entry['path']} is not a checkpoint folder (no {needed}); "
                                  "run the stage that trains it, or remove the entry")
    names = [m["name"] for m in cfg.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"params evaluate.models: a name is used twice in {names}")
    if cfg.core_metric not in CORE_METRICS:
        raise ConfigError(f"params evaluate.core_metric: {cfg.core_metric!r} is not one of {list(CORE_METRICS)}")
    if cfg.max_items < 0 or cfg.batch_size < 1:
        raise ConfigError("params evaluate: max_items must be >= 0 and batch_size >= 1")
    derived_config(cfg)
    specs = [task_spec(entry, f"evaluate.tasks[{i}]") for i, entry in enumerate(cfg.tasks)]
    names = [s.name for s in specs]
    clash = sorted({n for n in names if names.count(n) > 1 or n in DERIVED_KINDS})
    if clash:
        raise ConfigError(f"params evaluate.tasks: name(s) {clash} used twice (or by a derived task)")
    return specs


def load_tasks(cfg: EvaluateConfig, specs: list[TaskSpec]) -> dict[str, dict]:
    """{name: {'kind', 'items'}}: the derived tasks, then every listed task file (read and checked)."""
    if not Path(cfg.eval_text).is_dir():
        raise ConfigError(f"params evaluate.eval_text: {cfg.eval_text} is not a folder of evaluation documents")
    tasks = {name: {"kind": DERIVED_KINDS[name], "items": items}
             for name, items in derived_tasks(cfg.eval_text, derived_config(cfg), cfg.seed).items() if items}
    for spec in specs:
        tasks[spec.name] = {"kind": spec.kind, "items": read_task(spec, cfg.max_items), "format": spec.format}
    return tasks


def bits_per_byte(model, tok, cfg: EvaluateConfig, rt: Runtime) -> dict:
    """Loss and bits per byte over the whole evaluation set: on its token shards when the model shares
    their tokenizer, else on the same documents encoded with the model's own tokenizer."""
    shards = TokenShards(cfg.eval_tokens) if Path(cfg.eval_tokens).is_dir() else None
    if shards is not None and shards.tokenizer_hash == getattr(tok, "hash", None):
        return {**evaluate_loss(model, shards, cfg.batch_size, autocast_dtype=rt.dtype), "bpb_tokens": "shards"}
    with tempfile.TemporaryDirectory() as tmp:
        write_token_shard([d["text"] for d in eval_documents(cfg.eval_text)], tok, Path(tmp) / "eval.bin")
        result = evaluate_loss(model, TokenShards(tmp), cfg.batch_size, autocast_dtype=rt.dtype)
    return {**result, "bpb_tokens": "re-encoded"}


def evaluate_model(checkpoint: str | Path, tasks: dict[str, dict], cfg: EvaluateConfig, rt: Runtime) -> dict:
    """One model on the suite: bpb, then {task: {acc, acc_norm, n, chance}}, and its CORE-style score."""
    model, tok = load_pretrained(checkpoint, rt.device)
    out: dict = {"params": sum(p.numel() for p in model.parameters())}
    if cfg.bpb:
        ev = bits_per_byte(model, tok, cfg, rt)
        out.update(eval_bpb=ev["eval_bpb"], eval_loss=ev["eval_loss"], bpb_tokens=ev["bpb_tokens"])
    out["tasks"] = {name: score_task(model, tok, t["items"], t["kind"], cfg.batch_size, rt.autocast)
                    for name, t in tasks.items()}
    out["core"] = core_score(out["tasks"], cfg.core_metric)
    return out
