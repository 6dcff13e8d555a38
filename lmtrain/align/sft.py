"""Supervised fine-tuning (SFT) on chat conversations: the first step of the InstructGPT chain.

Conversations are rendered with the chat template (`lmtrain.tokenizer.chat.render`); the loss counts
only the tokens the assistant must produce (its replies and the `<|end|>` closing each), every other
target is -1 (ignored by cross-entropy). Rows are right-padded: with causal attention a real token
never attends to a pad that comes after it, and positions start at 0 in every row, exactly as at
inference. Device, dtype, seeding, schedule and optimizer step: lmtrain.runtime. Before any work the
training conversations are checked against every held-out prompt (lmtrain.align.splits.assert_disjoint);
the held-out loss and samples come from the `eval_split` side only (dev: tuning never reads test).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from lmtrain.align.common import fenced, pad_batch
from lmtrain.align.splits import assert_disjoint, conversation_rows, held_out_conversations, on_side
from lmtrain.config import OptimConfig
from lmtrain.data.tables import read_conversations, read_table
from lmtrain.inference.generate import generate_replies
from lmtrain.models.bundle import TOKENIZER_DIR
from lmtrain.models.checkpoint import save_checkpoint
from lmtrain.models.gpt import GPT
from lmtrain.models.init import load_init
from lmtrain.progress import Progress, split_timings
from lmtrain.runtime import Runtime, adamw, check_finite, cosine_lr, optimizer_step, set_lr, setup
from lmtrain.tokenizer.chat import prompt_ids, render, stop_ids


@dataclass
class SFTConfig(OptimConfig):
    """params.yaml `sft` section; defaults equal params.yaml's (~980 conversations, ~2 minutes on a CPU)."""

    epochs: int = 2  # passes over the training conversations
    batch_size: int = 8  # conversations per optimizer step
    learning_rate: float = 3e-4  # peak; ~1/3 of pretraining's, the model already speaks the language
    warmup_steps: int = 5
    dropout: float = 0.1  # dropout while fine-tuning (the model is rebuilt with it); small data overfits
    max_len: int = 0  # tokens per conversation (truncated); 0 = the model's block_size
    max_response_tokens: int = 64  # assistant turns are cut to this many tokens (+ <|end|>); 0 = no cut
    samples: int = 4  # held-out prompts answered by the fine-tuned model (artifact)
    sample_max_new_tokens: int = 64
    sample_temperature: float = 0.7
    sample_top_k: int = 50  # 0 = off
    eval_split: str = "dev"  # held-out conversations of eval_loss and samples: dev | test | all (lmtrain.align.splits)
    init_from: str = "models/pretrain/gpt/checkpoint"  # the GPT to fine-tune: this run's, another lmforge
    #                                                    checkpoint or a HF GPT-2 folder (lmtrain.models.init)


def truncate_turns(messages: Sequence[dict], max_tokens: int, tok) -> list[dict]:
    """Assistant turns cut to `max_tokens` tokens (their text re-decoded); 0 leaves them whole."""
    if max_tokens <= 0:
        return list(messages)
    return [{**m, "content": tok.decode(tok.encode(m["content"])[:max_tokens])} if m["role"] == "assistant" else m
            for m in messages]


def sft_example(messages: Sequence[dict], tok, max_len: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) for one conversation: targets are the next ids where the assistant speaks, else -1."""
    ids, mask = render(messages, tok)
    ids, mask = ids[:max_len + 1], mask[:max_len + 1]
    return ids[:-1], [t if m else -1 for t, m in zip(ids[1:], mask[1:])]


def _masked_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the assistant targets of a padded batch, and their count."""
    x, y = rt.to_device(x), rt.to_device(y)
    with rt.autocast():
        logits, _ = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="sum")
    return loss, int((y != -1).sum())


@torch.no_grad()
def heldout_loss(model: GPT, examples: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int,
                 rt: Runtime | None = None) -> float:
    """Mean cross-entropy per assistant token over `examples` (dropout off)."""
    rt = rt or Runtime(next(model.parameters()).device, torch.float32)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        loss, n = _masked_loss(model, pad_batch([e[0] for e in chunk], pad), pad_batch([e[1] for e in chunk], -1), rt)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def loss_by_source(model: GPT, examples: Sequence[tuple[list[int], list[int]]], sources: Sequence[str], pad: int,
                   batch_size: int, rt: Runtime | None = None) -> dict[str, float]:
    """Held-out loss per instruction source (task): what each part of a mixture is learning."""
    if len(sources) != len(examples):
        raise ValueError(f"{len(sources)} sources for {len(examples)} held-out conversations")
    return {src: heldout_loss(model, [e for e, s in zip(examples, sources) if s == src], pad, batch_size, rt)
            for src in sorted(set(sources))}


def mixture(convs: list[list[dict]], folder: str | Path) -> list[list[dict]]:
    """Each training conversation `repeats` times: the balance stage's per-source weights (a task mixture)."""
    repeats = [r.get("repeats") or 1 for r in read_table(folder, ["id", "split"], optional=["repeats"])
               if r["split"] == "train"]  # the same rows in the same order as `convs` (both sorted by id)
    if len(repeats) != len(convs):
        raise ValueError(f"{folder}: {len(repeats)} train rows but {len(convs)} conversations")
    return [c for c, n in zip(convs, repeats) for _ in range(int(n))]


