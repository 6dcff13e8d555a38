"""Direct preference optimisation (Rafailov et al. 2023) from the SFT checkpoint on the comparisons.

loss = -log σ(β·[(log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))]), with the
log-probabilities summed over the reply tokens (responses cut to max_response_tokens, closed by
`<|end|>` as in the reward model). The reference's log-probabilities are computed once up front.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from lmtrain.model import GPT
from lmtrain.reward import select_subset, training_pairs
from lmtrain.sft import (
    cosine_lr,
    load_gpt,
    pad_batch,
    prompt_ids,
    read_comparisons,
    response_ids,
    save_bundle,
    token_logprobs,
)


@dataclass
class DPOConfig:
    """params.yaml `dpo` section (TRL's DPOConfig names where they exist)."""

    beta: float = 0.1  # strength of the implicit KL constraint
    label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped labels
    epochs: int = 6
    batch_size: int = 8  # pairs per optimizer step
    learning_rate: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 3
    grad_clip: float = 1.0
    max_response_tokens: int = 64
    subset: str = "all"  # all | half_a | half_b (see lmtrain.reward.select_subset)
    mirror_pairs: bool = True  # as RewardConfig.mirror_pairs: the policy must read the prompt
    drop_unmirrored: bool = True  # as RewardConfig.drop_unmirrored
    seed: int = 1337
    threads: int = 0


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, implicit reward of chosen, of rejected) from summed reply log-probs (B,) each."""
    logits = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    loss = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return loss.mean(), beta * (pi_chosen - ref_chosen).detach(), beta * (pi_rejected - ref_rejected).detach()


def sequence_logprobs(model: GPT, rows: Sequence[tuple[list[int], int]], pad: int) -> torch.Tensor:
    """Sum of log p over each row's reply tokens; rows are (ids, prompt length)."""
    x = pad_batch([ids for ids, _ in rows], pad)
    logits, _ = model(x[:, :-1])
    logp = token_logprobs(logits, x[:, 1:])
    pos = torch.arange(x.size(1) - 1)[None, :]
    starts = torch.tensor([n for _, n in rows])[:, None]
    ends = torch.tensor([len(ids) for ids, _ in rows])[:, None]
    mask = (pos >= starts - 1) & (pos < ends - 1)  # positions whose next token is a reply token
    return (logp * mask).sum(1)


def train_dpo(cfg: DPOConfig, sft_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
              out_dir: str | Path, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train a DPO policy from the SFT bundle; write out_dir/checkpoint and metrics.json."""
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    policy, tok = load_gpt(sft_ckpt, dropout=0.0)
    ref, _ = load_gpt(sft_ckpt, dropout=0.0)
    ref.eval().requires_grad_(False)
    pad, block = tok.eot_id, policy.block_size

    def encode(pairs: list[dict]) -> list[tuple]:
        out = []
        for p in pairs:
            pr = prompt_ids(tok, p["prompt"])
            c, r = (pr + response_ids(tok, p[k], cfg.max_response_tokens) for k in ("chosen", "rejected"))
            # crop the prompt's start if needed, so the replies stay whole
            cut = max(0, max(len(c), len(r)) - block)
            out.append(((c[cut:], len(pr) - cut), (r[cut:], len(pr) - cut)))
        return out

    held_pairs = read_comparisons(eval_dir, "eval")
    all_train = read_comparisons(train_dir, "train")
    fit, info = training_pairs(select_subset(all_train, cfg.subset), held_pairs, cfg.mirror_pairs,
                               cfg.drop_unmirrored, replies={p["chosen"] for p in all_train + held_pairs})
    train, held = encode(fit), encode(held_pairs)
    if not train:
        raise ValueError(f"{train_dir}: no training comparisons in subset {cfg.subset!r}")

    def ref_logps(rows: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return (sequence_logprobs(ref, [c for c, _ in rows], pad),
                    sequence_logprobs(ref, [r for _, r in rows], pad))

    ref_c, ref_r = ref_logps(train)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    policy.eval()  # dropout off: the policy/reference log-ratio must be exactly 0 at the start
    history, step = [], 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            chunk = [train[i] for i in idx.tolist()]
            both = sequence_logprobs(policy, [c for c, _ in chunk] + [r for _, r in chunk], pad)
            loss, rew_c, rew_r = dpo_loss(both[:len(chunk)], both[len(chunk):], ref_c[idx], ref_r[idx],
                                          cfg.beta, cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"DPO loss is {float(loss)} at step {step}; lower dpo.learning_rate")
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            rec = {"step": step, "loss": loss.item(), "reward_accuracy": float((rew_c > rew_r).float().mean()),
                   "reward_margin": float((rew_c - rew_r).mean())}
            history.append(rec)
            if on_progress is not None:
                on_progress({**rec, "max_steps": total})
    metrics: dict = {"steps": step, "train_pairs": len(train), **info, "train_loss": history[-1]["loss"] if history else None}
    if held:
        hc, hr = ref_logps(held)
        with torch.no_grad():
            pc = sequence_logprobs(policy, [c for c, _ in held], pad)
            pr_ = sequence_logprobs(policy, [r for _, r in held], pad)
        loss, rc, rr = dpo_loss(pc, pr_, hc, hr, cfg.beta, cfg.label_smoothing)
        metrics.update(eval_loss=float(loss), eval_reward_accuracy=float((rc > rr).float().mean()),
                       eval_reward_margin=float((rc - rr).mean()))
    metrics["seconds"] = time.perf_counter() - t0
    out_dir = Path(out_dir)
    save_bundle(out_dir / "checkpoint", policy, sft_ckpt, {"dpo_config": asdict(cfg), "steps": step})
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "history.json").write_text(json.dumps(history))
    return metrics
