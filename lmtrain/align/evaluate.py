"""Judge the aligned policies against SFT on held-out prompts.

Each policy and the SFT model answer every held-out prompt `samples_per_prompt` times with the same
random stream (common random numbers: the comparison sees the policies' differences, not sampling
luck). The judge reward model (trained on the other half of the comparisons, never optimised
against) scores every reply; the win rate is the share of (policy, SFT) sample pairs the policy wins,
ties counting one half. Also: mean KL to the SFT reference (nats per reply, on the policy's own
samples), mean reply length, the win rate on length-matched pairs, and a `wins_by_length` flag
for a policy that wins while getting longer but not on length-matched pairs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtrain.align.common import fenced, sequence_logprobs
from lmtrain.align.reward_model import load_reward_model, score_ids
from lmtrain.config import RunConfig
from lmtrain.data.tables import read_conversations
from lmtrain.inference.generate import generate_replies
from lmtrain.models.bundle import load_gpt
from lmtrain.runtime import Runtime, setup
from lmtrain.tokenizer.chat import prompt_ids, stop_ids


@dataclass
class AlignEvalConfig(RunConfig):
    """params.yaml `align_eval` section (sampling as in PPO rollouts, so KL is comparable); defaults equal
    params.yaml's."""

    prompts: int = 0  # held-out prompts used; 0 = all
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    length_ratio_flag: float = 1.2  # a policy this much longer than SFT that wins only on length is flagged
    length_match_tolerance: float = 0.1  # pair is length-matched if |len_p - len_sft| <= tol * max (min 1 token)
    markdown_prompts: int = 5  # prompts shown side by side
    seed: int = 2024
    eval_batch_size: int = 32  # replies per forward pass when computing KL to the reference


def _answers(model, tok, prompts: list[list[int]], cfg: AlignEvalConfig, rt: Runtime) -> list[list[list[int]]]:
    out = []
    for i, p in enumerate(prompts):
        g = rt.generator(cfg.seed + i)  # the same stream for every model, drawn on the model's device
        with rt.autocast():
            out.append(generate_replies(model, p, cfg.samples_per_prompt, cfg.max_new_tokens, stop_ids(tok),
                                        cfg.temperature, cfg.top_k, cfg.top_p, g))
    return out


@torch.no_grad()
def _reply_logprobs(model, rows: list[tuple[list[int], int]], pad: int, cfg: AlignEvalConfig,
                    rt: Runtime) -> torch.Tensor:
    out = []
    for i in range(0, len(rows), max(1, cfg.eval_batch_size)):
        with rt.autocast():
            out.append(sequence_logprobs(model, rows[i:i + max(1, cfg.eval_batch_size)], pad).float().cpu())
    return torch.cat(out)


def _judge(judge, tok, prompts: list[list[int]], answers: list[list[list[int]]]) -> torch.Tensor:
    end = tok.special_tokens["<|end|>"]
    rows = [p + (r if r and r[-1] == end else r + [end]) for p, rs in zip(prompts, answers) for r in rs]
    return score_ids(judge, rows, tok.eot_id)


