"""Reward model: the SFT GPT with a scalar head on the final token, trained with Bradley-Terry.

A (prompt, response) pair is rendered as `<|endoftext|><|user|>prompt<|end|><|assistant|>response<|end|>`
(response cut to `max_response_tokens`, the turn always closed) and scored by a linear head on the
final hidden state, the `<|end|>`, which has attended to everything. Loss: -log σ(r_chosen - r_rejected
- margin). A second *judge* model, trained on the other half of the pairs with another seed, grades
policies so PPO is not graded by the model it optimised.

Saved as a bundle (lmtrain.checkpoint + tokenizer/) plus `reward_head.safetensors` and `reward.json`;
no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch as st
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.model import GPT
from lmtrain.sft import (
    cosine_lr,
    hidden_states,
    load_gpt,
    pad_batch,
    prompt_ids,
    read_comparisons,
    response_ids,
    save_bundle,
)

SUBSETS = ("all", "half_a", "half_b")
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward.json"


@dataclass
class RewardConfig:
    """params.yaml `reward` section (the judge uses the same fields, with judge_seed / judge_subset)."""

    epochs: int = 30  # passes over the training pairs (a half holds ~10-15 mirrorable pairs on the sample)
    batch_size: int = 8  # pairs per optimizer step
    learning_rate: float = 1e-4  # 3e-4 and 1e-3 overfit the ~30 pairs of a half (held-out 0.64, 0.47 vs 0.70)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dropout: float = 0.0
    margin: float = 0.0  # Bradley-Terry margin: -log σ(r_c - r_r - margin)
    mirror_pairs: bool = True  # also train on (prompt', rejected, chosen) when `rejected` is prompt''s chosen
    #                            reply (derived data): a score of the reply alone cannot fit both orders
    drop_unmirrored: bool = True  # with mirror_pairs, drop pairs that reject another prompt's reply but have no
    #                               mirror, so every reply is chosen exactly as often as rejected (no reward
    #                               for a familiar reply); pairs rejecting nobody's reply (shuffled text, human
    #                               preferences) are kept
    max_response_tokens: int = 32  # responses cut to this many tokens before the closing <|end|>
    seed: int = 1337
    subset: str = "half_a"  # training pairs: all | half_a | half_b (halves split by a hash of the pair id)
    judge_seed: int = 4242
    judge_subset: str = "half_b"  # the judge's half: disjoint from `subset`
    calibration_bins: int = 5  # bins of σ(r_c - r_r) in the calibration table
    length_match_tolerance: float = 0.1  # a pair is length-matched if |len_c - len_r| <= tol * max(len)
    threads: int = 0


class RewardModel(nn.Module):
    """GPT backbone + linear head reading the hidden state of each row's last real token."""

    def __init__(self, backbone: GPT) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(backbone.config.n_embd + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of right-padded rows idx (B, T) whose real lengths are `lengths`."""
        h = hidden_states(self.backbone, idx)
        last = h[torch.arange(idx.size(0), device=idx.device), lengths - 1]
        return self.head(last).squeeze(-1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean -log σ(r_chosen - r_rejected - margin)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return float((r_chosen > r_rejected).float().mean())


def pair_half(pair_id: str) -> str:
    """'half_a' or 'half_b' by a stable hash of the id, so the two halves never share a pair."""
    return "half_a" if hashlib.sha256(pair_id.encode()).digest()[0] % 2 == 0 else "half_b"


def select_subset(pairs: Sequence[dict], subset: str) -> list[dict]:
    """The pairs of one subset (all | half_a | half_b)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r} is not one of {SUBSETS}")
    return list(pairs) if subset == "all" else [p for p in pairs if pair_half(p["id"]) == subset]


def mirror(pairs: Sequence[dict]) -> list[dict]:
    """For each pair whose rejected text is another pair's chosen text, the swapped pair under that prompt.

    Derived comparisons ("right answer vs another topic's answer") let a reward model rank replies
    while ignoring the prompt; the mirrored pair contradicts any such ranking, so the prompt must be
    read. Human preference data rarely reuses a reply across prompts, and then nothing is added.
    """
    prompt_of = {}
    for p in pairs:
        prompt_of.setdefault(p["chosen"], p["prompt"])
    return [{"id": p["id"] + "/mirror", "prompt": prompt_of[p["rejected"]], "chosen": p["rejected"],
             "rejected": p["chosen"]}
            for p in pairs if p["rejected"] in prompt_of and prompt_of[p["rejected"]] != p["prompt"]]


def training_pairs(train: Sequence[dict], heldout: Sequence[dict], mirror_pairs: bool, drop_unmirrored: bool,
                   replies: set[str] | None = None) -> tuple[list[dict], dict]:
    """The pairs to fit and counts: held-out answers removed from training, then mirrors (see RewardConfig).

    `replies` are the texts that are some pair's *chosen* reply (default: those of `train` and `heldout`;
    pass the whole training set's when `train` is one half). With `drop_unmirrored`, a pair whose rejected
    text is such a reply but has no mirror is dropped (a reply-only score could fit it); a pair whose
    rejected text is nobody's reply (a corrupted text, a human's rejected answer) is kept.
    """
    # a held-out answer must never be a training text (it would be learnt as "bad" when it is rejected)
    answers = {p["chosen"] for p in heldout}
    kept = [p for p in train if p["rejected"] not in answers and p["chosen"] not in answers]
    fit, mirrors = kept, []
    if mirror_pairs:
        mirrors = mirror(kept)
        if drop_unmirrored and mirrors:
            has = {m["id"].removesuffix("/mirror") for m in mirrors}
            pool = replies if replies is not None else {p["chosen"] for p in train} | answers
            fit = [p for p in kept if p["id"] in has or p["rejected"] not in pool]
        fit = fit + mirrors
    return fit, {"given_pairs": len(kept), "mirrored_pairs": len(mirrors),
                 "heldout_overlap_dropped": len(train) - len(kept)}


