"""Evaluation on the whole evaluation split: loss, bits per byte, multiple-choice continuation accuracy.

Bits per byte = total nats / (ln 2 · UTF-8 bytes of the split's text), a tokenizer-independent
measure (DESIGN.md). The multiple-choice task is built from the same split, deterministically.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from lmtrain.data.shards import TokenShards
from lmtrain.data.windows import eval_windows

EVAL_BLOCK_TOKENS = 512  # the fixed scoring blocks of the evaluation split (ablations bootstrap over them)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(model: nn.Module, shards: TokenShards, batch_size: int = 32, block_size: int | None = None,
                  stride: int | None = None, autocast_dtype: torch.dtype | None = None,
                  score_block: int = EVAL_BLOCK_TOKENS) -> dict:
    """Mean loss (nats/token) and bits per byte over every token of the split, and `block_nats`: the
    summed nats of each fixed `score_block`-token block of the split (shards in order; the last block
    may be shorter), the same blocks for every model on the split, for paired bootstraps."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block_size = block_size or model.block_size
    token_nats = np.zeros(shards.n_tokens, dtype=np.float64)  # per scored target, in split order
    total_tokens = 0
    pending: list[tuple[np.ndarray, np.ndarray, int, int]] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack([p[0] for p in pending])).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pending])).to(device)
        for i, p in enumerate(pending):
            y[i, :p[2]] = -1  # already scored by an earlier window
        with _autocast(device, autocast_dtype):
            logits, _ = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
        nats = nats.view(y.shape).double().cpu().numpy()
        for i, (_, _, score_from, pos) in enumerate(pending):
            token_nats[pos:pos + nats.shape[1] - score_from] = nats[i, score_from:]
        pending.clear()

    for x, y, score_from in eval_windows(shards, block_size, stride):
        if pending and len(x) != len(pending[0][0]):
            flush()  # a short shard: its windows cannot share a batch with full ones
        if total_tokens + len(y) - score_from > shards.n_tokens:
            raise RuntimeError(f"{shards.folder}: windows score more tokens than the split's {shards.n_tokens}")
        pending.append((x, y, score_from, total_tokens))
        total_tokens += len(y) - score_from
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    model.train(was_training)
    if total_tokens != shards.n_tokens:
        raise RuntimeError(f"scored {total_tokens} tokens but the split holds {shards.n_tokens}")
    total_nats = float(token_nats.sum())
    loss = total_nats / total_tokens
    starts = np.arange(0, total_tokens, score_block)
    return {"eval_loss": loss, "eval_bpb": total_nats / (math.log(2) * shards.n_bytes),
            "eval_tokens": total_tokens, "eval_bytes": shards.n_bytes,
            "block_nats": np.add.reduceat(token_nats, starts) if total_tokens else np.zeros(0)}


@torch.no_grad()
def continuation_logprobs(model: nn.Module, context: list[int], continuations: list[list[int]],
                          ) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation after the context, in one batch."""
    device = next(model.parameters()).device
    longest = max(len(c) for c in continuations)
    if longest == 0:
        raise ValueError("every continuation is empty")
    keep = model.block_size + 1 - longest  # context tokens that fit before the longest continuation
    if keep < 1:
        raise ValueError(f"continuation of {longest} tokens does not fit block_size {model.block_size}")
    context = context[-keep:]
    rows = [context + c for c in continuations]
    width = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (row, cont) in enumerate(zip(rows, continuations)):
        x[i, :len(row) - 1] = torch.tensor(row[:-1])
        y[i, len(context) - 1:len(row) - 1] = torch.tensor(cont)  # score only the continuation
    logits, _ = model(x.to(device))
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = y.to(device) >= 0
    picked = logp.gather(-1, y.clamp(min=0).to(device)[..., None]).squeeze(-1) * mask
    return [(float(picked[i].sum()), int(mask[i].sum())) for i in range(len(rows))]


def multiple_choice_items(shards: TokenShards, n_items: int = 200, context_len: int = 64,
                          continuation_len: int = 32, n_choices: int = 4, seed: int = 0) -> list[dict]:
    """Items {'context', 'choices', 'label'} from evenly spaced passages of the split.

    The true continuation is the passage's next continuation_len tokens; distractors are distinct
    continuations of other items (same split, same length). Same split and seed, same items.
    """
    stream = np.concatenate([np.asarray(s.tokens, dtype=np.int64) for s in shards.shards])
    span = context_len + continuation_len
    n_segments = len(stream) // span
    if n_segments < n_choices:
        raise ValueError(f"{shards.folder}: {len(stream)} tokens give {n_segments} passages of {span} tokens, "
                         f"fewer than {n_choices} choices")
    n_items = min(n_items, n_segments)
    starts = np.linspace(0, n_segments - 1, n_items).round().astype(np.int64) * span
    contexts = [stream[s:s + context_len].tolist() for s in starts]
    conts = [stream[s + context_len:s + span].tolist() for s in starts]
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_items):
        # distractors: other items' continuations, distinct from the truth and from each other
        choices: list[list[int]] = []
        for j in rng.permutation(n_items).tolist():
            if j != i and conts[j] != conts[i] and conts[j] not in choices:
                choices.append(conts[j])
                if len(choices) == n_choices - 1:
                    break
        if len(choices) < n_choices - 1:
            raise ValueError(f"{shards.folder}: fewer than {n_choices - 1} distinct distractors for item {i}")
        label = int(rng.integers(n_choices))
        choices.insert(label, conts[i])
        items.append({"context": contexts[i], "choices": choices, "label": label})
    return items


def multiple_choice_accuracy(model: nn.Module, items: list[dict], normalize: bool = False) -> float:
    """Share of items whose true choice has the highest log-likelihood (per token if normalize)."""
    was_training = model.training
    model.eval()
    correct = 0
    for item in items:
        scores = continuation_logprobs(model, item["context"], item["choices"])
        values = [s / n for s, n in scores] if normalize else [s for s, _ in scores]
        correct += int(np.argmax(values) == item["label"])
    model.train(was_training)
    return correct / len(items)
