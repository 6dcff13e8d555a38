"""What the on-policy methods (PPO, RLOO) share: the rollout config base, the training prompts (checked
against the held-out ones), sampling and scoring a batch of replies at the rollout temperature, the
loop (prompt order, NaN / KL guard keeping the last good policy, a checkpoint every N steps) and the
per-step log. Each method's module holds only its rollout statistics and its loss.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from lmtrain.align.common import pad_batch, rollout_sampling_error, token_logprobs
from lmtrain.align.reward_model import RewardModel, score_ids
from lmtrain.align.splits import assert_disjoint, conversation_rows, eval_prompts
from lmtrain.config import ConfigError, OptimConfig
from lmtrain.data.tables import read_conversations
from lmtrain.inference.generate import generate_replies
from lmtrain.models.bundle import save_bundle
from lmtrain.models.gpt import GPT
from lmtrain.progress import Progress, split_timings
from lmtrain.runtime import Runtime
from lmtrain.tokenizer.chat import prompt_ids, stop_ids

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class RolloutConfig(OptimConfig):
    """Fields every on-policy method's params section has (PPOConfig, RLOOConfig extend it)."""

    section: ClassVar[str] = "rollout"  # the params.yaml section, named in config errors
    steps: int = 60  # iterations (one rollout batch + its updates each)
    prompts_per_step: int = 4  # distinct training prompts per rollout batch
    samples_per_prompt: int = 4  # replies per prompt (they share one KV cache)
    max_new_tokens: int = 32  # reply length cap
    temperature: float = 1.0  # rollout sampling; log-probs, ratio and KL are scored at this temperature too
    top_k: int = 0  # must stay 0 (off): the scored distribution must be the sampled one
    top_p: float = 1.0  # must stay 1.0 (off), as top_k
    reward_clip: float = 5.0  # reward-model scores clipped to ±reward_clip
    no_end_penalty: float = 0.0  # subtracted from the score of a reply that never emitted <|end|>; 0 = off
    kl_max: float = 10.0  # stop (keeping the last good policy) when mean KL per response exceeds this
    checkpoint_every: int = 0  # save the policy every N steps under checkpoints/step_XXXX; 0 = off

    def __post_init__(self) -> None:
        why = rollout_sampling_error(self.section, self.temperature, self.top_k, self.top_p)
        if why:
            raise ConfigError(why)
        if self.checkpoint_every < 0:
            raise ConfigError(f"params {self.section}.checkpoint_every: {self.checkpoint_every} (0 = off, N > 0 = "
                              "every N steps)")


@dataclass
class Rollouts:
    """A batch of sampled replies: prompt + reply rows right-padded in `x`, replies grouped by prompt
    (rows p·n … p·n + n - 1 answer prompt p), reply tokens left-aligned in (B, width) tensors."""

    x: torch.Tensor  # (B, L) prompt + reply ids, right-padded
    starts: torch.Tensor  # (B,) index of each row's first reply token
    width: int  # longest reply
    mask: torch.Tensor  # (B, width) 1 on reply tokens
    lengths: torch.Tensor  # (B,) reply lengths (float)
    ended: torch.Tensor  # (B,) 1 where the reply stopped at a stop token
    replies: list[list[int]]
    score_rows: list[list[int]]  # prompt + reply closed with <|end|>: what the reward model reads


def training_prompts(tok, prompts_dir: str | Path, held_out_dir: str | Path | None, what: str) -> list[list[int]]:
    """Prompt ids of the `train` split's first user turns; fails (OverlapError) before any work if one of
    them, or its (prompt, reply) pair, is among the held-out prompts (`held_out_dir`, else prompts_dir's
    `eval` split)."""
    convs = read_conversations(prompts_dir, "train")
    if not convs:
        raise ValueError(f"{prompts_dir}: no training prompts (split 'train')")
    rows = conversation_rows(convs)
    held_out = eval_prompts(held_out_dir or prompts_dir, "all")
    assert_disjoint(rows, held_out, (f"{what} training prompts ({prompts_dir})",
                                     f"held-out prompts ({held_out_dir or prompts_dir})"))
    return [prompt_ids(tok, r["prompt"]) for r in rows]


