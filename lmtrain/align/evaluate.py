"""Judge the aligned policies against SFT on held-out prompts, with a reference metric and intervals.

Every model answers each evaluation prompt (`align_eval.split`: the dev side for tuning, the test side
for the reported figures; lmtrain.align.splits) `samples_per_prompt` times with the same random stream
(common random numbers). Per policy, against the SFT model:

- judge win rate: the judge (a reward model on the other half of the comparisons, never optimised
  against) scores every reply; reply j of the policy meets reply j of SFT, ties count one half;
- chrF of every reply against the reference reply (the true continuation), for SFT too, and the
  paired chrF difference to SFT: a metric no learned model can be fooled into;
- 95% bootstrap intervals over prompts (the replies of one prompt are not independent);
- KL to SFT under the sampling temperature, mean length and its distribution, a two-sided length flag,
  the win rate on length-matched pairs and by reply-length bin.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmtrain.align import metrics as M
from lmtrain.align.common import fenced
from lmtrain.align.reward_model import load_reward_model
from lmtrain.align.splits import eval_prompts
from lmtrain.config import ConfigError, RunConfig
from lmtrain.inference.generate import generate_replies_batched
from lmtrain.models.bundle import load_gpt
from lmtrain.runtime import setup
from lmtrain.tokenizer.chat import prompt_ids, stop_ids

SPLITS = ("dev", "test")


@dataclass
class AlignEvalConfig(RunConfig):
    """params.yaml `align_eval` section; defaults equal params.yaml's."""

    policies: list = field(default_factory=lambda: ["ppo", "rloo", "dpo"])  # models/<name>/checkpoint, each vs SFT
    split: str = "test"  # dev (tuning) | test (the reported figures)
    prompts: int = 0  # evaluation prompts used (evenly spaced); 0 = all of the split
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling, and the temperature KL is scored at (as in the rollouts)
    top_k: int = 0  # must stay 0: KL is scored on the untruncated distribution
    top_p: float = 1.0  # must stay 1, as top_k
    length_margin: float = 0.2  # flag a policy whose mean length is > 20% above or below SFT's
    length_match_tolerance: float = 0.1  # pair is length-matched if |len_p - len_sft| <= tol * max (min 1 token)
    length_bins: list = field(default_factory=lambda: [8, 16, 24])  # reply-length bin edges (tokens)
    bootstrap_resamples: int = 2000
    ci_level: float = 0.95
    markdown_prompts: int = 5  # prompts shown side by side
    seed: int = 2024
    generate_rows: int = 128  # replies decoded together (whole prompts)
    eval_batch_size: int = 32  # replies per forward pass when scoring KL

    def __post_init__(self) -> None:
        where = "params align_eval"
        if self.split not in SPLITS:
            raise ConfigError(f"{where}.split: {self.split!r} is not one of {SPLITS} (dev tunes, test reports)")
        names = self.policies
        if not names or not all(isinstance(n, str) and n and n != "sft" for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"{where}.policies: {names!r} must be distinct model names other than 'sft'")
        if not self.temperature > 0 or self.top_k != 0 or self.top_p != 1.0:
            raise ConfigError(f"{where}: temperature {self.temperature}, top_k {self.top_k}, top_p {self.top_p}: "
                              "KL to SFT is scored under softmax(logits / temperature); sample with a temperature "
                              "> 0 and no top-k / top-p truncation")
        if not all(isinstance(e, int) for e in self.length_bins) or self.length_bins != sorted(set(self.length_bins)):
            raise ConfigError(f"{where}.length_bins: {self.length_bins!r} must be increasing integers")
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.bootstrap_resamples < 1:
            raise ConfigError(f"{where}: samples_per_prompt, max_new_tokens and bootstrap_resamples must be >= 1")
        if not 0 < self.ci_level < 1 or self.length_margin < 0:
            raise ConfigError(f"{where}: ci_level must lie in (0, 1) and length_margin be >= 0")


def _ci(values, cfg: AlignEvalConfig, weights=None, seed: int = 0) -> dict:
    return M.bootstrap_ci(values, weights, cfg.bootstrap_resamples, cfg.ci_level, cfg.seed + seed)


def _with_ci(out: dict, key: str, ci: dict) -> None:
    out[key], out[f"{key}_lo"], out[f"{key}_hi"] = ci["mean"], ci["lo"], ci["hi"]


def _lengths(replies: list[list[list[int]]]) -> np.ndarray:
    return np.array([[len(r) for r in rs] for rs in replies], dtype=np.float64)


def _cut_share(replies: list[list[list[int]]], stops: set[int]) -> float:
    """Share of replies that ran to max_new_tokens without a stop token (a mean length hides this)."""
    flat = [r for rs in replies for r in rs]
    return sum(1 for r in flat if not r or r[-1] not in stops) / max(1, len(flat))


