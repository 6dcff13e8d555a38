"""PPO with a KL penalty against the SFT reference (InstructGPT; defaults as TRL / DeepSpeed-Chat).

One step: sample replies to a batch of training prompts with the KV cache (stop at `<|end|>`); score
each with the reward model (clipped to ±reward_clip; optional penalty when no end token came);
per-token reward -β·(log π - log π_ref) with the score added at the last token; GAE (γ, λ) on a
value head sharing the policy's backbone; whitened advantages; `ppo_epochs` passes of minibatches
with the clipped policy loss and the clipped value loss; gradient clipping; the adaptive KL
controller (Ziegler et al. 2019) moves β toward `target_kl`. Log-probs (old, new, reference), entropy and KL are
scored under softmax(logits / T) at the rollout temperature T, the distribution the tokens were drawn
from; top-k / top-p would truncate it, so PPOConfig rejects them before any work. The run stops with a message, keeping
the last good policy, when a statistic turns NaN or the mean KL per response exceeds `kl_max`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import safetensors.torch as st
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.align.common import token_logprobs
from lmtrain.align.reward_model import RewardModel, load_reward_model
from lmtrain.align.rl import (
    RolloutConfig,
    loop_metrics,
    mean_stats,
    reply_logits,
    reward_scores,
    run_policy_loop,
    sample_rollouts,
    training_prompts,
    write_log,
)
from lmtrain.models.bundle import load_gpt
from lmtrain.models.gpt import GPT
from lmtrain.progress import split_timings
from lmtrain.runtime import Runtime, adamw, optimizer_step, setup

VALUE_HEAD_FILE = "value_head.safetensors"
LOG_FIELDS = ("step", "reward", "score", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss", "policy_loss",
              "approx_kl", "ratio_mean", "response_length", "end_rate")


@dataclass
class PPOConfig(RolloutConfig):
    """params.yaml `ppo` section; TRL / DeepSpeed-Chat defaults where they exist, equal to params.yaml's.

    The learning rate is constant (warmup_steps and min_lr_ratio are not used by PPO).
    """

    section: ClassVar[str] = "ppo"
    checkpoint_every: int = 12  # 5 checkpoints over 60 steps for the over-optimisation curve
    ppo_epochs: int = 2  # passes over each rollout batch
    minibatch_size: int = 8  # replies per gradient step
    learning_rate: float = 5e-5
    clip_range: float = 0.2  # policy ratio clip (TRL cliprange)
    value_clip: float = 0.2  # value clip around the rollout values (TRL cliprange_value)
    vf_coef: float = 0.1  # weight of the value loss (TRL)
    gamma: float = 1.0
    lam: float = 0.95
    init_kl_coef: float = 0.2  # β at the start (TRL 0.05-0.2); 0.1 let KL pass 10 nats by step ~45 here
    adaptive_kl: bool = True
    target_kl: float = 6.0  # nats per response the adaptive controller aims at
    kl_horizon: int = 1000  # controller horizon in samples; TRL's 10000 suits 100k-sample runs, ours has ~1000
    whiten_advantages: bool = True


class PolicyWithValue(nn.Module):
    """The policy GPT plus a scalar value head on its hidden states (TRL's ...WithValueHead)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.value_head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and values (B, T)."""
        h = self.gpt.hidden_states(idx)
        return self.gpt.lm_head(h)[..., :self.gpt.config.vocab_size], self.value_head(h).squeeze(-1)


class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target - 1, -0.2, 0.2)·n/horizon) (Ziegler et al. 2019; TRL)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
        return self.value


class FixedKLController:
    """A constant β (adaptive_kl off)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_samples: int) -> float:
        return self.value


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) for left-aligned replies (B, T) whose valid steps have mask 1.

    δ_t = r_t + γ V_{t+1} - V_t (V past the end = 0); A_t = δ_t + γλ A_{t+1}; returns = A + V.
    """
    T = rewards.size(1)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nxt_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        nxt_value = values[:, t + 1] * nxt_mask if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt_value - values[:, t]
        last = (delta + gamma * lam * nxt_mask * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_range: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate loss, max(-A·r, -A·clip(r, 1±ε)), and its statistics."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss = masked_mean(torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((torch.abs(ratio - 1) > clip_range).float(), mask).item(),
                 "approx_kl": (0.5 * masked_mean(log_ratio ** 2, mask)).item(),
                 "ratio_mean": masked_mean(ratio, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """0.5·max((V - R)², (clip(V, V_old ± c) - R)²), masked mean."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def reply_stats(logits: torch.Tensor, values: torch.Tensor, seqs: torch.Tensor, starts: torch.Tensor,
                width: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs, values and entropies of the reply tokens, left-aligned (B, width), under softmax(logits / T)
    with T the rollout temperature (the values read hidden states: no temperature).

    Row b's reply starts at starts[b] in seqs; the logits at position p predict token p + 1.
    """
    lg, targets, pos = reply_logits(logits, seqs, starts, width)
    logp = token_logprobs(lg, targets, temperature)
    scaled = lg.float() / temperature
    entropy = -(F.softmax(scaled, dim=-1) * F.log_softmax(scaled, dim=-1)).sum(-1)
    return logp, torch.gather(values, 1, pos), entropy


def rollout(policy: PolicyWithValue, ref: GPT, rm: RewardModel, tok, prompts: Sequence[list[int]],
            cfg: PPOConfig, kl_coef: float, generator: torch.Generator, use_cache: bool = True,
            rt: Runtime | None = None) -> dict:
    """Sample replies, score them and build everything the PPO update needs (no gradients).

    `generator` draws the samples on the policy's device. `use_cache=False` samples by full
    recomputation (the benchmark's baseline).
    """
    device = next(policy.parameters()).device
    rt = rt or Runtime(device, torch.float32)
    ro = sample_rollouts(policy.gpt, tok, prompts, cfg, generator, rt, use_cache)
    x, st_, width, mask, lengths = ro.x, ro.starts, ro.width, ro.mask, ro.lengths.long()
    with torch.no_grad(), rt.autocast():
        logits, values = policy(x)
        logp, values, _ = reply_stats(logits, values.float(), x, st_, width, cfg.temperature)
        ref_logits, _ = ref(x)
        ref_logp, _, _ = reply_stats(ref_logits, torch.zeros_like(x, dtype=torch.float), x, st_, width,
                                     cfg.temperature)
    scores, clipped = reward_scores(rm, ro, tok.eot_id, cfg)
    logp, ref_logp = logp.float(), ref_logp.float()
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(ro.replies), device=device), lengths - 1] += clipped
    values = values * mask
    adv, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask) * mask
    return {"x": x, "starts": st_, "width": width, "mask": mask, "logp": logp, "values": values, "adv": adv,
            "returns": returns, "scores": scores, "rewards": rewards, "kl": kl.sum(1), "lengths": ro.lengths,
            "ended": ro.ended, "replies": ro.replies}


