"""The over-optimisation curve (Gao et al. 2022): proxy vs held-out reward against KL, per saved checkpoint.

For the SFT start (step 0) and every checkpoint PPO and RLOO saved every N steps, on the *dev* held-out
prompts (never the test side; the trainers never see any of this): the reward model's mean score (the
proxy they optimised), the judge's mean score and win rate against SFT (held out: another model, other
pairs), chrF of the reply against the true continuation (a reference metric no learned model can be
fooled into), and the KL to SFT (nats per reply, both at the sampling temperature, on the policy's own
samples). Every checkpoint answers every prompt with the same random stream (common random numbers).

The chosen checkpoint per method maximises the held-out signal (`pick_by`: judge score, or chrF) among
points within `kl_limit`; the proxy's pick is reported beside it, and the gap between the two is the
over-optimisation. The curve only reports: align_eval evaluates each method's final checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtrain.align.metrics import bootstrap_ci, chrf, judge_scores, kl_to_reference, per_prompt, wins
from lmtrain.align.reward_model import load_reward_model
from lmtrain.align.rl import saved_checkpoints
from lmtrain.align.splits import eval_prompts
from lmtrain.config import ConfigError, RunConfig
from lmtrain.inference.generate import generate_replies
from lmtrain.models.bundle import load_gpt
from lmtrain.runtime import Runtime, setup
from lmtrain.tokenizer.chat import prompt_ids, stop_ids

PICK_BY = ("judge", "chrf")
CSV_FIELDS = ("method", "step", "kl", "proxy_score", "judge_score", "judge_win_rate", "chrf", "mean_length")


@dataclass
class AlignCurveConfig(RunConfig):
    """params.yaml `align_curve` section; defaults equal params.yaml's."""

    prompts: int = 80  # dev prompts used, evenly spaced over the dev side; 0 = all
    samples_per_prompt: int = 1
    max_new_tokens: int = 32  # as the rollouts
    temperature: float = 1.0  # as the rollouts (ppo / rloo temperature): the KL is the sampled distributions'
    pick_by: str = "judge"  # the held-out signal that picks the checkpoint: judge | chrf
    kl_limit: float = 10.0  # a checkpoint further than this from SFT (nats per reply) is not picked
    seed: int = 2024
    eval_batch_size: int = 32  # replies per forward pass for KL

    def __post_init__(self) -> None:
        if self.pick_by not in PICK_BY:
            raise ConfigError(f"params align_curve.pick_by: {self.pick_by!r} is not one of {PICK_BY} (the proxy "
                              "reward model cannot pick: it is what the policies were optimised against)")
        if not self.temperature > 0:
            raise ConfigError(f"params align_curve.temperature: {self.temperature}; the KL needs a sampling "
                              "temperature > 0")
        if self.samples_per_prompt < 1:
            raise ConfigError(f"params align_curve.samples_per_prompt: {self.samples_per_prompt} (at least 1)")


