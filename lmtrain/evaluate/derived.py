"""Tasks derived from the frozen evaluation set, so the suite always has something real to score
(no benchmark ships with lmforge and nothing is downloaded at run time).

- `heldout_continuation` (multiple choice): a passage of `context_words` words; the truth is the
  passage's next `continuation_words` words, the distractors the continuations of other items from
  the same source where it has enough (else any), so the choice rests on the text, not the domain.
- `heldout_last_word` (LAMBADA-style): a passage ending just before a word of three or more letters
  that closes a sentence (followed by . ! or ?); the model must produce that word greedily.

Both keep the text as written (line breaks, indentation): the context is the original span, and each
choice starts with the whitespace that really follows the context. Items sit at evenly spaced places
over the documents in id order; the same documents, settings and seed give the same items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmtrain.data.tables import read_table

WORD = re.compile(r"\S+")
SENTENCE_END = re.compile(r"([A-Za-z]{3,})[.!?]")


@dataclass(frozen=True)
class DerivedConfig:
    """The derived tasks' shape (params `evaluate.derived`); defaults equal params.yaml's."""

    items: int = 200  # per task (fewer where the evaluation set has fewer places)
    context_words: int = 48
    continuation_words: int = 8
    choices: int = 4


def eval_documents(folder: str | Path) -> list[dict]:
    """{id, source, text} of the `eval` rows of a documents folder (the frozen evaluation set), by id."""
    rows = read_table(folder, ["id", "text", "source", "split"])
    return [r for r in rows if r["split"] == "eval" and isinstance(r["text"], str)]


def _spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


def _evenly(candidates: list, n: int) -> list:
    if not candidates or n <= 0:
        return []
    n = min(n, len(candidates))
    return [candidates[i] for i in np.linspace(0, len(candidates) - 1, n).round().astype(int)]


def continuation_items(docs: list[dict], cfg: DerivedConfig, seed: int = 0) -> list[dict]:
    """Multiple-choice items: which of `cfg.choices` continuations follows the passage."""
    cw, nw = cfg.context_words, cfg.continuation_words
    spans_of = [_spans(doc["text"]) for doc in docs]
    places = [(d, i) for d, spans in enumerate(spans_of) for i in range(cw, len(spans) - nw + 1, nw)]
    picked = []
    for d, i in _evenly(places, cfg.items):
        text, spans = docs[d]["text"], spans_of[d]
        picked.append({"source": docs[d]["source"], "context": text[spans[i - cw][0]:spans[i - 1][1]],
                       "gap": text[spans[i - 1][1]:spans[i][0]],
                       "truth": text[spans[i][0]:spans[i + nw - 1][1]]})
    rng = np.random.default_rng(seed)
    items = []
    for k, item in enumerate(picked):
        same = [j for j, other in enumerate(picked) if other["source"] == item["source"]]
        pools = [same, list(range(len(picked)))] if len(same) >= cfg.choices else [list(range(len(picked)))]
        wrong: list[str] = []
        for pool in pools:
            for j in rng.permutation(pool).tolist():
                if len(wrong) == cfg.choices - 1:
                    break
                text = picked[j]["truth"]
                if j != k and text != item["truth"] and text not in wrong:
                    wrong.append(text)
        if len(wrong) < cfg.choices - 1:
            continue  # too few distinct continuations in the whole set for this one
        label = int(rng.integers(cfg.choices))
        choices = [*wrong[:label], item["truth"], *wrong[label:]]
        items.append({"context": item["context"], "choices": [item["gap"] + c for c in choices], "label": label})
    return items


def last_word_items(docs: list[dict], cfg: DerivedConfig) -> list[dict]:
    """Last-word items: a passage and the sentence-final word that follows it."""
    spans_of = [_spans(doc["text"]) for doc in docs]
    places = [(d, i) for d, spans in enumerate(spans_of) for i, (a, b) in enumerate(spans)
              if i >= cfg.context_words and SENTENCE_END.fullmatch(docs[d]["text"], a, b)]
    items = []
    for d, i in _evenly(places, cfg.items):
        text, spans = docs[d]["text"], spans_of[d]
        word = SENTENCE_END.fullmatch(text, *spans[i]).group(1)
        items.append({"context": text[spans[i - cfg.context_words][0]:spans[i - 1][1]],
                      "target": text[spans[i - 1][1]:spans[i][0]] + word})
    return items


def derived_tasks(folder: str | Path, cfg: DerivedConfig, seed: int = 0) -> dict[str, list[dict]]:
    """{'heldout_continuation': items, 'heldout_last_word': items} from an evaluation-set folder."""
    docs = eval_documents(folder)
    if not docs:
        raise ValueError(f"{folder}: no rows with split 'eval' to derive tasks from")
    return {"heldout_continuation": continuation_items(docs, cfg, seed), "heldout_last_word": last_word_items(docs, cfg)}
