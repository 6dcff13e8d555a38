"""Supervised fine-tuning (SFT) on chat conversations: the first step of the InstructGPT chain.

Conversations are rendered with the chat template (`lmtrain.tokenizer.chat.render`); the loss counts
only the tokens the assistant must produce (its replies and the `<|end|>` closing each), every other
target is -1 (ignored by cross-entropy). Rows are right-padded: with causal attention a real token
never attends to a pad that comes after it, and positions start at 0 in every row, exactly as at
inference. Also home of helpers shared by reward, PPO, DPO and chat: reading the Parquet data,
loading a GPT for fine-tuning, the cosine schedule, hidden states, and sampling replies that stop at
the end-of-turn token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.bundle import attach_tokenizer, load_bundle
from lmtrain.checkpoint import load_weights, save_checkpoint
from lmtrain.model import GPT, build_model
from lmtrain.tokenizer.chat import END_OF_TURN, EOT, render


@dataclass
class SFTConfig:
    """params.yaml `sft` section; defaults fit the tiny CPU profile (~70 conversations, ~1 minute)."""

    epochs: int = 8  # passes over the training conversations
    batch_size: int = 8  # conversations per optimizer step
    learning_rate: float = 3e-4  # peak; ~1/3 of pretraining's, the model already speaks the language
    min_lr_ratio: float = 0.1  # cosine decay to learning_rate * min_lr_ratio
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    dropout: float = 0.1  # dropout while fine-tuning (the model is rebuilt with it); small data overfits
    max_len: int = 0  # tokens per conversation (truncated); 0 = the model's block_size
    max_response_tokens: int = 64  # assistant turns are cut to this many tokens (+ <|end|>); 0 = no cut
    seed: int = 1337
    threads: int = 0  # torch.set_num_threads; 0 = torch's default
    samples: int = 4  # held-out prompts answered by the fine-tuned model (artifact)
    sample_max_new_tokens: int = 64
    sample_temperature: float = 0.7
    sample_top_k: int = 50  # 0 = off


# ---------------------------------------------------------------- data


def _read_table(folder: str | Path, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
    """All rows of `folder/*.parquet` (only `columns`, and `optional` ones where a shard has them), with
    the file each came from; sorted by id."""
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no *.parquet shards in {folder}")
    rows: list[dict] = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing} (has {names})")
        read = [*columns, *(c for c in optional if c in names and c not in columns)]
        for i, r in enumerate(pq.read_table(f, columns=read).to_pylist()):
            rows.append({**r, "_file": f"{f}:{i}"})
    rows.sort(key=lambda r: r["id"])  # stable, independent of shard layout
    return rows


def read_conversations(folder: str | Path, split: str | None = None) -> list[list[dict]]:
    """Conversations (lists of {"role","content"}) of an instructions folder; `split` keeps one split."""
    out = []
    for r in _read_table(folder, ["id", "split", "prompt", "response", "messages"]):
        if split is not None and r["split"] != split:
            continue
        if r["messages"]:
            try:
                msgs = json.loads(r["messages"])
            except json.JSONDecodeError as e:
                raise ValueError(f"{r['_file']} (id {r['id']}): field 'messages' is not JSON: {e}") from e
        elif r["prompt"] is not None and r["response"] is not None:
            msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        else:
            raise ValueError(f"{r['_file']} (id {r['id']}): neither 'messages' nor 'prompt'+'response' set")
        if not any(m.get("role") == "assistant" for m in msgs):
            raise ValueError(f"{r['_file']} (id {r['id']}): field 'messages' has no assistant turn")
        out.append(msgs)
    return out


def read_comparisons(folder: str | Path, split: str | None = None) -> list[dict]:
    """Preference pairs {"id","prompt","chosen","rejected","source"} of a comparisons folder, sorted by id
    (`source` is "" where the shards have no source column)."""
    out = []
    for r in _read_table(folder, ["id", "split", "prompt", "chosen", "rejected"], optional=["source"]):
        if split is not None and r["split"] != split:
            continue
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(r[field], str) or not r[field]:
                raise ValueError(f"{r['_file']} (id {r['id']}): field {field!r} is empty or missing")
        out.append({k: r[k] for k in ("id", "prompt", "chosen", "rejected")} | {"source": r.get("source") or ""})
    return out


def prompt_ids(tok, prompt: str | Sequence[dict]) -> list[int]:
    """Rendered ids of a user prompt (or a conversation) followed by the `<|assistant|>` marker."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return render(msgs, tok, add_generation_prompt=True)[0]


