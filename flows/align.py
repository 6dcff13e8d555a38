"""Stages `sft`, `reward`, `ppo`, `dpo` and `align_eval`: the InstructGPT chain on the balanced
instruction and comparison data. One Prefect flow per DVC stage; logic in lmtrain.

    python -m flows.align sft|reward|ppo|dpo|evaluate [--params params.yaml]

The reward stage trains two models on disjoint halves of the comparisons: `reward` (optimised by
PPO) and `judge` (another seed; used only to grade policies in `align_eval`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows._stage import load_params
from lmdata.atomic import write_json
from lmdata.errors import ConfigError
from lmtrain.align.dpo import DPOConfig, train_dpo
from lmtrain.align.evaluate import AlignEvalConfig, evaluate_alignment
from lmtrain.align.ppo import PPOConfig, train_ppo
from lmtrain.align.reward import RewardConfig, train_judge, train_reward
from lmtrain.align.sft import SFTConfig, train_sft
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.config import build_config
from lmtrain.progress import rounded

INSTRUCTIONS = Path("data/balance/instructions")
COMPARISONS = Path("data/balance/comparisons")
EVAL_INSTRUCTIONS = Path("data/evalset/instructions")  # held-out rows: the frozen evaluation set
EVAL_COMPARISONS = Path("data/evalset/comparisons")
OUT = Path("models")


def config(cls, params: dict, section: str):
    """A config dataclass from `params[section]`, type-checked; unknown keys fail before any work."""
    try:
        return build_config(cls, params.get(section), section)
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e


def progress(key: str, total: int | None):
    """An on_progress callback that moves a Prefect progress artifact."""
    artifact = create_progress_artifact(progress=0.0, key=key, description=key)

    def update(p: dict) -> None:
        step, n = p.get("step"), p.get("max_steps") or total
        if step is not None and n:
            update_progress_artifact(artifact, progress=min(100.0, 100.0 * step / n))

    return update


def scalars(m: dict) -> dict:
    """The JSON-friendly scalar metrics (lists such as samples go to artifacts instead)."""
    return {k: v for k, v in m.items() if isinstance(v, int | float | str | bool) or v is None}


@flow(name="sft", log_prints=True)
def sft(params: dict) -> dict:
    cfg = config(SFTConfig, params, "sft")
    m = train_sft(cfg, OUT / "pretrain/gpt/checkpoint", INSTRUCTIONS, EVAL_INSTRUCTIONS, OUT / "sft",
                  on_progress=progress("sft-progress", None))
    write_json("metrics/sft.json", scalars(m))
    samples = OUT / "sft" / "samples.md"
    if samples.exists():
        create_markdown_artifact(key="sft-samples", markdown=samples.read_text())
    print(f"sft: held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f}")
    return m


@flow(name="reward", log_prints=True)
def reward(params: dict) -> dict:
    cfg = config(RewardConfig, params, "reward")
    rm = train_reward(cfg, OUT / "sft/checkpoint", COMPARISONS, EVAL_COMPARISONS, OUT / "reward",
                      on_progress=progress("reward-progress", None))
    judge = train_judge(cfg, OUT / "sft/checkpoint", COMPARISONS, EVAL_COMPARISONS, OUT / "judge",
                        on_progress=progress("judge-progress", None))
    by_source = ("accuracy_by_source", "pairs_by_source")
    metrics = {**scalars(rm), **{k: rm.get(k) for k in by_source}, "calibration": rm.get("calibration"),
               "judge": {**scalars(judge), **{k: judge.get(k) for k in by_source}}}
    write_json("metrics/reward.json", metrics)
    rows = ["| | accuracy | length-matched accuracy | mean margin |", "|---|---:|---:|---:|"]
    for name, m in (("reward", rm), ("judge", judge)):
        rows.append(f"| {name} | {m['accuracy']:.3f} | {m.get('length_matched_accuracy')} | "
                    f"{m.get('mean_margin', 0):.3f} |")
    for name, m in (("reward", rm), ("judge", judge)):
        for source, acc in (m.get("accuracy_by_source") or {}).items():
            rows.append(f"| {name}: {source} ({m['pairs_by_source'][source]} pairs) | {acc:.3f} | | |")
    create_markdown_artifact(key="reward-report", markdown="\n".join(["# reward models (held-out pairs)", "", *rows]))
    print(f"reward: accuracy {rm['accuracy']:.3f}, judge {judge['accuracy']:.3f}")
    return metrics


@flow(name="ppo", log_prints=True)
def ppo(params: dict) -> dict:
    cfg = config(PPOConfig, params, "ppo")
    m = train_ppo(cfg, OUT / "sft/checkpoint", OUT / "reward/checkpoint", INSTRUCTIONS, OUT / "ppo",
                  on_progress=progress("ppo-progress", cfg.steps))
    write_json("metrics/ppo.json", scalars(m))
    log = OUT / "ppo" / "log.csv"
    plots = Path("plots/ppo")
    plots.mkdir(parents=True, exist_ok=True)
    if log.exists():
        (plots / "log.csv").write_text(log.read_text())
    if m.get("stopped"):
        print(f"ppo stopped early: {m['stopped']} (the last good checkpoint was kept)")
    print(f"ppo: score {rounded(m.get('last_score'))}, KL {rounded(m.get('last_kl'))}")
    return m


@flow(name="dpo", log_prints=True)
def dpo(params: dict) -> dict:
    cfg = config(DPOConfig, params, "dpo")
    m = train_dpo(cfg, OUT / "sft/checkpoint", COMPARISONS, EVAL_COMPARISONS, OUT / "dpo",
                  on_progress=progress("dpo-progress", None))
    write_json("metrics/dpo.json", scalars(m))
    print(f"dpo: held-out loss {rounded(m.get('eval_loss'))}")
    return m


@flow(name="align-eval", log_prints=True)
def align_eval(params: dict) -> dict:
    cfg = config(AlignEvalConfig, params, "align_eval")
    m = evaluate_alignment(cfg, OUT / "sft/checkpoint", {"ppo": OUT / "ppo/checkpoint", "dpo": OUT / "dpo/checkpoint"},
                           OUT / "judge/checkpoint", EVAL_INSTRUCTIONS, OUT / "align_eval")
    markdown = m.pop("markdown", "")
    write_json("metrics/align_eval.json", json.loads(json.dumps(m, default=str)))
    create_markdown_artifact(key="align-eval-samples", markdown=markdown or "(no samples)")
    for name in ("ppo", "dpo"):
        if name in m:
            p = m[name]
            print(f"{name}: judge win rate vs SFT {p['win_rate']:.3f}, KL {p['kl_to_reference']:.2f}, "
                  f"length {p['mean_length']:.1f}{' (wins by length)' if p.get('wins_by_length') else ''}")
    return m


STAGES = {"sft": sft, "reward": reward, "ppo": ppo, "dpo": dpo, "evaluate": align_eval}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    return STAGES[args.stage](load_params(args.params))


if __name__ == "__main__":
    main()