def run_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of a run's saved checkpoints, plus its final one when no saved step equals it (a
    run stopped early keeps the policy of a step that may fall between saves)."""
    run_dir = Path(run_dir)
    points = saved_checkpoints(run_dir)
    metrics = run_dir / "metrics.json"
    final = json.loads(metrics.read_text()).get("steps") if metrics.exists() else None
    if final and final not in {s for s, _ in points} and (run_dir / "checkpoint").is_dir():
        points = sorted([*points, (int(final), run_dir / "checkpoint")])
    return points


def _answers(model, prompts: list[list[int]], stops: set[int], cfg: AlignCurveConfig,
             rt: Runtime) -> list[list[list[int]]]:
    out = []
    for i, p in enumerate(prompts):
        g = rt.generator(cfg.seed + i)  # the same stream for every checkpoint
        with rt.autocast():
            out.append(generate_replies(model, p, cfg.samples_per_prompt, cfg.max_new_tokens, stops,
                                        cfg.temperature, 0, 1.0, g))
    return out


def choose(points: list[dict], key: str, kl_limit: float) -> dict | None:
    """The point with the highest `key` among those within kl_limit (the earliest step on a tie)."""
    ok = [p for p in points if p["kl"] <= kl_limit and p.get(key) is not None]
    return max(ok, key=lambda p: (p[key], -p["step"])) if ok else None


def over_optimisation_curve(cfg: AlignCurveConfig, sft_ckpt: str | Path, runs: Mapping[str, str | Path],
                            reward_ckpt: str | Path, judge_ckpt: str | Path, eval_dir: str | Path) -> dict:
    """{"points": one per (method, checkpoint), "chosen": per method, settings}; see the module docstring."""
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    sft, tok = load_gpt(sft_ckpt, 0.0, rt.device)
    sft.eval()
    rm, rm_tok = load_reward_model(reward_ckpt, rt.device)
    judge, judge_tok = load_reward_model(judge_ckpt, rt.device)
    for path, other in ((reward_ckpt, rm_tok), (judge_ckpt, judge_tok)):
        if getattr(other, "hash", None) != getattr(tok, "hash", None):
            raise ValueError(f"{path}: tokenizer differs from the SFT model's ({sft_ckpt}); the reward model and "
                             "the judge must start from models with the policies' tokenizer (params reward.init_from, "
                             "judge.init_from)")
    rows = eval_prompts(eval_dir, "dev", max_prompts=cfg.prompts)
    prompts = [prompt_ids(tok, r["prompt"])[-(sft.block_size - cfg.max_new_tokens):] for r in rows]
    stops, end = stop_ids(tok), tok.special_tokens["<|end|>"]
    n = len(prompts)

    def score(model) -> tuple[dict, np.ndarray]:
        ans = _answers(model, prompts, stops, cfg, rt)
        proxy = judge_scores(rm, prompts, ans, end, tok.eot_id)
        held = judge_scores(judge, prompts, ans, end, tok.eot_id)
        texts = [[tok.decode([t for t in r if t not in stops]) for r in rs] for rs in ans]
        ref_chrf = [chrf(t, row["reference"]) for row, ts in zip(rows, texts) for t in ts]
        kl = (kl_to_reference(model, sft, prompts, ans, tok.eot_id, cfg.temperature, cfg.eval_batch_size,
                              rt.autocast) if model is not sft else torch.zeros(len(proxy)))
        lengths = [len(r) for rs in ans for r in rs]
        return ({"kl": float(kl.mean()), "proxy_score": float(proxy.mean()), "judge_score": float(held.mean()),
                 "chrf": float(np.mean(ref_chrf)), "chrf_ci": bootstrap_ci(per_prompt(ref_chrf, n).mean(1)),
                 "mean_length": float(np.mean(lengths))}, per_prompt(held, n))

    base, base_held = score(sft)
    points: list[dict] = []
    for method, run_dir in runs.items():
        points.append({"method": method, "step": 0, "checkpoint": str(sft_ckpt), **base, "judge_win_rate": 0.5})
        for step, folder in run_checkpoints(run_dir):
            model, ptok = load_gpt(folder, 0.0, rt.device)
            if getattr(ptok, "hash", None) != getattr(tok, "hash", None):
                raise ValueError(f"{folder}: policy tokenizer differs from the SFT model's ({sft_ckpt})")
            m, held = score(model.eval())
            win = bootstrap_ci(wins(held, base_held).mean(1))
            points.append({"method": method, "step": step, "checkpoint": str(folder), **m,
                           "judge_win_rate": win["mean"], "judge_win_rate_ci": [win["lo"], win["hi"]]})
    key = "judge_score" if cfg.pick_by == "judge" else "chrf"
    chosen = {}
    for method in runs:
        mine = [p for p in points if p["method"] == method]
        pick, proxy_pick = choose(mine, key, cfg.kl_limit), choose(mine, "proxy_score", cfg.kl_limit)
        final = max(p["step"] for p in mine)
        chosen[method] = {"step": pick and pick["step"], "checkpoint": pick and pick["checkpoint"],
                          "by": key, key: pick and pick[key], "kl": pick and pick["kl"],
                          "proxy_would_pick_step": proxy_pick and proxy_pick["step"], "final_step": final,
                          "final_is_chosen": bool(pick and pick["step"] == final)}
    return {"split": "dev", "prompts": n, "samples_per_prompt": cfg.samples_per_prompt,
            "temperature": cfg.temperature, "pick_by": key, "kl_limit": cfg.kl_limit,
            "points": points, "chosen": chosen}