def encode_pair(tok, prompt: str, response: str, max_response_tokens: int) -> list[int]:
    """Rendered ids of prompt + response, the assistant turn closed by `<|end|>`."""
    return prompt_ids(tok, prompt) + response_ids(tok, response, max_response_tokens)


def score_ids(model: RewardModel, rows: Sequence[Sequence[int]], pad: int, batch_size: int = 32) -> torch.Tensor:
    """Scores of token rows (each cropped to the backbone's block, keeping its end), no gradient."""
    block = model.backbone.block_size
    rows = [list(r)[-block:] for r in rows]
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            out.append(model(pad_batch(chunk, pad), torch.tensor([len(r) for r in chunk])))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


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
    rc, rr = score_ids(model, chosen, pad), score_ids(model, rejected, pad)
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


def train_reward(cfg: RewardConfig, sft_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
                 out_dir: str | Path, seed: int | None = None, subset: str | None = None,
                 on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train a reward model from the SFT bundle on comparisons; save it to out_dir/checkpoint.

    `seed`/`subset` override cfg.seed/cfg.subset: the judge is `train_reward(cfg, ..., seed=cfg.judge_seed,
    subset=cfg.judge_subset)`. Returns held-out metrics (`accuracy`, `length_matched_accuracy`, ...).
    """
    t0 = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    subset = cfg.subset if subset is None else subset
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    backbone, tok = load_gpt(sft_ckpt, cfg.dropout)
    model = RewardModel(backbone).train()
    pad = tok.eot_id
    all_train = read_comparisons(train_dir, "train")
    train_pairs = select_subset(all_train, subset)
    eval_pairs = read_comparisons(eval_dir, "eval")
    if not train_pairs:
        raise ValueError(f"{train_dir}: no training comparisons in subset {subset!r}")
    fit_pairs, info = training_pairs(train_pairs, eval_pairs, cfg.mirror_pairs, cfg.drop_unmirrored,
                                     replies={p["chosen"] for p in all_train + eval_pairs})
    if not fit_pairs:
        raise ValueError(f"{train_dir}: no training comparisons left in subset {subset!r} after dropping "
                         f"{info['heldout_overlap_dropped']} that share a text with held-out answers")
    rows = [(encode_pair(tok, p["prompt"], p["chosen"], cfg.max_response_tokens)[-backbone.block_size:],
             encode_pair(tok, p["prompt"], p["rejected"], cfg.max_response_tokens)[-backbone.block_size:])
            for p in fit_pairs]
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    history, step = [], 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(rows), generator=g).tolist()
        for b in range(steps_per_epoch):
            chunk = [rows[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            both = [c for c, _ in chunk] + [r for _, r in chunk]  # one forward for chosen and rejected
            scores = model(pad_batch(both, pad), torch.tensor([len(x) for x in both]))
            rc, rr = scores[:len(chunk)], scores[len(chunk):]
            loss = bradley_terry_loss(rc, rr, cfg.margin)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reward loss is {float(loss)} at step {step}; lower reward.learning_rate")
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": pairwise_accuracy(rc, rr)}
            history.append(rec)
            if on_progress is not None:
                on_progress({**rec, "max_steps": total})
    model.eval()
    metrics = evaluate_pairs(model, tok, eval_pairs, cfg)
    metrics.update(train_accuracy=evaluate_pairs(model, tok, train_pairs, cfg)["accuracy"],
                   train_pairs=len(fit_pairs), **info, subset=subset, seed=seed, steps=step,
                   seconds=time.perf_counter() - t0)
    save_reward_model(Path(out_dir) / "checkpoint", model, sft_ckpt, {"reward_config": asdict(cfg), **metrics})
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (Path(out_dir) / "history.json").write_text(json.dumps(history))
    return metrics


def train_judge(cfg: RewardConfig, sft_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
                out_dir: str | Path, on_progress: Callable[[dict], None] | None = None) -> dict:
    """The judge: `train_reward` on cfg.judge_subset with cfg.judge_seed (only ever used to grade policies)."""
    if cfg.judge_subset == cfg.subset and cfg.subset != "all":
        raise ValueError(f"reward.judge_subset {cfg.judge_subset!r} equals reward.subset: the judge must not "
                         f"share the reward model's pairs")
    return train_reward(cfg, sft_ckpt, train_dir, eval_dir, out_dir, seed=cfg.judge_seed, subset=cfg.judge_subset,
                        on_progress=on_progress)


def save_reward_model(ckpt_dir: str | Path, model: RewardModel, tok_source: str | Path, meta: dict) -> Path:
    """Backbone as a bundle, head as safetensors, metadata as JSON."""
    ckpt_dir = save_bundle(ckpt_dir, model.backbone, tok_source)
    st.save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, str(ckpt_dir / HEAD_FILE))
    (ckpt_dir / META_FILE).write_text(json.dumps({"format": "lmforge-reward-v1", **meta}, indent=2))
    return ckpt_dir


def load_reward_model(ckpt_dir: str | Path) -> tuple[RewardModel, object]:
    """(RewardModel in eval mode, tokenizer) saved by save_reward_model."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / HEAD_FILE).exists():
        raise FileNotFoundError(f"{ckpt_dir}: no {HEAD_FILE}; not a reward model checkpoint")
    backbone, tok = load_gpt(ckpt_dir)
    model = RewardModel(backbone)
    model.head.load_state_dict(st.load_file(str(ckpt_dir / HEAD_FILE)))
    return model.eval(), tok
