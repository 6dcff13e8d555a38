"""Zero-shot scoring by log-likelihood, each model with its own tokenizer.

Multiple choice: the log-probability of each choice as the continuation of the context; `acc` picks
the highest sum, `acc_norm` the highest sum per UTF-8 byte of the choice (its leading delimiter
excluded) — lm-eval-harness' acc_norm, which divides by the choice's length in characters (the same
for ASCII). Last word (LAMBADA): correct when every target token is the model's argmax given what
precedes it, i.e. greedy decoding reproduces the word (lm-eval-harness' and nanochat's check).
A context longer than the model's window keeps its last tokens (a continuation longer than the window,
its last block_size tokens); an empty context becomes `<|endoftext|>`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from lmtrain.evaluate.tasks import LAST_WORD


@dataclass(frozen=True)
class Continuation:
    """A row to score: context ids, then continuation ids whose log-probability is summed."""

    context: list[int]
    continuation: list[int]


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum over the continuation's tokens (nats)
    tokens: int
    greedy: bool  # every continuation token is the argmax of its position


def fit_window(row: Continuation, block_size: int, eot_id: int) -> tuple[list[int], int]:
    """(context + continuation cut on the left to block_size + 1 tokens, continuation tokens scored).
    A continuation longer than the window keeps its last block_size tokens, as lm-eval-harness does."""
    if not row.continuation:
        raise ValueError("an empty continuation has no likelihood")
    seq = (row.context or [eot_id]) + row.continuation
    return seq[-(block_size + 1):], min(len(row.continuation), block_size)


@torch.no_grad()
def score_rows(model: nn.Module, rows: list[Continuation], eot_id: int, batch_size: int = 32,
               autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> list[Scored]:
    """Log-likelihood, token count and greedy match of every row's continuation, in padded batches
    of similar length (right padding: a causal model's real positions never see it). `autocast`
    makes a fresh mixed-precision context per batch (Runtime.autocast)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seqs = [fit_window(r, model.block_size, eot_id) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -len(seqs[i][0]))
    out: list[Scored | None] = [None] * len(rows)
    for start in range(0, len(order), max(1, batch_size)):
        batch = order[start:start + max(1, batch_size)]
        width = len(seqs[batch[0]][0]) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), -1, dtype=torch.long)
        for j, i in enumerate(batch):
            seq, n_cont = seqs[i]
            x[j, :len(seq) - 1] = torch.tensor(seq[:-1])
            y[j, len(seq) - 1 - n_cont:len(seq) - 1] = torch.tensor(seq[-n_cont:])
        x, y = x.to(device), y.to(device)
        with (autocast or contextlib.nullcontext)():
            logits, _ = model(x)
        logits = logits.float()
        mask = y >= 0
        target = y.clamp(min=0)
        picked = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        hit = (logits.argmax(-1) == target) | ~mask
        sums, counts, greedy = (picked * mask).sum(1), mask.sum(1), hit.all(1)
        for j, i in enumerate(batch):
            out[i] = Scored(float(sums[j]), int(counts[j]), bool(greedy[j]))
    model.train(was_training)
    return out  # type: ignore[return-value]


def encode_items(items: list[dict], tok, kind: str) -> list[Continuation]:
    """One row per choice (multiple choice, items in order) or per target (last word)."""
    rows = []
    for item in items:
        context = tok.encode(item["context"])
        if kind == LAST_WORD:
            rows.append(Continuation(context, tok.encode(item["target"])))
        else:
            rows += [Continuation(context, tok.encode(c)) for c in item["choices"]]
    return rows


def choice_bytes(choice: str) -> int:
    """Length for acc_norm: UTF-8 bytes of the choice without its leading delimiter (at least 1)."""
    return max(1, len(choice.lstrip().encode("utf-8")))


def chance(items: list[dict], kind: str) -> float:
    """Accuracy of guessing: the mean of 1/choices (multiple choice); 0 for exact last-word match."""
    return 0.0 if kind == LAST_WORD else float(np.mean([1.0 / len(item["choices"]) for item in items]))


def stderr(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy over n items (lm-eval-harness' acc_stderr)."""
    return float(np.sqrt(acc * (1 - acc) / max(1, n - 1)))


def task_accuracy(items: list[dict], scores: list[Scored], kind: str) -> dict:
    """acc, acc_norm (None for last word), n, chance and acc_stderr from the rows' scores (encode_items' order);
    last-word tasks add target_bpb, a continuous measure where exact matches are rare (small models)."""
    if kind == LAST_WORD:  # also how surprised the model is by the words: bits per UTF-8 byte of the targets
        acc = float(np.mean([s.greedy for s in scores]))
        bits = -sum(s.logprob for s in scores) / np.log(2)
        return {"acc": acc, "acc_norm": None, "n": len(items), "chance": 0.0, "acc_stderr": stderr(acc, len(items)),
                "target_bpb": float(bits / sum(len(i["target"].encode("utf-8")) for i in items))}
    raw = norm = 0
    pos = 0
    for item in items:
        k = len(item["choices"])
        mine = scores[pos:pos + k]
        pos += k
        raw += int(np.argmax([s.logprob for s in mine]) == item["label"])
        norm += int(np.argmax([s.logprob / choice_bytes(c) for s, c in zip(mine, item["choices"])]) == item["label"])
    n = len(items)
    return {"acc": raw / n, "acc_norm": norm / n, "n": n, "chance": chance(items, kind), "acc_stderr": stderr(raw / n, n)}


def score_task(model: nn.Module, tok, items: list[dict], kind: str, batch_size: int = 32,
               autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict:
    """A task's accuracy for one model: encode with its tokenizer, score, count."""
    rows = encode_items(items, tok, kind)
    return task_accuracy(items, score_rows(model, rows, tok.eot_id, batch_size, autocast), kind)