def ppo_update(policy: PolicyWithValue, opt: torch.optim.Optimizer, batch: dict, cfg: PPOConfig,
               generator: torch.Generator, rt: Runtime | None = None) -> dict:
    """`ppo_epochs` passes of minibatch updates on one rollout batch; mean statistics.

    `generator` (a CPU one) orders the minibatches."""
    rt = rt or Runtime(next(policy.parameters()).device, torch.float32)
    n = batch["x"].size(0)
    steps: list[dict] = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, cfg.minibatch_size):
            idx = order[i:i + cfg.minibatch_size]
            m = batch["mask"][idx]
            with rt.autocast():
                logits, values = policy(batch["x"][idx])
                logp, v, entropy = reply_stats(logits, values.float(), batch["x"][idx], batch["starts"][idx],
                                               batch["width"], cfg.temperature)
            logp = logp.float()
            pl, stats = policy_loss(logp, batch["logp"][idx], batch["adv"][idx], m, cfg.clip_range)
            vl = value_loss(v, batch["values"][idx], batch["returns"][idx], m, cfg.value_clip)
            loss = pl + cfg.vf_coef * vl
            if not torch.isfinite(loss):
                return {"nan": True}
            loss.backward()
            optimizer_step(opt, policy.parameters(), cfg.grad_clip)
            stats.update(policy_loss=pl.item(), value_loss=vl.item(), entropy=masked_mean(entropy.detach(), m).item())
            steps.append(stats)
    return mean_stats(steps)


def train_ppo(cfg: PPOConfig, sft_ckpt: str | Path, reward_ckpt: str | Path, prompts_dir: str | Path,
              out_dir: str | Path, on_progress: Callable[[dict], None] | None = None,
              held_out_dir: str | Path | None = None) -> dict:
    """Optimise the SFT policy against the reward model; write out_dir/checkpoint, checkpoints/step_XXXX
    (every cfg.checkpoint_every steps), log.json, log.csv.

    Prompts are the user turns of the `train` split in prompts_dir (an instructions folder); none may be
    among the held-out prompts of `held_out_dir` (default: prompts_dir's `eval` split), checked first.
    Returns metrics with `stopped` (None or the reason) and the last logged statistics.
    """
    t0 = time.perf_counter()
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpt, tok = load_gpt(sft_ckpt, dropout=0.0)  # no dropout: rollout and update log-probs must agree
    prompts = training_prompts(tok, prompts_dir, held_out_dir, "ppo")
    policy = PolicyWithValue(gpt).to(rt.device).eval()
    ref, _ = load_gpt(sft_ckpt, 0.0, rt.device)
    ref.eval().requires_grad_(False)
    rm, rm_tok = load_reward_model(reward_ckpt, rt.device)
    rm.requires_grad_(False)
    if getattr(rm_tok, "hash", None) != getattr(tok, "hash", None):
        raise ValueError(f"{reward_ckpt}: reward model tokenizer differs from the policy's ({sft_ckpt})")
    opt = adamw(policy, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))
    g = torch.Generator().manual_seed(cfg.seed)  # prompt and minibatch order
    # samples are drawn on the policy's device; on a CPU from the same generator (results as before)
    sample_g = g if rt.device.type == "cpu" else rt.generator(cfg.seed)

    def update(batch: dict) -> dict | None:
        beta = kl_ctl.value
        stats = ppo_update(policy, opt, batch, cfg, g, rt)
        if stats.get("nan"):
            return None
        kl_ctl.update(float(batch["kl"].mean()), len(batch["replies"]))
        return {"reward": float(batch["rewards"].sum(1).mean()), "kl_coef": beta, **stats}

    log, stopped, ckpt = run_policy_loop(
        cfg, "ppo", policy, gpt, prompts, lambda ps: rollout(policy, ref, rm, tok, ps, cfg, kl_ctl.value, sample_g, rt=rt),
        update, g, out_dir, sft_ckpt, {"ppo_config": asdict(cfg)}, on_progress)
    st.save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                 str(ckpt / VALUE_HEAD_FILE))
    write_log(log, out_dir, LOG_FIELDS)
    metrics = {**loop_metrics(log, stopped, out_dir, ("reward", "score", "kl", "response_length")),
               "final_kl_coef": kl_ctl.value, "seconds": time.perf_counter() - t0}
    (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))  # no wall times
    return metrics