def response_ids(tok, response: str, max_tokens: int = 0, close: bool = True) -> list[int]:
    """Tokens of an assistant reply, cut to max_tokens (0 = no cut), closed by `<|end|>` if `close`."""
    ids = tok.encode(response)
    if max_tokens > 0:
        ids = ids[:max_tokens]
    return ids + [tok.special_tokens[END_OF_TURN]] if close else ids


def stop_ids(tok) -> set[int]:
    """Tokens that end a reply: `<|end|>` and `<|endoftext|>`."""
    return {tok.special_tokens[END_OF_TURN], tok.special_tokens[EOT]}


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


def pad_batch(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """Right-pad rows to the longest one."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


# ---------------------------------------------------------------- model helpers


def load_gpt(ckpt_dir: str | Path, dropout: float | None = None) -> tuple[GPT, object]:
    """(GPT in train mode, tokenizer) from a bundle folder; rebuilt with `dropout` if given."""
    model, tok = load_bundle(ckpt_dir)
    if not isinstance(model, GPT):
        raise ValueError(f"{ckpt_dir}: alignment needs a GPT checkpoint, found {type(model).__name__}")
    if dropout is not None and dropout != model.config.dropout:
        model = build_model("gpt", {**asdict(model.config), "dropout": dropout})
        load_weights(model, ckpt_dir)
    return model.train(), tok


def save_bundle(out: str | Path, model: nn.Module, tok_source: str | Path, state: dict | None = None) -> Path:
    """Checkpoint `model` into `out` and copy the tokenizer of bundle `tok_source` beside it."""
    save_checkpoint(out, model, state=state)
    attach_tokenizer(out, Path(tok_source) / "tokenizer")
    return Path(out)


def hidden_states(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Final (ln_f) hidden states (B, T, n_embd): what lm_head, a value head or a reward head read."""
    t = model.transformer
    pos = torch.arange(idx.size(1), device=idx.device)
    x = t.drop(t.wte(idx) + t.wpe(pos))
    for block in t.h:
        x = block(x)
    return t.ln_f(x)


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to peak * min_ratio at `total` (as lmtrain.train.lr_at)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * min_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


@torch.no_grad()
def generate_replies(model: GPT, prompt: Sequence[int], n: int, max_new_tokens: int, stop: set[int],
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                     generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
    """`n` sampled replies to one prompt, each ending at its first stop token (kept) or at max_new_tokens.

    The n rows share the prompt, so they have equal lengths and one KV cache serves them all.
    """
    keep = model.block_size - max_new_tokens
    if keep < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in block {model.block_size}")
    device = model.lm_head.weight.device
    idx = torch.tensor([list(prompt)[-keep:]] * n, dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    was_training = model.training
    model.eval()
    try:
        for tok in model.generate_tokens(idx, max_new_tokens, temperature, top_k or None,
                                         top_p if 0 < top_p < 1 else None, use_cache, generator):
            for i, t in enumerate(tok[:, 0].tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t in stop
            if all(done):
                break
    finally:
        model.train(was_training)
    return out


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position from logits (B, T, V) and targets (B, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)


# ---------------------------------------------------------------- training


def _masked_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    logits, _ = model(x)
    n = int((y != -1).sum())
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="sum")
    return loss, n


@torch.no_grad()
def heldout_loss(model: GPT, examples: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int) -> float:
    """Mean cross-entropy per assistant token over `examples` (dropout off)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        loss, n = _masked_loss(model, pad_batch([e[0] for e in chunk], pad), pad_batch([e[1] for e in chunk], -1))
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def train_sft(cfg: SFTConfig, init_ckpt: str | Path, train_dir: str | Path, eval_dir: str | Path,
              out_dir: str | Path, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune the bundle `init_ckpt` on the instructions in train_dir/eval_dir; write out_dir/checkpoint.

    Returns metrics: held-out loss before/after, train loss, steps, seconds and `samples` (held-out
    prompt, reference and generated answer). Also writes out_dir/metrics.json and samples.md.
    """
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(out_dir)
    model, tok = load_gpt(init_ckpt, cfg.dropout)
    max_len = min(cfg.max_len or model.block_size, model.block_size)
    pad = tok.eot_id

    def examples(convs: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        return [sft_example(truncate_turns(c, cfg.max_response_tokens, tok), tok, max_len) for c in convs]

    train_convs, eval_convs = read_conversations(train_dir, "train"), read_conversations(eval_dir, "eval")
    if not train_convs:
        raise ValueError(f"{train_dir}: no conversations with split 'train'")
    train_ex = [e for e in examples(train_convs) if any(t != -1 for t in e[1])]
    eval_ex = examples(eval_convs)
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (0.9, 0.95), "cpu")
    g = torch.Generator().manual_seed(cfg.seed)
    loss_before = heldout_loss(model, eval_ex, pad, cfg.batch_size) if eval_ex else float("nan")
    history: list[dict] = []
    step = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_ex), generator=g).tolist()
        for b in range(steps_per_epoch):
            chunk = [train_ex[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio)
            loss_sum, n = _masked_loss(model, pad_batch([e[0] for e in chunk], pad), pad_batch([e[1] for e in chunk], -1))
            loss = loss_sum / n  # mean over the batch's assistant tokens
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SFT loss is {float(loss)} at step {step}; lower sft.learning_rate")
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "epoch": epoch, "train_loss": loss.item(), "lr": opt.param_groups[0]["lr"]}
            history.append(rec)
            if on_progress is not None:
                on_progress({**rec, "max_steps": total})
    model.eval()
    loss_after = heldout_loss(model, eval_ex, pad, cfg.batch_size) if eval_ex else float("nan")
    samples = sample_answers(model, tok, eval_convs[:cfg.samples], cfg)
    save_bundle(out_dir / "checkpoint", model, init_ckpt, {"sft_config": asdict(cfg), "steps": step})
    metrics = {"eval_loss": loss_after, "eval_loss_before": loss_before,
               "train_loss": history[-1]["train_loss"] if history else float("nan"), "steps": step,
               "train_conversations": len(train_ex), "eval_conversations": len(eval_ex),
               "seconds": time.perf_counter() - t0}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "samples.md").write_text(samples_markdown(samples))
    (out_dir / "history.json").write_text(json.dumps(history))
    return {**metrics, "samples": samples}


def sample_answers(model: GPT, tok, convs: Sequence[Sequence[dict]], cfg: SFTConfig) -> list[dict]:
    """The model's reply to each conversation's first user turn, beside the reference reply."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for conv in convs:
        user = next(m["content"] for m in conv if m["role"] == "user")
        ref = next(m["content"] for m in conv if m["role"] == "assistant")
        reply = generate_replies(model, prompt_ids(tok, user), 1, cfg.sample_max_new_tokens, stop_ids(tok),
                                 cfg.sample_temperature, cfg.sample_top_k, 1.0, g)[0]
        out.append({"prompt": user, "reference": ref[:400],
                    "answer": tok.decode([t for t in reply if t not in stop_ids(tok)])})
    return out


def samples_markdown(samples: Sequence[dict]) -> str:
    """Held-out prompts with the reference and the model's answer, as markdown."""
    parts = ["# SFT samples on held-out prompts\n"]
    for s in samples:
        parts.append(f"## {s['prompt']}\n\n**model:**\n\n```\n{s['answer']}\n```\n\n"
                     f"**reference (first 400 chars):**\n\n```\n{s['reference']}\n```\n")
    return "\n".join(parts)
