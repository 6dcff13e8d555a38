"""Stage `pretrain`: the bigram, MLP+BatchNorm+dropout and GPT models, trained by the same loop on
the token shards and judged on the whole evaluation split (loss, bits per byte, multiple-choice).

    python -m flows.pretrain [--params params.yaml] [--only gpt]

Writes `models/pretrain/<model>/` (checkpoint, curves, loss.png), `metrics/pretrain.json`
keyed by model, DVC plot data in `plots/pretrain/`, and samples as a Prefect artifact.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows._stage import load_params
from lmdata.atomic import write_json
from lmdata.errors import ConfigError
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.config import pretrain_configs
from lmtrain.inference.generate import sample_text
from lmtrain.models.bundle import attach_tokenizer, load_bundle
from lmtrain.pretrain.curves import render_loss_png
from lmtrain.pretrain.train import TrainConfig, train

MODELS = ("bigram", "mlp", "gpt")


def train_configs(params: dict) -> dict[str, TrainConfig]:
    """One TrainConfig per model: `pretrain.common` overridden by `pretrain.<model>`, type-checked."""
    try:
        return pretrain_configs(params, TrainConfig, MODELS)
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(name: str, cfg: TrainConfig, train_dir: Path, eval_dir: Path, out: Path) -> dict:
    artifact = create_progress_artifact(progress=0.0, key=f"pretrain-{name}-progress",
                                        description=f"pretraining {name}")

    def on_progress(p: dict) -> None:
        if "step" in p and cfg.max_steps:
            update_progress_artifact(artifact, progress=100.0 * p["step"] / cfg.max_steps)

    if out.exists() and not cfg.resume:
        shutil.rmtree(out)
    metrics = train(cfg, train_dir, eval_dir, out, on_progress=on_progress)
    update_progress_artifact(artifact, progress=100.0)
    return metrics


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
    metrics_path = Path("metrics/pretrain.json")
    results = json.loads(metrics_path.read_text()) if only and metrics_path.exists() else {}
    for name, cfg in configs.items():
        if only and name not in only:
            continue
        m = train_model.with_options(task_run_name=f"train-{name}")(name, cfg, tokens / "train", tokens / "eval",
                                                                    root / name)
        attach_tokenizer(root / name / "checkpoint", tok_dir)
        results[name] = {k: m[k] for k in ("eval_loss", "eval_bpb", "mc_accuracy", "tokens_per_s", "mfu",
                                           "matmul_utilisation", "params", "steps", "tokens", "seconds",
                                           "train_loss") if k in m}
        print(f"pretrain {name}: eval bpb {m['eval_bpb']:.4f}, loss {m['eval_loss']:.4f}, "
              f"mc {m.get('mc_accuracy')}, {m['tokens_per_s']:.0f} tok/s")
    write_json(metrics_path, results)
    write_plots(list(configs), root, Path("plots/pretrain"))
    table = ["| model | params | eval loss | eval bpb | mc acc | tok/s |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {r.get('params', 0):,} | {r['eval_loss']:.4f} | {r['eval_bpb']:.4f} | "
              f"{r.get('mc_accuracy') or 0:.3f} | {r['tokens_per_s']:.0f} |" for n, r in results.items()]
    samples = []
    if "gpt" in results:
        model, tok = load_bundle(root / "gpt" / "checkpoint")
        for prompt in section.get("sample_prompts", ["ROMEO:\n"]):
            text = sample_text(model, tok, prompt, max_new_tokens=int(section.get("sample_tokens", 120)), seed=0)
            samples.append(f"**{prompt!r}**\n\n```\n{prompt}{text}\n```")
    create_markdown_artifact(key="pretrain-report", markdown="\n".join(
        ["# pretraining", "", *table, "", "## GPT samples", "", *samples]))
    return results


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--only", nargs="*", choices=MODELS)
    args = ap.parse_args(argv)
    return pretrain(load_params(args.params), args.only)


if __name__ == "__main__":
    main()
