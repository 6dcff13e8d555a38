"""Stages `sft`, `reward`, `judge`, `ppo`, `dpo` and `align_eval`: the InstructGPT chain on the balanced
instruction and comparison data. One Prefect flow per DVC stage; logic in lmtrain.

    python -m flows.align sft|reward|judge|ppo|dpo|evaluate [--params params.yaml]

`reward` (optimised by PPO; DPO trains on its half) and `judge` (from the pretrained GPT, another seed,
the other half of the comparisons; used only to grade policies in `align_eval`) share no prompt. Each
starts from its section's `init_from` (reward: SFT; judge: models/pretrain/gpt/checkpoint, or the HF
GPT-2 folder SFT started from, so that it speaks the policies' tokenizer: profiles/sft_from_hf.yaml).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows._artifacts import image_markdown, publish_image
from flows._stage import md_table
from flows._training import config, render_ppo_png, stage_main, ui_progress, write_train_metrics
from lmdata.errors import ConfigError
from lmtrain.align.dpo import DPOConfig, train_dpo
from lmtrain.align.evaluate import AlignEvalConfig, evaluate_alignment, length_rows, summary_rows
from lmtrain.align.ppo import PPOConfig, train_ppo
from lmtrain.align.reward import (
    JudgeConfig,
    RewardConfig,
    check_same_tokenizer,
    reward_model_agreement,
    train_judge,
    train_reward,
)
from lmtrain.align.sft import SFTConfig, train_sft
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.progress import rounded

INSTRUCTIONS = Path("data/balance/instructions")
COMPARISONS = Path("data/balance/comparisons")
EVAL_INSTRUCTIONS = Path("data/evalset/instructions")  # held-out rows: the frozen evaluation set
EVAL_COMPARISONS = Path("data/evalset/comparisons")
OUT = Path("models")


def scalars(m: dict) -> dict:
    """The JSON-friendly scalar metrics (lists such as samples go to artifacts instead)."""
    return {k: v for k, v in m.items() if isinstance(v, int | float | str | bool) or v is None}


@flow(name="sft", log_prints=True)
def sft(params: dict) -> dict:
    cfg = config(SFTConfig, params, "sft")
    m = train_sft(cfg, cfg.init_from, INSTRUCTIONS, EVAL_INSTRUCTIONS, OUT / "sft",
                  on_progress=ui_progress("sft-progress", f"SFT: {cfg.epochs} epochs over the instructions"))
    by_source = ("eval_loss_by_source", "eval_loss_before_by_source", "eval_conversations_by_source")
    write_train_metrics("sft", {**scalars(m), **{k: m[k] for k in by_source}})
    rows = [{"source (task)": src, "held-out conversations": n, "loss before": m["eval_loss_before_by_source"][src],
             "loss after": m["eval_loss_by_source"][src]} for src, n in m["eval_conversations_by_source"].items()]
    create_markdown_artifact(key="sft-by-source", markdown="\n".join(["# SFT held-out loss per source", "",
                                                                      md_table(rows)]),
                             description="SFT: held-out loss per instruction source (task) before and after")
    samples = OUT / "sft" / "samples.md"
    if samples.exists():
        create_markdown_artifact(key="sft-samples", markdown=samples.read_text(),
                                 description=f"SFT: answers to held-out prompts beside the reference "
                                             f"(held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f})")
    print(f"sft: held-out loss {m['eval_loss_before']:.3f} -> {m['eval_loss']:.3f} in {m['seconds']:.0f} s")
    return m


BY_SOURCE = ("accuracy_by_source", "pairs_by_source")


def reward_rows(name: str, m: dict) -> list[dict]:
    """Table rows of one reward model's held-out accuracy: all pairs, then per source."""
    rows = [{"model": name, "pairs": f"all ({m.get('pairs', 0)}, {m.get('eval_split')})", "accuracy": m.get("accuracy"),
             "length-matched accuracy": m.get("length_matched_accuracy"), "mean margin": m.get("mean_margin")}]
    return rows + [{"model": name, "pairs": f"{source} ({m['pairs_by_source'][source]})", "accuracy": acc}
                   for source, acc in (m.get("accuracy_by_source") or {}).items()]


