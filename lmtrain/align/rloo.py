"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics"; TRL's RLOOTrainer).

One step: sample k replies to each of a batch of training prompts (at the rollout temperature, with the
KV cache); each reply's reward is its reward-model score (clipped to ±reward_clip) minus β times its
sequence KL to the SFT reference, Σ_t (log π - log π_ref), scored at the rollout temperature; its
advantage is its reward minus the mean reward of the *other* k - 1 replies to the same prompt (an
unbiased baseline from the policy's own samples: no value model, no critic). Then `update_epochs`
passes of minibatches with the clipped surrogate on the sequence log-prob ratio
exp(Σ log π_new - Σ log π_old), as TRL does. The loop, its KL / NaN guard and the checkpoints every N
steps are `lmtrain.align.rl`'s, shared with PPO.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from lmtrain.align.reward_model import RewardModel, load_reward_model
from lmtrain.align.rl import (
    RolloutConfig,
    loop_metrics,
    mean_stats,
    reply_logprobs,
    reward_scores,
    run_policy_loop,
    sample_rollouts,
    training_prompts,
    write_log,
)
from lmtrain.config import ConfigError
from lmtrain.models.bundle import load_gpt
from lmtrain.models.gpt import GPT
from lmtrain.progress import split_timings
from lmtrain.runtime import Runtime, adamw, optimizer_step, setup

LOG_FIELDS = ("step", "reward", "score", "kl", "advantage_std", "clip_fraction", "approx_kl", "ratio_mean",
              "policy_loss", "response_length", "end_rate")


@dataclass
class RLOOConfig(RolloutConfig):
    """params.yaml `rloo` section (TRL RLOOConfig's names where they exist), defaults equal params.yaml's.

    The learning rate is constant (warmup_steps and min_lr_ratio are not used).
    """

    section: ClassVar[str] = "rloo"
    steps: int = 40
    samples_per_prompt: int = 4  # k: replies per prompt, the leave-one-out group (TRL rloo_k); >= 2
    checkpoint_every: int = 8  # 5 checkpoints over 40 steps for the over-optimisation curve
    kl_coef: float = 0.1  # β: fixed KL penalty per nat of sequence KL
    clip_range: float = 0.2  # sequence ratio clip (TRL cliprange)
    update_epochs: int = 2  # passes over each rollout batch (TRL num_ppo_epochs)
    minibatch_size: int = 8  # replies per gradient step
    learning_rate: float = 5e-5
    whiten_advantages: bool = False  # TRL normalize_advantage; off: the baseline already centres them

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise ConfigError(f"params rloo.samples_per_prompt: {self.samples_per_prompt}; the leave-one-out "
                              "baseline needs at least 2 replies per prompt")


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(P, k) rewards of k replies to each of P prompts → each reward minus the mean of the other k - 1."""
    k = rewards.size(1)
    if k < 2:
        raise ValueError(f"leave-one-out needs at least 2 replies per prompt, got {k}")
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def sequence_policy_loss(seq_logp: torch.Tensor, old_seq_logp: torch.Tensor, adv: torch.Tensor,
                         clip_range: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate on whole replies: mean max(-A·r, -A·clip(r, 1±ε)), r = exp(log π(y) - log π_old(y))."""
    log_ratio = seq_logp - old_seq_logp
    ratio = torch.exp(log_ratio)
    loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
    with torch.no_grad():
        stats = {"clip_fraction": float((torch.abs(ratio - 1) > clip_range).float().mean()),
                 "approx_kl": float(0.5 * (log_ratio ** 2).mean()), "ratio_mean": float(ratio.mean())}
    return loss, stats


def rloo_rollout(policy: GPT, ref: GPT, rm: RewardModel, tok, prompts: Sequence[list[int]], cfg: RLOOConfig,
                 generator: torch.Generator, rt: Runtime) -> dict:
    """Sample k replies per prompt; score them; rewards, sequence KL and leave-one-out advantages (no gradients)."""
    ro = sample_rollouts(policy, tok, prompts, cfg, generator, rt)
    with torch.no_grad():
        logp = reply_logprobs(policy, ro, cfg.temperature, rt)
        ref_logp = reply_logprobs(ref, ro, cfg.temperature, rt)
    scores, shaped = reward_scores(rm, ro, tok.eot_id, cfg)
    kl = (logp - ref_logp).sum(1)
    rewards = shaped - cfg.kl_coef * kl
    adv = leave_one_out_advantages(rewards.view(len(prompts), cfg.samples_per_prompt)).flatten()
    if cfg.whiten_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return {"ro": ro, "old_seq_logp": logp.sum(1), "adv": adv, "rewards": rewards, "scores": scores, "kl": kl,
            "lengths": ro.lengths, "ended": ro.ended}


def rloo_update(policy: GPT, opt: torch.optim.Optimizer, batch: dict, cfg: RLOOConfig, generator: torch.Generator,
                rt: Runtime) -> dict | None:
    """`update_epochs` passes of minibatch steps on one rollout batch; mean statistics, or None on a NaN loss."""
    ro = batch["ro"]
    n = ro.x.size(0)
    steps: list[dict] = []
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, cfg.minibatch_size):
            idx = order[i:i + cfg.minibatch_size].to(ro.x.device)
            part = type(ro)(ro.x[idx], ro.starts[idx], ro.width, ro.mask[idx], ro.lengths[idx], ro.ended[idx], [], [])
            seq_logp = reply_logprobs(policy, part, cfg.temperature, rt).sum(1)
            loss, stats = sequence_policy_loss(seq_logp, batch["old_seq_logp"][idx], batch["adv"][idx], cfg.clip_range)
            if not torch.isfinite(loss):
                return None
            loss.backward()
            optimizer_step(opt, policy.parameters(), cfg.grad_clip)
            stats["policy_loss"] = float(loss.detach())
            steps.append(stats)
    return mean_stats(steps)