def evaluate_alignment(cfg: AlignEvalConfig, sft_ckpt: str | Path, policies: Mapping[str, str | Path],
                       judge_ckpt: str | Path, eval_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Metrics of SFT and of every policy (see the module docstring), plus `markdown` (samples side by side).

    Prompts: `eval_prompts(eval_dir, cfg.split)`. Writes metrics.json and samples.md into out_dir when given.
    A missing checkpoint is a ConfigError before any model is loaded.
    """
    missing = [f"{n}: {p}" for n, p in {"sft": sft_ckpt, **policies, "judge": judge_ckpt}.items() if not Path(p).is_dir()]
    if missing:
        raise ConfigError(f"align_eval: no checkpoint for {', '.join(missing)} (train it first, or drop the "
                          "policy from align_eval.policies)")
    rows = eval_prompts(eval_dir, cfg.split, max_prompts=cfg.prompts)
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    sft, tok = load_gpt(sft_ckpt, 0.0, rt.device)
    judge, judge_tok = load_reward_model(judge_ckpt, rt.device)
    if getattr(judge_tok, "hash", None) != getattr(tok, "hash", None):
        raise ValueError(f"{judge_ckpt}: judge tokenizer differs from the SFT model's ({sft_ckpt}); the judge must "
                         "start from a model with the policies' tokenizer (params judge.init_from: the model "
                         "sft.init_from names when that is a HF GPT-2 folder)")
    prompts = [prompt_ids(tok, r["prompt"])[-(sft.block_size - cfg.max_new_tokens):] for r in rows]
    stops, end = stop_ids(tok), tok.special_tokens["<|end|>"]
    n = len(prompts)

    def answer(model) -> tuple[list[list[list[int]]], torch.Tensor]:
        with rt.autocast():
            return generate_replies_batched(model, prompts, cfg.samples_per_prompt, cfg.max_new_tokens, stops,
                                            cfg.temperature, seed=cfg.seed, max_rows=cfg.generate_rows)

    def reference_scores(replies) -> np.ndarray:
        return np.array([[M.chrf(tok.decode([t for t in r if t not in stops]), row["reference"]) for r in rs]
                         for rs, row in zip(replies, rows)])

    def judged(replies) -> np.ndarray:
        with rt.autocast():
            return M.per_prompt(M.judge_scores(judge, prompts, replies, end, tok.eot_id).float(), n)

    sources = sorted({r["source"] for r in rows})
    by_source = {s: np.array([r["source"] == s for r in rows]) for s in sources}
    base, _ = answer(sft)
    base_judge, base_chrf, base_len = judged(base), reference_scores(base), _lengths(base)
    sft_m: dict = {"judge_score": float(base_judge.mean())}
    _with_ci(sft_m, "chrf", _ci(base_chrf.mean(1), cfg))
    sft_m["chrf_by_source"] = {s: float(base_chrf[sel].mean()) for s, sel in by_source.items()}
    sft_m["mean_length"] = float(base_len.mean())
    sft_m["cut_at_max_tokens"] = _cut_share(base, stops)
    sft_m["length"] = M.length_summary(base_len, cfg.length_bins)
    metrics: dict = {"split": cfg.split, "prompts": n, "prompts_by_source": {s: int(v.sum()) for s, v in by_source.items()},
                     "samples_per_prompt": cfg.samples_per_prompt, "temperature": cfg.temperature,
                     "ci_level": cfg.ci_level, "policies": list(policies), "sft": sft_m}
    shown = {"sft": base}
    for k, (name, ckpt) in enumerate(policies.items(), 1):
        model, ptok = load_gpt(ckpt, 0.0, rt.device)
        if getattr(ptok, "hash", None) != getattr(tok, "hash", None):
            raise ValueError(f"{ckpt}: policy tokenizer differs from the SFT model's ({sft_ckpt})")
        ans, own_logprobs = answer(model)
        shown[name] = ans
        del model
        scores, ref, lens = judged(ans), reference_scores(ans), _lengths(ans)
        kl = M.per_prompt(M.kl_to_reference(None, sft, prompts, ans, tok.eot_id, cfg.temperature, cfg.eval_batch_size,
                                            rt.autocast, policy_logprobs=own_logprobs), n)
        win = M.wins(scores, base_judge)
        matched = M.length_matched(lens, base_len, cfg.length_match_tolerance)
        m: dict = {}
        _with_ci(m, "win_rate", _ci(win.mean(1), cfg, seed=10 * k))
        _with_ci(m, "chrf", _ci(ref.mean(1), cfg, seed=10 * k + 1))
        _with_ci(m, "chrf_vs_sft", _ci((ref - base_chrf).mean(1), cfg, seed=10 * k + 2))
        m["chrf_by_source"] = {s: float(ref[sel].mean()) for s, sel in by_source.items()}
        _with_ci(m, "kl_to_reference", _ci(kl.mean(1), cfg, seed=10 * k + 3))
        m["mean_length"] = float(lens.mean())
        m["length_ratio"] = float(lens.mean() / base_len.mean()) if base_len.mean() > 0 else None
        m["length_flag"] = M.length_flag(float(lens.mean()), float(base_len.mean()), cfg.length_margin)
        m["cut_at_max_tokens"] = _cut_share(ans, stops)
        with np.errstate(invalid="ignore", divide="ignore"):
            matched_win = np.where(matched, win, 0).sum(1) / matched.sum(1)
        _with_ci(m, "win_rate_length_matched", _ci(matched_win, cfg, weights=matched.sum(1), seed=10 * k + 4))
        with np.errstate(invalid="ignore", divide="ignore"):  # chrF weighs recall: is a gain only longer replies?
            matched_chrf = np.where(matched, ref - base_chrf, 0).sum(1) / matched.sum(1)
        _with_ci(m, "chrf_vs_sft_length_matched", _ci(matched_chrf, cfg, weights=matched.sum(1), seed=10 * k + 5))
        m["length_matched_pairs"], m["pairs"] = int(matched.sum()), int(win.size)
        m["win_rate_by_length"] = M.win_rate_by_length(win, lens, cfg.length_bins)
        m["judge_score"] = float(scores.mean())
        m["length"] = M.length_summary(lens, cfg.length_bins)
        metrics[name] = m
    md = side_by_side(tok, rows[:cfg.markdown_prompts], shown)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "samples.md").write_text(md)
    return {**metrics, "markdown": md}


def side_by_side(tok, rows: list[dict], answers: Mapping[str, list[list[list[int]]]]) -> str:
    """Markdown: each prompt, its reference reply and the first reply of every model, as code blocks."""
    stops = stop_ids(tok)
    lines = ["# Alignment: replies to evaluation prompts"]
    for i, row in enumerate(rows):  # code blocks keep newlines, pipes and markup in prompts and replies
        lines += ["", f"## prompt {i + 1} ({row['source']})", "", fenced(row["prompt"]), "", "**reference:**", "",
                  fenced(row["reference"])]
        for name, replies in answers.items():
            lines += ["", f"**{name}:**", "", fenced(tok.decode([x for x in replies[i][0] if x not in stops]))]
    return "\n".join(lines) + "\n"


def _fmt(m: dict, key: str, digits: int = 2) -> str:
    """'0.61 [0.55, 0.67]' from a metric and its interval ('n/a' without data)."""
    v, lo, hi = m.get(key), m.get(f"{key}_lo"), m.get(f"{key}_hi")
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" + ("" if lo is None else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def summary_rows(metrics: dict) -> list[dict]:
    """One row per model (SFT first): judge win rate vs SFT, chrF and its difference to SFT (with their
    intervals), KL to SFT, mean length, the length flag, the length-matched win rate and its pair count."""
    level = round(100 * metrics.get("ci_level", 0.95))
    rows = []
    for name in ["sft", *metrics.get("policies", [])]:
        m = metrics[name]
        q = m["length"]["quantiles"]
        base = name == "sft"
        rows.append({
            "policy": name,
            f"judge win rate vs SFT [{level}% CI]": "-" if base else _fmt(m, "win_rate"),
            f"chrF [{level}% CI]": _fmt(m, "chrf", 1),
            "chrF - SFT's": "-" if base else _fmt(m, "chrf_vs_sft", 1),
            "chrF - SFT's (length-matched)": "-" if base else _fmt(m, "chrf_vs_sft_length_matched", 1),
            "KL to SFT (nats)": 0.0 if base else round(m["kl_to_reference"], 2),
            "mean length (p10-p90)": f"{m['mean_length']:.1f} ({q.get('p10', 0):.0f}-{q.get('p90', 0):.0f})",
            "cut at max tokens": f"{m['cut_at_max_tokens']:.0%}",
            "length flag": "-" if base else (m["length_flag"] or "no"),
            "length-matched win rate (pairs)": "-" if base else
            f"{_fmt(m, 'win_rate_length_matched')} ({m['length_matched_pairs']} of {m['pairs']})",
            "judge score": round(m["judge_score"], 3),
        })
    return rows


def length_rows(metrics: dict) -> list[dict]:
    """Reply-length histogram per model, and each policy's win rate per bin of its reply length."""
    rows = []
    for name in ["sft", *metrics.get("policies", [])]:
        m = metrics[name]
        hist = m["length"]["histogram"]
        row = {"policy": name, **{f"replies {b}": c for b, c in zip(hist["bins"], hist["counts"])}}
        for b in m.get("win_rate_by_length", []):
            row[f"win rate {b['bin']}"] = "-" if b["win_rate"] is None else f"{b['win_rate']:.2f} ({b['pairs']})"
        rows.append(row)
    return rows
