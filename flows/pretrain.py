"""Stage `pretrain`: the bigram, MLP+BatchNorm+dropout and GPT models, trained by the same loop on
the token shards and judged on the whole evaluation split (loss, bits per byte, multiple-choice).

    python -m flows.pretrain [--params params.yaml] [--only gpt]

Writes `models/pretrain/<model>/` (checkpoint, curves, loss.png), `metrics/pretrain.json`
keyed by model, DVC plot data in `plots/pretrain/`, and samples as a Prefect artifact.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows._artifacts import publish_image
from flows._stage import load_params, md_table
from flows._training import ui_progress, write_train_metrics
from lmdata.errors import ConfigError
from lmtrain.align.common import fenced
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.config import pretrain_configs
from lmtrain.data.shards import TokenShards
from lmtrain.inference.generate import sample_text
from lmtrain.models.bundle import attach_tokenizer, load_bundle
from lmtrain.models.init import check_shards, is_none
from lmtrain.pretrain.curves import render_loss_png
from lmtrain.pretrain.train import TrainConfig, train
from lmtrain.progress import rounded, split_timings

MODELS = ("bigram", "mlp", "gpt")


def train_configs(params: dict) -> dict[str, TrainConfig]:
    """One TrainConfig per model: `pretrain.common` overridden by `pretrain.<model>`, type-checked."""
    try:
        configs = pretrain_configs(params, TrainConfig, MODELS)
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e
    section = params.get("pretrain", {}) or {}
    for where in ("common", *(m for m in MODELS if m != "gpt")):
        if not is_none((section.get(where) or {}).get("init_from")):
            raise ConfigError(f"pretrain.{where}.init_from: only the GPT starts from a model you have; set "
                              "pretrain.gpt.init_from (the path dvc.yaml tracks as the pretrain stage's dependency)")
    return configs


def check_init(configs: dict[str, TrainConfig], train_dir: Path) -> None:
    """Before any model trains: each model to start from must match the token shards' tokenizer."""
    for name, cfg in configs.items():
        if not is_none(cfg.init_from):
            try:
                check_shards(cfg.init_from, TokenShards(train_dir), f"pretrain.{name}.init_from")
            except TrainConfigError as e:
                raise ConfigError(str(e)) from e


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(name: str, cfg: TrainConfig, train_dir: Path, eval_dir: Path, out: Path) -> dict:
    on_progress = ui_progress(f"pretrain-{name}-progress", f"pretraining {name}: {cfg.max_steps} steps")
    if out.exists() and not cfg.resume:
        shutil.rmtree(out)
    return train(cfg, train_dir, eval_dir, out, on_progress=on_progress)


def write_plots(names: list[str], root: Path, plots: Path) -> None:
    """One CSV per model and split for `dvc plots`, and a combined PNG of every model's val loss."""
    plots.mkdir(parents=True, exist_ok=True)
    series = {}
    for name in names:
        for split in ("train", "val"):
            src = root / name / "curves" / f"{split}.csv"
            if src.exists():
                shutil.copy(src, plots / f"{name}_{split}.csv")
                if split == "val":
                    with open(src) as f:
                        series[name] = [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f)]
    if series:
        render_loss_png(series, plots / "val_loss.png", title="validation loss by model")


@flow(name="pretrain", log_prints=True)
def pretrain(params: dict, only: list[str] | None = None) -> dict:
    configs = train_configs(params)
    section = params.get("pretrain", {})
    tokens = Path(section.get("tokens", "data/tokens"))
    root = Path(section.get("out", "models/pretrain"))
    tok_dir = Path(section.get("tokenizer", "models/tokenizer"))
    check_init({n: c for n, c in configs.items() if not only or n in only}, tokens / "train")
    results, timings = {}, {}
    for name, cfg in configs.items():
        if only and name not in only:
            continue
        m = train_model.with_options(task_run_name=f"train-{name}")(name, cfg, tokens / "train", tokens / "eval",
                                                                    root / name)
        attach_tokenizer(root / name / "checkpoint", tok_dir)
        results[name], timings[name] = split_timings({k: m[k] for k in REPORTED if k in m})
        print(f"pretrain {name}: eval bpb {m['eval_bpb']:.4f}, loss {m['eval_loss']:.4f}, "
              f"mc accuracy {rounded(m.get('mc_accuracy'), 3)}, {m['tokens_per_s']:,.0f} tok/s, {m['seconds']:.0f} s")
    write_train_metrics("pretrain", {n: {**results[n], **timings[n]} for n in results}, merge=bool(only))
    write_plots(list(configs), root, Path("plots/pretrain"))
    publish_report(results, timings, root, section)
    return results


# reported per model in metrics/pretrain.json; the timing ones go to metrics/timings/pretrain.json
REPORTED = ("eval_loss", "eval_bpb", "mc_accuracy", "params", "steps", "tokens", "train_loss", "tokens_per_s",
            "mfu", "matmul_utilisation", "seconds")


def publish_report(results: dict, timings: dict, root: Path, section: dict) -> None:
    """The report artifact (a table of this run's models, GPT samples as code blocks) and the
    validation loss curves of every model as an image artifact."""
    rows = [{"model": n, "params": r.get("params"), "eval loss": r.get("eval_loss"), "eval bpb": r.get("eval_bpb"),
             "mc accuracy": r.get("mc_accuracy"), "tok/s": round(timings[n].get("tokens_per_s") or 0),
             "seconds": round(timings[n].get("seconds") or 0)} for n, r in results.items()]
    samples = []
    if "gpt" in results:
        model, tok = load_bundle(root / "gpt" / "checkpoint")
        for i, prompt in enumerate(section.get("sample_prompts", ["ROMEO:\n"]), 1):
            text = sample_text(model, tok, prompt, max_new_tokens=int(section.get("sample_tokens", 120)), seed=0)
            samples += [f"**sample {i}** (prompt and continuation, seed 0):", "", fenced(prompt + text), ""]
    best = min(results, key=lambda n: results[n]["eval_bpb"]) if results else "-"
    create_markdown_artifact(key="pretrain-report", markdown="\n".join(
        ["# pretraining", "", md_table(rows), "", "## GPT samples", "", *samples]),
        description=f"pretraining: {len(results)} models on the evaluation split, best bpb {best}; "
                    "metrics in metrics/pretrain.json, timings in metrics/timings/pretrain.json")
    publish_image("pretrain-loss-curve", Path("plots/pretrain/val_loss.png"), "validation loss by model",
                  "pretraining: validation loss of every model against the optimizer step",
                  caption="Loss on fixed evaluation windows at each eval interval (nats per token).")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--only", nargs="*", choices=MODELS)
    args = ap.parse_args(argv)
    return pretrain(load_params(args.params), args.only)


if __name__ == "__main__":
    main()
