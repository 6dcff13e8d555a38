"""Direct preference optimisation (Rafailov et al. 2023) from the SFT checkpoint on the comparisons.

loss = -log σ(β·[(log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x))]), with the
log-probabilities summed over the reply tokens (responses cut to max_response_tokens, closed by
`<|end|>` as in the reward model). It trains on exactly the reward model's half of the comparisons, so
PPO and DPO learn from the same preferences and neither from the judge's. The reference's
log-probabilities are computed once up front, in chunks; each optimizer step's pairs go through the policy in micro-batches of `micro_batch_size`
pairs (chosen and rejected together) with gradient accumulation, so memory stays bounded at any
vocabulary size.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from lmtrain.align.common import sequence_logprobs
from lmtrain.align.pairs import preference_data
from lmtrain.config import OptimConfig
from lmtrain.models.bundle import load_gpt, save_bundle
from lmtrain.models.gpt import GPT
from lmtrain.progress import Progress, split_timings
from lmtrain.runtime import Runtime, adamw, check_finite, cosine_lr, optimizer_step, set_lr, setup
from lmtrain.tokenizer.chat import prompt_ids, response_ids


@dataclass
class DPOConfig(OptimConfig):
    """params.yaml `dpo` section (TRL's DPOConfig names where they exist); defaults equal params.yaml's."""

    beta: float = 0.1  # strength of the implicit KL constraint
    label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped labels
    epochs: int = 1  # one epoch over the reward model's half (~600 pairs with mirrors on the sample)
    batch_size: int = 8  # pairs per optimizer step
    micro_batch_size: int = 0  # pairs per forward pass (gradient accumulation); 0 = the whole batch
    eval_batch_size: int = 32  # pairs per forward pass of the reference and of held-out scoring
    learning_rate: float = 1e-4
    warmup_steps: int = 3
    max_response_tokens: int = 64
    eval_split: str = "dev"  # held-out pairs for eval_loss / eval_reward_accuracy: dev | test | all
    mirror_pairs: bool = True  # as RewardConfig.mirror_pairs: the policy must read the prompt
    drop_unmirrored: bool = True  # as RewardConfig.drop_unmirrored


def dpo_loss(pi_chosen: torch.Tensor, pi_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, implicit reward of chosen, of rejected) from summed reply log-probs (B,) each."""
    logits = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    loss = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return loss.mean(), beta * (pi_chosen - ref_chosen).detach(), beta * (pi_rejected - ref_rejected).detach()


@torch.no_grad()
def pair_logprobs(model: GPT, rows: list[tuple], pad: int, chunk: int, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed reply log-probs (chosen, rejected) of every pair, `chunk` pairs per forward pass."""
    chosen, rejected = [], []
    for i in range(0, len(rows), max(1, chunk)):
        part = rows[i:i + max(1, chunk)]
        with rt.autocast():
            chosen.append(sequence_logprobs(model, [c for c, _ in part], pad).float())
            rejected.append(sequence_logprobs(model, [r for _, r in part], pad).float())
    return torch.cat(chosen), torch.cat(rejected)


def train_dpo(cfg: DPOConfig, sft_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
              out_dir: str | Path, subset: str = "half_a", eval_prompts_dir: str | Path | None = None,
              on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train a DPO policy from the SFT bundle on `subset` of the comparisons (the reward model's:
    reward.subset); write out_dir/checkpoint and metrics.json. Disjointness is checked before any work."""
    t0 = time.perf_counter()
    fit, held_pairs, info = preference_data(train_dir, eval_dir, subset, cfg.eval_split, cfg.mirror_pairs,
                                            cfg.drop_unmirrored, "DPO", eval_prompts_dir)
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    policy, tok = load_gpt(sft_ckpt, 0.0, rt.device)
    ref, _ = load_gpt(sft_ckpt, 0.0, rt.device)
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

    train, held = encode(fit), encode(held_pairs)
    ref_c, ref_r = pair_logprobs(ref, train, pad, cfg.eval_batch_size, rt)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    micro = cfg.micro_batch_size or cfg.batch_size
    opt = adamw(policy, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    g = torch.Generator().manual_seed(cfg.seed)  # data order: a CPU generator, the same on every device
    policy.eval()  # dropout off: the policy/reference log-ratio must be exactly 0 at the start
    history, step = [], 0
    bar = Progress(total, "dpo", cfg.progress, on_progress=on_progress)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=g)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            set_lr(opt, cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio))
            loss_sum, rew_c, rew_r = torch.zeros((), device=rt.device), [], []
            for m in range(0, len(idx), micro):
                part = idx[m:m + micro]
                chunk = [train[i] for i in part.tolist()]
                with rt.autocast():
                    both = sequence_logprobs(policy, [c for c, _ in chunk] + [r for _, r in chunk], pad).float()
                loss, rc, rr = dpo_loss(both[:len(chunk)], both[len(chunk):], ref_c[part].to(rt.device),
                                        ref_r[part].to(rt.device), cfg.beta, cfg.label_smoothing)
                (loss * len(chunk) / len(idx)).backward()  # the batch mean, accumulated over micro-batches
                loss_sum += loss.detach() * len(chunk) / len(idx)
                rew_c.append(rc)
                rew_r.append(rr)
            check_finite(loss_sum, "DPO", step, "lower dpo.learning_rate")
            optimizer_step(opt, policy.parameters(), cfg.grad_clip)
            step += 1
            rc, rr = torch.cat(rew_c), torch.cat(rew_r)
            rec = {"step": step, "loss": loss_sum.item(), "reward_accuracy": float((rc > rr).float().mean()),
                   "reward_margin": float((rc - rr).mean())}
            history.append(rec)
            bar.update(rec)
    bar.close()
    metrics: dict = {"steps": step, "train_pairs": len(train), **info, "subset": subset, "eval_pairs": len(held),
                     "train_loss": history[-1]["loss"] if history else None}
    if held:
        hc, hr = pair_logprobs(ref, held, pad, cfg.eval_batch_size, rt)
        pc, pr_ = pair_logprobs(policy, held, pad, cfg.eval_batch_size, rt)
        loss, rc, rr = dpo_loss(pc, pr_, hc, hr, cfg.beta, cfg.label_smoothing)
        metrics.update(eval_loss=float(loss), eval_reward_accuracy=float((rc > rr).float().mean()),
                       eval_reward_margin=float((rc - rr).mean()))
    metrics["seconds"] = time.perf_counter() - t0
    out_dir = Path(out_dir)
    save_bundle(out_dir / "checkpoint", policy, sft_ckpt, {"dpo_config": asdict(cfg), "subset": subset, "steps": step})
    (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))  # no wall times
    (out_dir / "history.json").write_text(json.dumps(history))
    return metrics