@flow(name="reward", log_prints=True)
def reward(params: dict) -> dict:
    cfg = config(RewardConfig, params, "reward")
    rm = train_reward(cfg, cfg.init_from, COMPARISONS, EVAL_COMPARISONS, OUT / "reward", EVAL_INSTRUCTIONS,
                      on_progress=ui_progress("reward-progress", f"reward model: {cfg.epochs} epochs over the comparisons"))
    metrics = {**scalars(rm), **{k: rm.get(k) for k in BY_SOURCE}, "calibration": rm.get("calibration")}
    write_train_metrics("reward", metrics)
    create_markdown_artifact(key="reward-report", markdown="\n".join(["# reward model (held-out pairs)", "",
                                                                      md_table(reward_rows("reward", rm))]),
                             description=f"reward model on held-out comparisons ({cfg.eval_split}): accuracy "
                                         f"{rounded(rm.get('accuracy'), 3)}, by source")
    print(f"reward: held-out ({cfg.eval_split}) accuracy {rounded(rm.get('accuracy'), 3)} on {rm['pairs']} pairs")
    return metrics


@flow(name="judge", log_prints=True)
def judge(params: dict) -> dict:
    cfg = config(JudgeConfig, params, "judge")
    reward_subset = config(RewardConfig, params, "reward").subset
    try:  # it grades the policies' token ids: the reward model's (= SFT's) tokenizer, checked before any work
        check_same_tokenizer(cfg.init_from, OUT / "reward/checkpoint")
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e
    m = train_judge(cfg, cfg.init_from, COMPARISONS, EVAL_COMPARISONS, OUT / "judge", reward_subset,
                    EVAL_INSTRUCTIONS, on_progress=ui_progress("judge-progress", f"judge: {cfg.epochs} epochs over "
                                                                                  f"the other half, from {cfg.init_from}"))
    # does the judge still mirror the reward model? (read here, not in models/judge: that stays the judge's own)
    rm_metrics = json.loads((OUT / "reward/metrics.json").read_text())
    agree = reward_model_agreement(OUT / "reward/checkpoint", OUT / "judge/checkpoint", EVAL_COMPARISONS,
                                   cfg.eval_split, cfg.max_response_tokens)
    metrics = {**scalars(m), **{k: m.get(k) for k in BY_SOURCE}, "agreement_with_reward": agree,
               "reward": {k: rm_metrics.get(k) for k in ("accuracy", "eval_split", *BY_SOURCE)}}
    write_train_metrics("judge", metrics)
    create_markdown_artifact(key="judge-report", markdown="\n".join([
        "# judge vs reward model (held-out pairs)", "", md_table(reward_rows("judge", m) + reward_rows("reward", rm_metrics)),
        "", f"On {agree['pairs']} held-out pairs they order {agree.get('same_order', 0):.1%} alike; both are wrong on "
            f"{agree.get('both_wrong', 0):.1%}; margin correlation {agree.get('margin_correlation', float('nan')):.2f}."]),
        description=f"judge on held-out comparisons: accuracy {rounded(m.get('accuracy'), 3)} beside the reward model's "
                    f"{rm_metrics.get('accuracy')}, and how alike they rank")
    print(f"judge: held-out ({cfg.eval_split}) accuracy {rounded(m.get('accuracy'), 3)} (reward {rounded(rm_metrics.get('accuracy'), 3)}), "
          f"same order as the reward model on {agree.get('same_order', 0):.1%} of {agree['pairs']} pairs")
    return metrics


@flow(name="ppo", log_prints=True)
def ppo(params: dict) -> dict:
    cfg = config(PPOConfig, params, "ppo")
    m = train_ppo(cfg, OUT / "sft/checkpoint", OUT / "reward/checkpoint", INSTRUCTIONS, OUT / "ppo",
                  on_progress=ui_progress("ppo-progress", f"PPO: {cfg.steps} rollout/update steps"),
                  held_out_dir=EVAL_INSTRUCTIONS)
    write_train_metrics("ppo", scalars(m))
    log = OUT / "ppo" / "log.csv"
    plots = Path("plots/ppo")
    plots.mkdir(parents=True, exist_ok=True)
    if log.exists():
        (plots / "log.csv").write_text(log.read_text())
    if render_ppo_png(log, plots / "curve.png"):  # not a DVC output: a picture of log.csv for the UI
        publish_image("ppo-curve", plots / "curve.png", "PPO: reward-model score and KL to SFT",
                      f"PPO: score and KL per step over {m['steps']} steps (data in plots/ppo/log.csv)",
                      caption="Score: the reward model's mean score of the rollouts; KL: nats per response.")
    if m.get("stopped"):
        print(f"ppo stopped early: {m['stopped']} (the last good checkpoint was kept)")
    print(f"ppo: score {rounded(m.get('first_score'), 3)} -> {rounded(m.get('last_score'), 3)}, "
          f"KL {rounded(m.get('last_kl'), 3)} in {m['seconds']:.0f} s")
    return m