def train_rloo(cfg: RLOOConfig, sft_ckpt: str | Path, reward_ckpt: str | Path, prompts_dir: str | Path,
               out_dir: str | Path, on_progress: Callable[[dict], None] | None = None,
               held_out_dir: str | Path | None = None) -> dict:
    """Optimise the SFT policy against the reward model with RLOO; write out_dir/checkpoint (the same bundle
    as PPO's, no value head), checkpoints/step_XXXX, log.json, log.csv, metrics.json.

    Prompts are the user turns of the `train` split in prompts_dir; none may be among the held-out prompts
    of `held_out_dir` (default: prompts_dir's `eval` split), checked first.
    """
    t0 = time.perf_counter()
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy, tok = load_gpt(sft_ckpt, 0.0, rt.device)  # no dropout: rollout and update log-probs must agree
    policy.eval()
    prompts = training_prompts(tok, prompts_dir, held_out_dir, "rloo")
    ref, _ = load_gpt(sft_ckpt, 0.0, rt.device)
    ref.eval().requires_grad_(False)
    rm, rm_tok = load_reward_model(reward_ckpt, rt.device)
    rm.requires_grad_(False)
    if getattr(rm_tok, "hash", None) != getattr(tok, "hash", None):
        raise ValueError(f"{reward_ckpt}: reward model tokenizer differs from the policy's ({sft_ckpt})")
    opt = adamw(policy, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    g = torch.Generator().manual_seed(cfg.seed)  # prompt and minibatch order
    sample_g = g if rt.device.type == "cpu" else rt.generator(cfg.seed)

    def update(batch: dict) -> dict | None:
        stats = rloo_update(policy, opt, batch, cfg, g, rt)
        if stats is None:
            return None
        return {"reward": float(batch["rewards"].mean()), "advantage_std": float(batch["adv"].std()), **stats}

    log, stopped, _ = run_policy_loop(cfg, "rloo", policy, policy, prompts,
                                      lambda ps: rloo_rollout(policy, ref, rm, tok, ps, cfg, sample_g, rt),
                                      update, g, out_dir, sft_ckpt, {"rloo_config": asdict(cfg)}, on_progress)
    write_log(log, out_dir, LOG_FIELDS)
    metrics = {**loop_metrics(log, stopped, out_dir, ("reward", "score", "kl", "response_length")),
               "seconds": time.perf_counter() - t0}
    (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))  # no wall times
    return metrics
