"""Stage `evaluate`: every model the DAG produced (params `evaluate.models`) on the evaluation suite —
bits per byte on the frozen evaluation set, zero-shot tasks scored by log-likelihood (the tasks
derived from the evaluation set, and any task files listed in `evaluate.tasks`), and a CORE-style
aggregate. Logic in lmtrain.evaluate.

    python -m flows.evaluate [--params params.yaml]

Writes `metrics/evaluate.json` (per model: bpb, per task acc / acc_norm / n / chance, core),
`models/evaluate/` (tasks/<name>.jsonl: the items scored, in one shape; report.md), the DVC plot
`plots/evaluate/core.csv`, `plots/evaluate/scores.png`, and Prefect artifacts (the table, the plot).
The models' deps come from the `evaluate-models@<i>` stages (DVC cannot template a list into deps):
each fingerprints one checkpoint into data/sources/evaluate/, which this stage depends on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows._artifacts import publish_image
from flows._stage import load_params, md_table, staged
from flows._training import write_train_metrics
from lmdata.errors import ConfigError
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.config import build_config
from lmtrain.evaluate.report import render_scores_png, score_rows
from lmtrain.evaluate.suite import EvaluateConfig, check_config, evaluate_model, load_tasks
from lmtrain.evaluate.tasks import read_items, write_items
from lmtrain.runtime import setup

OUT = Path("models/evaluate")
PLOTS = Path("plots/evaluate")


def prepare(params: dict) -> tuple[EvaluateConfig, dict[str, dict]]:
    """The `evaluate` section type-checked, models and settings checked, every task built or read and
    checked row by row: what can be wrong fails here, before any model loads."""
    try:
        cfg = build_config(EvaluateConfig, params.get("evaluate"), "evaluate")
        return cfg, load_tasks(cfg, check_config(cfg))
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e


@task(name="evaluate-model", cache_policy=NO_CACHE)
def score_model(name: str, checkpoint: str, tasks_dir: Path, cfg: EvaluateConfig) -> dict:
    """One model on every task (read back from tasks_dir: the task receives paths, not items)."""
    t0 = time.perf_counter()
    index = json.loads((tasks_dir / "tasks.json").read_text())
    tasks = {t: {"kind": meta["kind"], "items": read_items(tasks_dir / f"{t}.jsonl")} for t, meta in index.items()}
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    result = evaluate_model(checkpoint, tasks, cfg, rt)
    result["seconds"] = time.perf_counter() - t0
    shown = ", ".join(f"{t} {r['acc']:.3f}" + (f"/{r['acc_norm']:.3f}" if r["acc_norm"] is not None else "")
                      for t, r in result["tasks"].items())
    bpb = f"bpb {result['eval_bpb']:.4f}, " if "eval_bpb" in result else ""
    print(f"evaluate {name}: {bpb}{shown}, core {result['core']:.3f}, {result['seconds']:.0f} s")
    return result


@flow(name="evaluate", log_prints=True)
def evaluate(params: dict) -> dict:
    cfg, tasks = prepare(params)
    with staged(OUT) as tmp:
        for name, t in tasks.items():
            write_items(t["items"], tmp / "tasks" / f"{name}.jsonl")
        index = {name: {"kind": t["kind"], "format": t.get("format", "derived"), "n": len(t["items"])}
                 for name, t in tasks.items()}
        (tmp / "tasks" / "tasks.json").write_text(json.dumps(index, indent=2) + "\n")
        results = {m["name"]: score_model.with_options(task_run_name=f"evaluate-{m['name']}")(
            m["name"], m["path"], tmp / "tasks", cfg) for m in cfg.models}
        rows = score_rows(results, index, cfg.core_metric)
        (tmp / "report.md").write_text(report_markdown(rows, index, cfg))
    metrics = {"core_metric": cfg.core_metric, "tasks": index, "models": results}
    write_train_metrics("evaluate", metrics)
    write_plots(results, index, cfg)
    create_markdown_artifact(key="evaluate-report", markdown=(OUT / "report.md").read_text(),
                             description=f"evaluation suite: {len(results)} models x {len(index)} tasks "
                                         f"(metrics/evaluate.json; items in {OUT}/tasks)")
    publish_image("evaluate-scores", PLOTS / "scores.png", "evaluation suite: every model's scores",
                  f"evaluation suite: centred accuracy per task and CORE for {len(results)} models, and bits per byte",
                  caption="Centred accuracy = (acc − chance)/(1 − chance): 0 is chance, 1 is perfect. "
                          f"Multiple choice by {cfg.core_metric}.")
    return metrics


def report_markdown(rows: list[dict], index: dict, cfg: EvaluateConfig) -> str:
    """The table artifact: one row per model (bpb, each task's acc / acc_norm, CORE), then the tasks."""
    tasks = [{"task": n, "kind": m["kind"], "from": m["format"], "items": m["n"]} for n, m in index.items()]
    return "\n".join([
        "# evaluation suite", "", md_table(rows), "",
        f"acc: the choice with the highest log-likelihood; acc_norm: per UTF-8 byte of the choice (lm-eval-harness). "
        f"Last-word tasks: greedy exact match. CORE: mean over tasks of (accuracy − chance)/(1 − chance), "
        f"multiple choice by {cfg.core_metric}. Chat models are scored as language models on the same text.",
        "", "## tasks", "", md_table(tasks), ""])


def write_plots(results: dict, index: dict, cfg: EvaluateConfig) -> None:
    """plots/evaluate/core.csv (DVC plot: CORE and bpb per model) and scores.png (every task, side by side)."""
    PLOTS.mkdir(parents=True, exist_ok=True)
    lines = ["model,core,eval_bpb"] + [f"{n},{r['core']:.6f},{r.get('eval_bpb', float('nan')):.6f}"
                                       for n, r in results.items()]
    (PLOTS / "core.csv").write_text("\n".join(lines) + "\n")
    render_scores_png(results, cfg.core_metric, PLOTS / "scores.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    try:
        prepare(params)  # outside Prefect: a config mistake is one line, before any work
    except ConfigError as e:
        raise SystemExit(f"evaluate: {e}") from None
    return evaluate(params)


if __name__ == "__main__":
    main()