@flow(name="dpo", log_prints=True)
def dpo(params: dict) -> dict:
    cfg = config(DPOConfig, params, "dpo")
    subset = config(RewardConfig, params, "reward").subset  # the reward model's pairs: PPO and DPO learn alike
    m = train_dpo(cfg, OUT / "sft/checkpoint", COMPARISONS, EVAL_COMPARISONS, OUT / "dpo", subset, EVAL_INSTRUCTIONS,
                  on_progress=ui_progress("dpo-progress", f"DPO: {cfg.epochs} epochs over the reward model's pairs"))
    write_train_metrics("dpo", scalars(m))
    print(f"dpo: held-out loss {rounded(m.get('eval_loss'), 3)} in {m['seconds']:.0f} s")
    return m


@flow(name="align-eval", log_prints=True)
def align_eval(params: dict) -> dict:
    cfg = config(AlignEvalConfig, params, "align_eval")
    ckpts = {name: OUT / name / "checkpoint" for name in cfg.policies}
    missing = [f"{name} ({path})" for name, path in ckpts.items() if not path.is_dir()]
    if missing:
        raise ConfigError(f"params align_eval.policies: no checkpoint for {', '.join(missing)}; run its stage "
                          "first or drop it from the list")
    t0 = time.perf_counter()
    m = evaluate_alignment(cfg, OUT / "sft/checkpoint", ckpts, OUT / "judge/checkpoint", EVAL_INSTRUCTIONS,
                           OUT / "align_eval")
    markdown = m.pop("markdown", "")
    write_train_metrics("align_eval", {**m, "seconds": time.perf_counter() - t0})
    report = ["# alignment: every policy against SFT", "", md_table(summary_rows(m)), "",
              f"{m['prompts']} {m['split']} prompts ({', '.join(f'{k} {v}' for k, v in m['prompts_by_source'].items())})"
              f" x {m['samples_per_prompt']} samples at temperature {m['temperature']}. Win rate: the judge (a reward "
              "model trained on the other half of the comparisons) prefers the policy's reply j to SFT's reply j; "
              "chrF (0-100): each reply against the reference reply; intervals: bootstrap over prompts; KL: "
              "nats per reply under the sampling temperature; length flag: mean length more than "
              f"{cfg.length_margin:.0%} above or below SFT's.", "", "## reply lengths (tokens) and win rate by length",
              "", md_table(length_rows(m))]
    curve = OUT / "align_curve" / "curve.png"
    if curve.exists():  # the over-optimisation curve (stage align_curve)
        report += ["", image_markdown(curve, "over-optimisation: proxy and held-out reward against KL")]
    create_markdown_artifact(key="align-eval-report", markdown="\n".join(report),
                             description=f"alignment evaluation ({m['split']} prompts): one row per policy, "
                                         "win rate and chrF with intervals, KL, lengths")
    create_markdown_artifact(key="align-eval-samples", markdown=markdown or "(no samples)",
                             description="alignment evaluation: each model's first reply beside the reference")
    for name in cfg.policies:
        p = m[name]
        print(f"{name}: judge win rate vs SFT {p['win_rate']:.3f} [{p['win_rate_lo']:.3f}, {p['win_rate_hi']:.3f}], "
              f"chrF {p['chrf']:.1f} (SFT {m['sft']['chrf']:.1f}), KL {p['kl_to_reference']:.2f}, "
              f"length {p['mean_length']:.1f} (SFT {m['sft']['mean_length']:.1f}"
              f"{', ' + p['length_flag'] if p['length_flag'] else ''})")
    return m


STAGES = {"sft": sft, "reward": reward, "judge": judge, "ppo": ppo, "dpo": dpo, "evaluate": align_eval}


def main(argv: list[str] | None = None) -> dict:
    return stage_main(__doc__, STAGES, argv)


if __name__ == "__main__":
    main()