def sample_rollouts(model: GPT, tok, prompts: Sequence[list[int]], cfg: RolloutConfig, generator: torch.Generator,
                    rt: Runtime, use_cache: bool = True) -> Rollouts:
    """`cfg.samples_per_prompt` replies to each prompt, sampled at `cfg.temperature` with `generator`."""
    device = next(model.parameters()).device
    stops, end_id = stop_ids(tok), tok.special_tokens["<|end|>"]
    seqs, starts, replies, score_rows = [], [], [], []
    for p in prompts:
        p = p[-(model.block_size - cfg.max_new_tokens):]
        with rt.autocast():
            replies_p = generate_replies(model, p, cfg.samples_per_prompt, cfg.max_new_tokens, stops,
                                         cfg.temperature, 0, 1.0, generator, use_cache)
        for r in replies_p:
            seqs.append(p + r)
            starts.append(len(p))
            replies.append(r)
            score_rows.append(p + (r if r[-1] == end_id else r + [end_id]))  # the RM reads a closed turn
    lengths = torch.tensor([len(r) for r in replies], device=device)
    width = max(len(r) for r in replies)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()
    ended = torch.tensor([float(r[-1] in stops) for r in replies], device=device)
    return Rollouts(pad_batch(seqs, tok.eot_id).to(device), torch.tensor(starts, device=device), width, mask,
                    lengths.float(), ended, replies, score_rows)


def reply_positions(seqs: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) positions whose logits predict the reply tokens (the logits at p predict token p + 1)."""
    j = torch.arange(width, device=seqs.device)
    return (starts[:, None] - 1 + j[None, :]).clamp(max=seqs.size(1) - 2)


def reply_logits(logits: torch.Tensor, seqs: torch.Tensor, starts: torch.Tensor,
                 width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (B, width, V), target ids (B, width), positions (B, width)) of the reply tokens, left-aligned."""
    pos = reply_positions(seqs, starts, width)
    lg = torch.gather(logits, 1, pos[:, :, None].expand(-1, -1, logits.size(-1)))
    return lg, torch.gather(seqs, 1, pos + 1), pos


def reply_logprobs(model: GPT, ro: Rollouts, temperature: float, rt: Runtime) -> torch.Tensor:
    """(B, width) fp32 log-probs of the reply tokens under softmax(logits / temperature); 0 past each end."""
    with rt.autocast():
        logits, _ = model(ro.x)
        lg, targets, _ = reply_logits(logits, ro.x, ro.starts, ro.width)
        logp = token_logprobs(lg, targets, temperature)
    return logp.float() * ro.mask


def reward_scores(rm: RewardModel, ro: Rollouts, pad: int, cfg: RolloutConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw reward-model scores, scores clipped to ±reward_clip less the no-end penalty), both (B,)."""
    with torch.no_grad():
        scores = score_ids(rm, ro.score_rows, pad).to(ro.mask.device)
    return scores, scores.clamp(-cfg.reward_clip, cfg.reward_clip) - cfg.no_end_penalty * (1 - ro.ended)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"step_{step:04d}"


def saved_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of the checkpoints a run saved every N steps, by step."""
    folder = Path(out_dir) / CHECKPOINTS_DIR
    found = [(int(p.name.removeprefix("step_")), p) for p in folder.glob("step_*") if p.is_dir()] if folder.is_dir() else []
    return sorted(found)