def train_sft(cfg: SFTConfig, init_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
              out_dir: str | Path, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune the bundle `init_ckpt` on the instructions in train_dir/eval_dir; write out_dir/checkpoint.

    Returns metrics: held-out loss before/after, train loss, steps, seconds and `samples` (held-out
    prompt, reference and generated answer). Also writes out_dir/metrics.json and samples.md.
    """
    t0 = time.perf_counter()
    held = held_out_conversations(eval_dir)
    assert_disjoint(conversation_rows(read_conversations(train_dir, "train")),  # the evaluation prompts never train
                    [row for row, _ in held], (f"SFT training conversations ({train_dir})", f"held-out prompts ({eval_dir})"))
    side = {row["id"] for row in on_side([row for row, _ in held], cfg.eval_split)}
    held = [(row, conv) for row, conv in held if row["id"] in side]
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    out_dir = Path(out_dir)
    model, tok = load_init(init_ckpt, "gpt", cfg.dropout, "sft.init_from")
    model = model.to(rt.device)
    max_len = min(cfg.max_len or model.block_size, model.block_size)
    pad = tok.eot_id

    def examples(convs: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        return [sft_example(truncate_turns(c, cfg.max_response_tokens, tok), tok, max_len) for c in convs]

    train_convs, eval_convs = read_conversations(train_dir, "train"), [conv for _, conv in held]
    train_convs = mixture(train_convs, train_dir)
    if not train_convs:
        raise ValueError(f"{train_dir}: no conversations with split 'train'")
    train_ex = [e for e in examples(train_convs) if any(t != -1 for t in e[1])]
    eval_ex = examples(eval_convs)
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = adamw(model, cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), rt.device.type)
    g = torch.Generator().manual_seed(cfg.seed)  # data order: a CPU generator, the same on every device
    eval_sources = [row["source"] for row, _ in held]
    loss_before = heldout_loss(model, eval_ex, pad, cfg.batch_size, rt) if eval_ex else float("nan")
    by_source_before = loss_by_source(model, eval_ex, eval_sources, pad, cfg.batch_size, rt)
    history: list[dict] = []
    step = 0
    bar = Progress(total, "sft", cfg.progress, on_progress=on_progress)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_ex), generator=g).tolist()
        for b in range(steps_per_epoch):
            chunk = [train_ex[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            set_lr(opt, cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio))
            loss_sum, n = _masked_loss(model, pad_batch([e[0] for e in chunk], pad),
                                       pad_batch([e[1] for e in chunk], -1), rt)
            loss = loss_sum / n  # mean over the batch's assistant tokens
            check_finite(loss, "SFT", step, "lower sft.learning_rate")
            loss.backward()
            optimizer_step(opt, model.parameters(), cfg.grad_clip)
            step += 1
            rec = {"step": step, "epoch": epoch, "train_loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            bar.update(rec, {"loss": rec["train_loss"]})
    bar.close()
    model.eval()
    loss_after = heldout_loss(model, eval_ex, pad, cfg.batch_size, rt) if eval_ex else float("nan")
    by_source = loss_by_source(model, eval_ex, eval_sources, pad, cfg.batch_size, rt)
    samples = sample_answers(model, tok, eval_convs[:cfg.samples], cfg, rt)
    tok.save(save_checkpoint(out_dir / "checkpoint", model, state={"sft_config": asdict(cfg), "steps": step})
             / TOKENIZER_DIR)  # the tokenizer it was fine-tuned with (a GPT-2 one gained the chat markers)
    metrics = {"eval_loss": loss_after, "eval_loss_before": loss_before,
               "train_loss": history[-1]["train_loss"] if history else float("nan"), "steps": step,
               "train_conversations": len(train_ex), "eval_conversations": len(eval_ex), "eval_split": cfg.eval_split,
               "eval_loss_by_source": by_source, "eval_loss_before_by_source": by_source_before,
               "eval_conversations_by_source": dict(sorted(Counter(eval_sources).items())),
               "seconds": time.perf_counter() - t0}
    (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))  # no wall times
    (out_dir / "samples.md").write_text(samples_markdown(samples))
    (out_dir / "history.json").write_text(json.dumps(history))
    return {**metrics, "samples": samples}


def sample_answers(model: GPT, tok, convs: Sequence[Sequence[dict]], cfg: SFTConfig,
                   rt: Runtime | None = None) -> list[dict]:
    """The model's reply to each conversation's first user turn, beside the reference reply."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    out = []
    for conv in convs:
        user = next(m["content"] for m in conv if m["role"] == "user")
        ref = next(m["content"] for m in conv if m["role"] == "assistant")
        with rt.autocast() if rt is not None else torch.autocast("cpu", enabled=False):
            reply = generate_replies(model, prompt_ids(tok, user), 1, cfg.sample_max_new_tokens, stop_ids(tok),
                                     cfg.sample_temperature, cfg.sample_top_k, 1.0, g)[0]
        out.append({"prompt": user, "reference": ref[:400],
                    "answer": tok.decode([t for t in reply if t not in stop_ids(tok)])})
    return out


def samples_markdown(samples: Sequence[dict]) -> str:
    """Held-out prompts with the reference and the model's answer, as markdown."""
    parts = ["# SFT samples on held-out prompts\n"]
    for s in samples:  # every text in a code block: newlines, pipes and markup stay as they are
        title = (s["prompt"].strip().splitlines() or [""])[0][:80]
        parts.append(f"## {title}\n\n{fenced(s['prompt'])}\n\n**model:**\n\n{fenced(s['answer'])}\n\n"
                     f"**reference (first 400 chars):**\n\n{fenced(s['reference'])}\n")
    return "\n".join(parts)
