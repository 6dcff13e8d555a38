"""Stages `rloo` (REINFORCE leave-one-out beside PPO: same SFT start, reward model and prompts) and
`align_curve` (the over-optimisation curve of PPO's and RLOO's saved checkpoints on the dev prompts).
One Prefect flow per DVC stage; logic in lmtrain.align.rloo and lmtrain.align.curve.

    python -m flows.align_rl rloo|curve [--params params.yaml]

`align_curve` is the only stage that puts the judge beside the training checkpoints; the trainers never
see it. It reports which checkpoint the held-out signal picks; align_eval evaluates the final ones.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows._artifacts import publish_image
from flows._stage import md_table
from flows._training import (
    config,
    render_curve_png,
    render_ppo_png,
    stage_main,
    ui_progress,
    write_train_metrics,
)
from lmdata.atomic import write_json
from lmdata.errors import ConfigError
from lmtrain.align.curve import CSV_FIELDS, AlignCurveConfig, over_optimisation_curve
from lmtrain.align.rloo import RLOOConfig, train_rloo
from lmtrain.progress import rounded

INSTRUCTIONS = Path("data/balance/instructions")
EVAL_INSTRUCTIONS = Path("data/evalset/instructions")
OUT = Path("models")
RUNS = ("ppo", "rloo")


@flow(name="rloo", log_prints=True)
def rloo(params: dict) -> dict:
    cfg = config(RLOOConfig, params, "rloo")
    m = train_rloo(cfg, OUT / "sft/checkpoint", OUT / "reward/checkpoint", INSTRUCTIONS, OUT / "rloo",
                   on_progress=ui_progress("rloo-progress", f"RLOO: {cfg.steps} rollout/update steps"),
                   held_out_dir=EVAL_INSTRUCTIONS)
    write_train_metrics("rloo", {k: v for k, v in m.items() if not isinstance(v, dict)})
    plots = Path("plots/rloo")
    plots.mkdir(parents=True, exist_ok=True)
    log = OUT / "rloo" / "log.csv"
    if log.exists():
        (plots / "log.csv").write_text(log.read_text())
    if render_ppo_png(log, plots / "curve.png", "RLOO"):  # not a DVC output: a picture of log.csv for the UI
        publish_image("rloo-curve", plots / "curve.png", "RLOO: reward-model score and KL to SFT",
                      f"RLOO: score and KL per step over {m['steps']} steps (data in plots/rloo/log.csv)",
                      caption="Score: the reward model's mean score of the rollouts; KL: nats per response.")
    if m.get("stopped"):
        print(f"rloo stopped early: {m['stopped']} (the last good checkpoint was kept)")
    print(f"rloo: score {rounded(m.get('first_score'), 3)} -> {rounded(m.get('last_score'), 3)}, "
          f"KL {rounded(m.get('last_kl'), 3)}, checkpoints at steps {m['checkpoint_steps']} in {m['seconds']:.0f} s")
    return m


def check_sampling(cfg: AlignCurveConfig, params: dict) -> None:
    """The curve's KL is the sampled distributions' only at the rollouts' temperature and length."""
    for run in RUNS:
        sec = params.get(run) or {}
        for key, default in (("temperature", 1.0), ("max_new_tokens", 32)):
            if float(sec.get(key, default)) != float(getattr(cfg, key)):
                raise ConfigError(f"params align_curve.{key} {getattr(cfg, key)} differs from {run}.{key} "
                                  f"{sec.get(key, default)}: the curve must sample as the rollouts did")


@flow(name="align-curve", log_prints=True)
def align_curve(params: dict) -> dict:
    cfg = config(AlignCurveConfig, params, "align_curve")
    check_sampling(cfg, params)
    t0 = time.perf_counter()
    res = over_optimisation_curve(cfg, OUT / "sft/checkpoint", {r: OUT / r for r in RUNS}, OUT / "reward/checkpoint",
                                  OUT / "judge/checkpoint", EVAL_INSTRUCTIONS)
    out = OUT / "align_curve"
    write_json(out / "curve.json", res)
    plots = Path("plots/align_curve")
    plots.mkdir(parents=True, exist_ok=True)
    for name, key in (("proxy", "proxy_score"), ("judge", "judge_score")):  # DVC plots: score vs KL (Gao et al.)
        with open(plots / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "step", "kl", "score"])
            w.writerows([p["method"], p["step"], round(p["kl"], 6), round(p[key], 6)] for p in res["points"])
    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(res["points"])
    render_curve_png(res["points"], out / "curve.png")
    rows = [{k: rounded(p.get(k), 4) for k in CSV_FIELDS} for p in res["points"]]
    summary = {run: {"chosen_step": c["step"], "by": c["by"], "proxy_would_pick_step": c["proxy_would_pick_step"],
                     "final_step": c["final_step"], "final_is_chosen": c["final_is_chosen"]}
               for run, c in res["chosen"].items()}
    write_train_metrics("align_curve", {"split": res["split"], "prompts": res["prompts"], "pick_by": res["pick_by"],
                                        "chosen": res["chosen"], "seconds": time.perf_counter() - t0})
    create_markdown_artifact(key="align-curve-report", markdown="\n".join(
        ["# Over-optimisation curve (dev prompts)", "", md_table(rows), "", "Chosen by the held-out "
         f"{res['pick_by']} (within KL {res['kl_limit']}):", "", md_table([{"method": k, **v} for k, v in summary.items()]),
         "", "align_eval evaluates each method's final checkpoint; this table says which step the held-out "
             "signal would pick instead."]),
        description="over-optimisation: proxy (reward model) and held-out (judge, chrF) scores vs KL per checkpoint")
    publish_image("align-curve", out / "curve.png", "Proxy vs held-out reward against KL to SFT",
                  f"over-optimisation curve of {', '.join(RUNS)} on {res['prompts']} dev prompts (data in "
                  "models/align_curve/curve.json)",
                  caption="Score change from SFT under the reward model (proxy, optimised) and the judge "
                          "(held out); chrF of the reply against the true continuation.")
    for run, c in summary.items():
        print(f"{run}: the held-out {res['pick_by']} picks step {c['chosen_step']} (the proxy would pick "
              f"{c['proxy_would_pick_step']}; final {c['final_step']})")
    print(f"align_curve: {len(res['points'])} points in {time.perf_counter() - t0:.0f} s")
    return res


STAGES = {"rloo": rloo, "curve": align_curve}


def main(argv: list[str] | None = None) -> dict:
    return stage_main(__doc__, STAGES, argv)


if __name__ == "__main__":
    main()