def run_policy_loop(cfg: RolloutConfig, name: str, policy: nn.Module, gpt: GPT, prompts: Sequence[list[int]],
                    rollout_fn: Callable[[list[list[int]]], dict], update_fn: Callable[[dict], dict | None],
                    order_g: torch.Generator, out_dir: Path, sft_ckpt: str | Path, meta: dict,
                    on_progress: Callable[[dict], None] | None = None) -> tuple[list[dict], str | None, Path]:
    """The loop both methods run; returns (per-step log, why it stopped or None, final checkpoint folder).

    Each step draws `prompts_per_step` prompts (a fresh permutation from `order_g` when the last runs
    out), calls `rollout_fn(prompts)` (a dict with per-reply "scores", "kl", "lengths", "ended") and,
    unless a score or the KL is NaN or the mean KL exceeds kl_max, `update_fn(batch)` (statistics, or
    None for a NaN loss). On a stop the policy of the step before is kept. The policy after every
    `checkpoint_every`-th update is saved under checkpoints/step_XXXX once its own rollout passed the
    guard (so a saved checkpoint never exceeds kl_max on its rollout); the final policy is saved as
    out_dir/checkpoint with `meta`, its step count and the stop reason.
    """
    shutil.rmtree(Path(out_dir) / CHECKPOINTS_DIR, ignore_errors=True)  # a rerun keeps no older run's steps
    bar = Progress(cfg.steps, name, cfg.progress, on_progress=on_progress)
    order: list[int] = []
    log: list[dict] = []
    good_state = copy.deepcopy(policy.state_dict())
    stopped = None
    for step in range(1, cfg.steps + 1):
        ts = time.perf_counter()
        if len(order) < cfg.prompts_per_step:
            order += torch.randperm(len(prompts), generator=order_g).tolist()
        batch_prompts = [prompts[i] for i in order[:cfg.prompts_per_step]]
        del order[:cfg.prompts_per_step]
        batch = rollout_fn(batch_prompts)
        kl_mean = float(batch["kl"].mean())
        if not torch.isfinite(batch["scores"]).all() or kl_mean != kl_mean:
            stopped = f"step {step}: NaN in rollout scores or KL; kept the policy of step {step - 1}"
            break
        if kl_mean > cfg.kl_max:
            stopped = (f"step {step}: mean KL {kl_mean:.2f} nats per response exceeds {cfg.section}.kl_max "
                       f"{cfg.kl_max}; kept the policy of step {step - 1}")
            break
        good_state = copy.deepcopy(policy.state_dict())
        if cfg.checkpoint_every and step > 1 and (step - 1) % cfg.checkpoint_every == 0:
            save_bundle(checkpoint_dir(out_dir, step - 1), gpt, sft_ckpt, {"method": name, "step": step - 1})
        stats = update_fn(batch)
        if stats is None:
            stopped = f"step {step}: NaN loss in the {name} update; kept the policy of step {step - 1}"
            break
        rec = {"step": step, "score": float(batch["scores"].mean()), "kl": kl_mean, **stats,
               "response_length": float(batch["lengths"].mean()), "end_rate": float(batch["ended"].mean()),
               "seconds": time.perf_counter() - ts}
        log.append(rec)
        bar.update(rec, {k: rec[k] for k in ("score", "kl", "response_length") if k in rec})
    else:
        good_state = policy.state_dict()
        if cfg.checkpoint_every and cfg.steps % cfg.checkpoint_every == 0:
            save_bundle(checkpoint_dir(out_dir, cfg.steps), gpt, sft_ckpt, {"method": name, "step": cfg.steps})
    bar.close()
    if stopped:
        print(f"{name.upper()} stopped early: {stopped}")
    policy.load_state_dict(good_state)
    ckpt = save_bundle(out_dir / "checkpoint", gpt, sft_ckpt, {**meta, "steps": len(log), "stopped": stopped})
    return log, stopped, ckpt


def mean_stats(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each statistic's mean over an update's minibatch steps (what PPO's and RLOO's updates report)."""
    return {k: sum(s[k] for s in steps) / len(steps) for k in steps[0]} if steps else {}


def loop_metrics(log: Sequence[dict], stopped: str | None, out_dir: Path, keys: Sequence[str]) -> dict:
    """The metrics both methods report: steps, stop reason, first score, the last step's `keys`, saved steps."""
    last = log[-1] if log else {}
    return {"steps": len(log), "stopped": stopped,
            **{f"last_{k}": last[k] for k in keys if k in last},
            "first_score": log[0]["score"] if log else None,
            "checkpoint_steps": [s for s, _ in saved_checkpoints(out_dir)]}


def write_log(log: Sequence[dict], out_dir: Path, fields: Sequence[str]) -> None:
    """Per-step statistics as log.json and log.csv (DVC plots), without the wall times (a DVC output)."""
    log = [split_timings(r)[0] for r in log]
    (out_dir / "log.json").write_text(json.dumps(log, indent=2))
    with open(out_dir / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(log)
