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

import copy
import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch as st
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.align.common import pad_batch, rollout_sampling_error, token_logprobs
from lmtrain.align.reward_model import RewardModel, load_reward_model, score_ids
from lmtrain.config import ConfigError, OptimConfig
from lmtrain.data.tables import read_conversations
from lmtrain.inference.generate import generate_replies
from lmtrain.models.bundle import load_gpt, save_bundle
from lmtrain.models.gpt import GPT
from lmtrain.progress import Progress, split_timings
from lmtrain.runtime import Runtime, adamw, optimizer_step, setup
from lmtrain.tokenizer.chat import prompt_ids, stop_ids

VALUE_HEAD_FILE = "value_head.safetensors"
LOG_FIELDS = ("step", "reward", "score", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss", "policy_loss",
              "approx_kl", "ratio_mean", "response_length", "end_rate")


@dataclass
class PPOConfig(OptimConfig):
    """params.yaml `ppo` section; TRL / DeepSpeed-Chat defaults where they exist, equal to params.yaml's.

    The learning rate is constant (warmup_steps and min_lr_ratio are not used by PPO).
    """

    steps: int = 60  # PPO iterations (one rollout batch + its updates each)
    prompts_per_step: int = 4  # distinct training prompts per rollout batch
    samples_per_prompt: int = 4  # replies per prompt (they share one KV cache)
    max_new_tokens: int = 32  # reply length cap
    temperature: float = 1.0  # rollout sampling; log-probs, ratio and KL are scored at this temperature too
    top_k: int = 0  # must stay 0 (off): the scored distribution must be the sampled one
    top_p: float = 1.0  # must stay 1.0 (off), as top_k
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
    reward_clip: float = 5.0  # reward-model scores clipped to ±reward_clip
    no_end_penalty: float = 0.0  # subtracted from the score of a reply that never emitted <|end|>; 0 = off
    kl_max: float = 10.0  # stop (keeping the last good policy) when mean KL per response exceeds this
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        why = rollout_sampling_error("ppo", self.temperature, self.top_k, self.top_p)
        if why:
            raise ConfigError(why)


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
    j = torch.arange(width, device=seqs.device)
    pos = (starts[:, None] - 1 + j[None, :]).clamp(max=seqs.size(1) - 2)  # positions that predict the reply
    lg = torch.gather(logits, 1, pos[:, :, None].expand(-1, -1, logits.size(-1)))
    targets = torch.gather(seqs, 1, pos + 1)
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
    stops, end_id = stop_ids(tok), tok.special_tokens["<|end|>"]
    seqs, starts, replies, score_rows = [], [], [], []
    for p in prompts:
        p = p[-(policy.gpt.block_size - cfg.max_new_tokens):]
        with rt.autocast():
            replies_p = generate_replies(policy.gpt, p, cfg.samples_per_prompt, cfg.max_new_tokens, stops,
                                         cfg.temperature, cfg.top_k, cfg.top_p, generator, use_cache)
        for r in replies_p:
            seqs.append(p + r)
            starts.append(len(p))
            replies.append(r)
            score_rows.append(p + (r if r[-1] == end_id else r + [end_id]))  # the RM reads a closed turn
    lengths = torch.tensor([len(r) for r in replies], device=device)
    width = max(len(r) for r in replies)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()
    x = pad_batch(seqs, tok.eot_id).to(device)
    st_ = torch.tensor(starts, device=device)
    with torch.no_grad(), rt.autocast():
        logits, values = policy(x)
        logp, values, _ = reply_stats(logits, values.float(), x, st_, width, cfg.temperature)
        ref_logits, _ = ref(x)
        ref_logp, _, _ = reply_stats(ref_logits, torch.zeros_like(x, dtype=torch.float), x, st_, width,
                                     cfg.temperature)
    with torch.no_grad():
        scores = score_ids(rm, score_rows, tok.eot_id).to(device)
    logp, ref_logp = logp.float(), ref_logp.float()
    ended = torch.tensor([float(r[-1] in stops) for r in replies], device=device)
    clipped = scores.clamp(-cfg.reward_clip, cfg.reward_clip) - cfg.no_end_penalty * (1 - ended)
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    rewards[torch.arange(len(replies), device=device), lengths - 1] += clipped
    values = values * mask
    adv, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = whiten(adv, mask) * mask
    return {"x": x, "starts": st_, "width": width, "mask": mask, "logp": logp, "values": values, "adv": adv,
            "returns": returns, "scores": scores, "rewards": rewards, "kl": kl.sum(1), "lengths": lengths.float(),
            "ended": ended, "replies": replies}


def ppo_update(policy: PolicyWithValue, opt: torch.optim.Optimizer, batch: dict, cfg: PPOConfig,
               generator: torch.Generator, rt: Runtime | None = None) -> dict:
    """`ppo_epochs` passes of minibatch updates on one rollout batch; mean statistics.

    `generator` (a CPU one) orders the minibatches."""
    rt = rt or Runtime(next(policy.parameters()).device, torch.float32)
    n = batch["x"].size(0)
    sums: dict[str, float] = {}
    count = 0
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
            for k, val in stats.items():
                sums[k] = sums.get(k, 0.0) + val
            count += 1
    return {k: v / count for k, v in sums.items()}