def evaluate_alignment(cfg: AlignEvalConfig, sft_ckpt: str | Path, policies: Mapping[str, str | Path],
                       judge_ckpt: str | Path, prompts_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Metrics per policy name (win_rate, kl_to_reference, mean_length, ...) plus `markdown`.

    Prompts: the user turns of the `eval` split of prompts_dir (an instructions folder). Writes
    metrics.json and samples.md into out_dir when given.
    """
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    sft, tok = load_gpt(sft_ckpt, 0.0, rt.device)
    sft.eval()
    judge, judge_tok = load_reward_model(judge_ckpt, rt.device)
    if getattr(judge_tok, "hash", None) != getattr(tok, "hash", None):
        raise ValueError(f"{judge_ckpt}: judge tokenizer differs from the SFT model's ({sft_ckpt})")
    convs = read_conversations(prompts_dir, "eval")
    if cfg.prompts:
        convs = convs[:cfg.prompts]
    if not convs:
        raise ValueError(f"{prompts_dir}: no held-out (split 'eval') prompts")
    texts = [next(m["content"] for m in c if m["role"] == "user") for c in convs]
    prompts = [prompt_ids(tok, t)[-(sft.block_size - cfg.max_new_tokens):] for t in texts]
    base = _answers(sft, tok, prompts, cfg, rt)
    base_scores = _judge(judge, tok, prompts, base)
    base_len = torch.tensor([float(len(r)) for rs in base for r in rs])
    metrics: dict = {"prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt,
                     "sft": {"judge_score": float(base_scores.mean()), "mean_length": float(base_len.mean())}}
    shown = {"sft": base}
    for name, ckpt in policies.items():
        model, ptok = load_gpt(ckpt, 0.0, rt.device)
        model.eval()
        if getattr(ptok, "hash", None) != getattr(tok, "hash", None):
            raise ValueError(f"{ckpt}: policy tokenizer differs from the SFT model's ({sft_ckpt})")
        ans = _answers(model, tok, prompts, cfg, rt)
        shown[name] = ans
        scores = _judge(judge, tok, prompts, ans)
        lens = torch.tensor([float(len(r)) for rs in ans for r in rs])
        rows = [(p + r, len(p)) for p, rs in zip(prompts, ans) for r in rs]
        kl = _reply_logprobs(model, rows, tok.eot_id, cfg, rt) - _reply_logprobs(sft, rows, tok.eot_id, cfg, rt)
        wins = (scores > base_scores).float() + 0.5 * (scores == base_scores).float()
        matched = (lens - base_len).abs() <= torch.clamp(cfg.length_match_tolerance * torch.maximum(lens, base_len),
                                                         min=1.0)
        win_rate = float(wins.mean())
        matched_rate = float(wins[matched].mean()) if matched.any() else None
        longer = float(lens.mean()) > cfg.length_ratio_flag * float(base_len.mean())
        metrics[name] = {
            "win_rate": win_rate, "win_rate_length_matched": matched_rate, "length_matched_pairs": int(matched.sum()),
            "judge_score": float(scores.mean()), "kl_to_reference": float(kl.mean()),
            "mean_length": float(lens.mean()),
            "wins_by_length": bool(win_rate > 0.5 and longer and (matched_rate is None or matched_rate <= 0.5)),
        }
    md = side_by_side(tok, texts[:cfg.markdown_prompts], shown, metrics)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "samples.md").write_text(md)
    return {**metrics, "markdown": md}


def side_by_side(tok, texts: list[str], answers: Mapping[str, list[list[list[int]]]], metrics: dict) -> str:
    """Markdown: a summary table, then each prompt with the first reply of every model, as code blocks."""
    stops = stop_ids(tok)
    names = list(answers)
    lines = ["# Alignment: judge win rate vs SFT on held-out prompts\n",
             "| model | win rate | win rate (length-matched) | KL to SFT | mean length | judge score | wins by length |",
             "|---|---|---|---|---|---|---|"]
    for n in names:
        m = metrics[n]
        if n == "sft":
            lines.append(f"| sft | - | - | 0 | {m['mean_length']:.1f} | {m['judge_score']:.3f} | - |")
            continue
        wm = "n/a" if m["win_rate_length_matched"] is None else f"{m['win_rate_length_matched']:.2f}"
        lines.append(f"| {n} | {m['win_rate']:.2f} | {wm} | {m['kl_to_reference']:.2f} | {m['mean_length']:.1f} "
                     f"| {m['judge_score']:.3f} | {'**yes**' if m['wins_by_length'] else 'no'} |")
    for i, t in enumerate(texts, 1):  # code blocks keep newlines, pipes and markup in prompts and replies
        lines += ["", f"## prompt {i}", "", fenced(t)]
        for n in names:
            reply = tok.decode([x for x in answers[n][i - 1][0] if x not in stops])
            lines += ["", f"**{n}:**", "", fenced(reply)]
    return "\n".join(lines) + "\n"
