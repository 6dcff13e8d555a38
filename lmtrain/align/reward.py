"""Reward model: the SFT GPT with a scalar head on the final token, trained with Bradley-Terry.

A (prompt, response) pair is rendered as `<|endoftext|><|user|>prompt<|end|><|assistant|>response<|end|>`
(response cut to `max_response_tokens`, the turn always closed) and scored by a linear head on the
final hidden state, the `<|end|>`, which has attended to everything. Loss: -log σ(r_chosen - r_rejected
- margin). A second *judge* model grades policies so PPO is not graded by the model it optimised. It is
not the reward model's twin: it starts from the pretrained GPT (not the SFT model), with another seed,
on the other half of the comparisons (halves by prompt group, so no prompt is in both; checked). It has
the same size: the tiny GPT is the only pretrained model there is.

Both start from `init_from` (lmtrain.models.init.load_init): an lmforge checkpoint or a HF GPT-2 folder,
whose tokenizer (a GPT-2 one with the chat markers appended) is saved with the model. The judge grades
the policies' token ids, so its init must speak their tokenizer: an SFT from a HF folder needs a judge
from that folder (profiles/sft_from_hf.yaml), checked by `check_same_tokenizer` before any work.

The model, its scoring and its files are lmtrain.align.reward_model (PPO and the judge read it there);
the pairs (mirrors, the checks) are lmtrain.align.pairs, who may see which pairs lmtrain.align.splits.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmtrain.align.common import pad_batch
from lmtrain.align.pairs import encode_pair, preference_data
from lmtrain.align.reward_model import (
    RewardModel,
    bradley_terry_loss,
    load_reward_model,
    pairwise_accuracy,
    save_reward_model,
    score_ids,
)
from lmtrain.align.splits import on_side, with_groups
from lmtrain.config import ConfigError, OptimConfig
from lmtrain.data.tables import read_comparisons
from lmtrain.models.bundle import TOKENIZER_DIR
from lmtrain.models.init import load_init
from lmtrain.progress import Progress, split_timings
from lmtrain.runtime import adamw, check_finite, cosine_lr, optimizer_step, set_lr, setup
from lmtrain.tokenizer import load_tokenizer
from lmtrain.tokenizer.adopt import model_format, model_tokenizer


@dataclass
class RewardConfig(OptimConfig):
    """params.yaml `reward` section; defaults equal params.yaml's."""

    epochs: int = 4  # passes over the training pairs (~510 pairs a half + mirrors on the sample)
    batch_size: int = 8  # pairs per optimizer step
    learning_rate: float = 3e-4  # docs/LOG.md "Alignment on Shakespeare continuations"
    warmup_steps: int = 3
    dropout: float = 0.0
    margin: float = 0.0  # Bradley-Terry margin: -log σ(r_c - r_r - margin)
    mirror_pairs: bool = True  # also train on (prompt', rejected, chosen) when `rejected` is prompt''s chosen
    #                            reply (derived data): a score of the reply alone cannot fit both orders
    drop_unmirrored: bool = True  # with mirror_pairs, drop pairs that reject another prompt's reply but have no
    #                               mirror, so every reply is chosen exactly as often as rejected (no reward
    #                               for a familiar reply); pairs rejecting nobody's reply (shuffled text, human
    #                               preferences) are kept
    max_response_tokens: int = 32  # responses cut to this many tokens before the closing <|end|>
    subset: str = "half_a"  # training pairs: all | half_a | half_b (halves by a hash of the prompt's group,
    #                         lmtrain.align.splits); DPO trains on this same subset
    eval_split: str = "dev"  # held-out pairs the reported accuracy is measured on: dev | test | all
    calibration_bins: int = 5  # bins of σ(r_c - r_r) in the calibration table
    length_match_tolerance: float = 0.1  # a pair is length-matched if |len_c - len_r| <= tol * max(len)
    init_from: str = "models/sft/checkpoint"  # the GPT the reward model starts from: an lmforge checkpoint or
    #                                           a HF GPT-2 folder; its tokenizer must be the policies' (PPO checks)


@dataclass
class JudgeConfig(RewardConfig):
    """params.yaml `judge` section: a reward model that only grades policies, trained from the *pretrained*
    GPT on the half of the comparisons the reward model does not see; defaults equal params.yaml's."""

    seed: int = 4242
    subset: str = "half_b"  # must share no prompt with reward.subset (checked before any work)
    learning_rate: float = 3e-4
    epochs: int = 3  # from the pretrained GPT: dev accuracy 0.755 at 3 epochs, 0.736 at 4
    init_from: str = "models/pretrain/gpt/checkpoint"  # the pretrained GPT (not SFT); from a HF GPT-2 folder
    #                                                    when SFT starts there: the same tokenizer as the policies