def train_ppo(cfg: PPOConfig, sft_ckpt: str | Path, reward_ckpt: str | Path, prompts_dir: str | Path,
              out_dir: str | Path, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Optimise the SFT policy against the reward model; write out_dir/checkpoint, log.json, log.csv.

    Prompts are the user turns of the `train` split in prompts_dir (an instructions folder).
    Returns metrics with `stopped` (None or the reason) and the last logged statistics.
    """
    t0 = time.perf_counter()
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpt, tok = load_gpt(sft_ckpt, dropout=0.0)  # no dropout: rollout and update log-probs must agree
    policy = PolicyWithValue(gpt).to(rt.device).eval()
    ref, _ = load_gpt(sft_ckpt, 0.0, rt.device)
    ref.eval().requires_grad_(False)
    rm, rm_tok = load_reward_model(reward_ckpt, rt.device)
    rm.requires_grad_(False)
    if getattr(rm_tok, "hash", None) != getattr(tok, "hash", None):
        raise ValueError(f"{reward_ckpt}: reward model tokenizer differs from the policy's ({sft_ckpt})")
    prompts = [prompt_ids(tok, next(m["content"] for m in c if m["role"] == "user"))
               for c in read_conversations(prompts_dir, "train")]
    if not prompts:
        raise ValueError(f"{prompts_dir}: no training prompts")
    opt = adamw(policy, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))
    g = torch.Generator().manual_seed(cfg.seed)  # prompt and minibatch order
    # samples are drawn on the policy's device; on a CPU from the same generator (results as before)
    sample_g = g if rt.device.type == "cpu" else rt.generator(cfg.seed)
    bar = Progress(cfg.steps, "ppo", cfg.progress, on_progress=on_progress)
    order: list[int] = []
    log: list[dict] = []
    good_state = copy.deepcopy(policy.state_dict())
    stopped = None
    for step in range(1, cfg.steps + 1):
        ts = time.perf_counter()
        if len(order) < cfg.prompts_per_step:
            order += torch.randperm(len(prompts), generator=g).tolist()
        batch_prompts = [prompts[i] for i in order[:cfg.prompts_per_step]]
        del order[:cfg.prompts_per_step]
        batch = rollout(policy, ref, rm, tok, batch_prompts, cfg, kl_ctl.value, sample_g, rt=rt)
        kl_mean = float(batch["kl"].mean())
        if not torch.isfinite(batch["scores"]).all() or kl_mean != kl_mean:
            stopped = f"step {step}: NaN in rollout scores or KL; kept the policy of step {step - 1}"
            break
        if kl_mean > cfg.kl_max:
            stopped = (f"step {step}: mean KL {kl_mean:.2f} nats per response exceeds ppo.kl_max {cfg.kl_max}; "
                       f"kept the policy of step {step - 1}")
            break
        good_state = copy.deepcopy(policy.state_dict())
        beta = kl_ctl.value
        stats = ppo_update(policy, opt, batch, cfg, g, rt)
        if stats.get("nan"):
            stopped = f"step {step}: NaN loss in the PPO update; kept the policy of step {step - 1}"
            break
        kl_ctl.update(kl_mean, len(batch["replies"]))
        rec = {"step": step, "reward": float(batch["rewards"].sum(1).mean()), "score": float(batch["scores"].mean()),
               "kl": kl_mean, "kl_coef": beta, **stats, "response_length": float(batch["lengths"].mean()),
               "end_rate": float(batch["ended"].mean()), "seconds": time.perf_counter() - ts}
        log.append(rec)
        bar.update(rec, {k: rec[k] for k in ("score", "kl", "kl_coef", "response_length")})
    else:
        good_state = policy.state_dict()
    bar.close()
    if stopped:
        print(f"PPO stopped early: {stopped}")
    policy.load_state_dict(good_state)
    ckpt = save_bundle(out_dir / "checkpoint", policy.gpt, sft_ckpt,
                       {"ppo_config": asdict(cfg), "steps": len(log), "stopped": stopped})
    st.save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}, str(ckpt / VALUE_HEAD_FILE))
    write_log(log, out_dir)
    last = log[-1] if log else {}
    metrics = {"steps": len(log), "stopped": stopped, "final_kl_coef": kl_ctl.value,
               **{f"last_{k}": last[k] for k in ("reward", "score", "kl", "response_length") if k in last},
               "first_score": log[0]["score"] if log else None, "seconds": time.perf_counter() - t0}
    (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))  # no wall times
    return metrics


def write_log(log: Sequence[dict], out_dir: Path) -> None:
    """Per-step statistics as log.json and log.csv (DVC plots), without the wall times (a DVC output)."""
    log = [split_timings(r)[0] for r in log]
    (out_dir / "log.json").write_text(json.dumps(log, indent=2))
    with open(out_dir / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(log)