def calibration_table(r_chosen: torch.Tensor, r_rejected: torch.Tensor, bins: int) -> list[dict]:
    """Pairs binned by the predicted P(first > second); each bin's mean prediction vs observed accuracy.

    Every pair is counted in both orders (chosen first, then rejected first) so the table spans 0..1.
    """
    diff = torch.cat([r_chosen - r_rejected, r_rejected - r_chosen])
    label = torch.cat([torch.ones_like(r_chosen), torch.zeros_like(r_chosen)])
    p = torch.sigmoid(diff)
    table = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        n = int(sel.sum())
        table.append({"bin": f"{lo:.2f}-{hi:.2f}", "count": n,
                      "mean_predicted": float(p[sel].mean()) if n else None,
                      "observed": float(label[sel].mean()) if n else None})
    return table


def evaluate_pairs(model: RewardModel, tok, pairs: Sequence[dict], cfg: RewardConfig) -> dict:
    """Held-out pairwise accuracy, mean margin, calibration, and accuracy on length-matched pairs."""
    if not pairs:
        return {"pairs": 0}
    pad = tok.eot_id
    chosen = [encode_pair(tok, p["prompt"], p["chosen"], cfg.max_response_tokens) for p in pairs]
    rejected = [encode_pair(tok, p["prompt"], p["rejected"], cfg.max_response_tokens) for p in pairs]
    rc, rr = score_ids(model, chosen, pad), score_ids(model, rejected, pad)  # on the CPU
    # length in characters of the full texts: what a length-biased judge would exploit
    lc = torch.tensor([len(p["chosen"]) for p in pairs], dtype=torch.float)
    lr = torch.tensor([len(p["rejected"]) for p in pairs], dtype=torch.float)
    matched = (lc - lr).abs() <= cfg.length_match_tolerance * torch.maximum(lc, lr)
    longer_chosen = lc > lr
    sources = sorted({p.get("source", "") for p in pairs})
    by_source = {s: pairwise_accuracy(rc[m], rr[m]) for s in sources
                 for m in [torch.tensor([p.get("source", "") == s for p in pairs])]} if len(sources) > 1 else {}
    return {
        "pairs": len(pairs),
        "accuracy": pairwise_accuracy(rc, rr),
        "loss": float(bradley_terry_loss(rc, rr)),
        "mean_margin": float((rc - rr).mean()),
        "length_matched_pairs": int(matched.sum()),
        "length_matched_accuracy": pairwise_accuracy(rc[matched], rr[matched]) if matched.any() else None,
        "longer_is_chosen_rate": float(longer_chosen.float().mean()),
        "calibration": calibration_table(rc, rr, cfg.calibration_bins),
        "accuracy_by_source": by_source,
        "pairs_by_source": {s: sum(p.get("source", "") == s for p in pairs) for s in by_source},
    }


def train_reward(cfg: RewardConfig, init_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
                 out_dir: str | Path, eval_prompts_dir: str | Path | None = None, not_subset: str | None = None,
                 who: str = "reward model", on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train a reward model from the bundle `init_ckpt` on cfg.subset of the comparisons; save it to
    out_dir/checkpoint. Returns held-out metrics on the cfg.eval_split side (`accuracy`,
    `length_matched_accuracy`, ...).

    Before any work the fitted pairs are checked against the held-out comparisons, the evaluation prompts
    (`eval_prompts_dir`) and the pairs of `not_subset` (lmtrain.align.pairs.preference_data).
    """
    t0 = time.perf_counter()
    fit_pairs, eval_pairs, info = preference_data(train_dir, eval_dir, cfg.subset, cfg.eval_split, cfg.mirror_pairs,
                                                  cfg.drop_unmirrored, who, eval_prompts_dir, not_subset)
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    backbone, tok = load_init(init_ckpt, "gpt", cfg.dropout, f"{who.split()[0]}.init_from")
    model = RewardModel(backbone).to(rt.device).train()
    pad = tok.eot_id
    rows = [(encode_pair(tok, p["prompt"], p["chosen"], cfg.max_response_tokens)[-backbone.block_size:],
             encode_pair(tok, p["prompt"], p["rejected"], cfg.max_response_tokens)[-backbone.block_size:])
            for p in fit_pairs]
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = adamw(model, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    g = torch.Generator().manual_seed(cfg.seed)  # data order: a CPU generator, the same on every device
    history, step = [], 0
    bar = Progress(total, who.split()[0], cfg.progress, on_progress=on_progress)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(rows), generator=g).tolist()
        for b in range(steps_per_epoch):
            chunk = [rows[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            both = [c for c, _ in chunk] + [r for _, r in chunk]  # one forward for chosen and rejected
            lengths = torch.tensor([len(x) for x in both])
            with rt.autocast():
                scores = model(rt.to_device(pad_batch(both, pad)), rt.to_device(lengths)).float()
            rc, rr = scores[:len(chunk)], scores[len(chunk):]
            loss = bradley_terry_loss(rc, rr, cfg.margin)
            check_finite(loss, who, step, f"lower {'judge' if who == 'judge' else 'reward'}.learning_rate")
            set_lr(opt, cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio))
            loss.backward()
            optimizer_step(opt, model.parameters(), cfg.grad_clip)
            step += 1
            rec = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": pairwise_accuracy(rc, rr)}
            history.append(rec)
            bar.update(rec)
    bar.close()
    model.eval()
    metrics = evaluate_pairs(model, tok, eval_pairs, cfg)
    metrics.update(train_accuracy=evaluate_pairs(model, tok, fit_pairs, cfg)["accuracy"],
                   train_pairs=len(fit_pairs), **info, subset=cfg.subset, seed=cfg.seed, steps=step,
                   init=str(init_ckpt), seconds=time.perf_counter() - t0)
    stable = split_timings(metrics)[0]  # the model folder is a DVC output: no wall times in it
    tok_source = init_ckpt if model_format(init_ckpt) == "lmforge" else tok  # a HF folder: the adopted tokenizer
    save_reward_model(Path(out_dir) / "checkpoint", model, tok_source, {"reward_config": asdict(cfg), **stable})
    (Path(out_dir) / "metrics.json").write_text(json.dumps(stable, indent=2))
    (Path(out_dir) / "history.json").write_text(json.dumps(history))
    return metrics


def train_judge(cfg: JudgeConfig, pretrain_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
                out_dir: str | Path, reward_subset: str, eval_prompts_dir: str | Path | None = None,
                on_progress: Callable[[dict], None] | None = None) -> dict:
    """The judge: `train_reward` from the pretrained model `pretrain_ckpt` (cfg.init_from in the DAG) on
    cfg.subset, which must share no prompt with the reward model's `reward_subset` (only ever used to grade
    policies)."""
    return train_reward(cfg, pretrain_ckpt, train_dir, eval_dir, out_dir, eval_prompts_dir, not_subset=reward_subset,
                        who="judge", on_progress=on_progress)


def check_same_tokenizer(init_from: str | Path, policy_ckpt: str | Path, setting: str = "judge.init_from") -> None:
    """Fail before any work unless the model at `init_from` comes with the tokenizer of the checkpoint
    `policy_ckpt` (a bundle: the reward model or SFT), whose token ids the judge will score."""
    ours, theirs = model_tokenizer(init_from, setting), load_tokenizer(Path(policy_ckpt) / TOKENIZER_DIR)
    if ours.hash != theirs.hash:
        raise ConfigError(
            f"{setting}: the model at {init_from} has a tokenizer of {ours.vocab_size} tokens ({ours.hash[:12]}) but "
            f"{policy_ckpt} has {theirs.vocab_size} ({theirs.hash[:12]}): the judge scores the policies' token ids, "
            "so it must start from a model with their tokenizer; set it to the model sft.init_from names (a HF "
            "GPT-2 folder: the folder itself) or to a pretrained checkpoint trained with that tokenizer")


def reward_model_agreement(ckpt_a: str | Path, ckpt_b: str | Path, eval_dir: str | Path, eval_split: str,
                           max_response_tokens: int) -> dict:
    """Whether two reward models mirror each other on the held-out pairs of one side: the share of pairs
    they order alike, the share both get wrong (shared blind spots), the correlation of their margins."""
    pairs = on_side(with_groups(read_comparisons(eval_dir, "eval"), eval_dir), eval_split)
    if not pairs:
        return {"pairs": 0}
    margins = []
    for ckpt in (ckpt_a, ckpt_b):
        model, tok = load_reward_model(ckpt)
        ids = [[encode_pair(tok, p["prompt"], p[k], max_response_tokens) for p in pairs] for k in ("chosen", "rejected")]
        margins.append(score_ids(model, ids[0], tok.eot_id) - score_ids(model, ids[1], tok.eot_id))
    a, b = margins
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1] if len(pairs) > 1 else torch.tensor(float("nan"))
    return {"pairs": len(pairs), "same_order": float(((a > 0) == (b > 0)).float().mean()),
            "both_wrong": float(((a <= 0) & (b <= 0)).float().mean()), "margin_correlation": float(corr)}
