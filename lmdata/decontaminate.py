"""Decontamination: training documents that overlap the frozen evaluation set become `eval_overlap`.

Always on, whatever `dedup.exact` / `dedup.near` say: it is evaluation hygiene, not a data-quality
step, so an ablation that switches dedup off is still judged on a set its training data does not
contain. It runs with the evaluation set's own, fixed dedup settings (params.yaml `evalset.dedup`,
exact keys and MinHash both forced on), so a variant that loosens `dedup.minhash` does not change
what counts as contamination either.

Only direct pairs count: a training document is rejected when it matches an evaluation document
itself, not through a chain of training documents (that chain is ordinary dedup's business). The
evaluation documents are a reference here, never written by the training side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import polars as pl

from lmdata.dedup import DedupConfig, SignatureIndex, candidate_pairs, texts_needed, verify_pairs
from lmdata.minhash import estimated_jaccard

DECISION_SCHEMA = {"id": pl.Utf8, "reason": pl.Utf8, "reason_detail": pl.Utf8, "reason_value": pl.Float64}


def decontamination_config(evalset_dedup: DedupConfig) -> DedupConfig:
    """The evaluation set's dedup settings with exact keys and MinHash both on."""
    return replace(evalset_dedup, exact=True, near=True)


def overlap_decisions(index: SignatureIndex, pairs: pl.DataFrame) -> pl.DataFrame:
    """One `eval_overlap` decision per training document that pairs with an evaluation document.

    `reason_detail` names the evaluation document it overlaps most, `reason_value` the similarity
    (the true Jaccard for verified pairs, 1.0 for an exact key match, else the MinHash estimate)."""
    if pairs.is_empty():
        return pl.DataFrame(schema=DECISION_SCHEMA)
    split = index.docs["split"]
    a_eval = split.gather(pairs["a"]) == "eval"
    b_eval = split.gather(pairs["b"]) == "eval"
    cross = pairs.filter((a_eval != b_eval).to_numpy())
    if cross.is_empty():
        return pl.DataFrame(schema=DECISION_SCHEMA)
    a_is_eval = (split.gather(cross["a"]) == "eval").to_numpy()
    a, b = cross["a"].to_numpy(), cross["b"].to_numpy()
    train_row, eval_row = np.where(a_is_eval, b, a), np.where(a_is_eval, a, b)
    est = estimated_jaccard(index.signatures(train_row), index.signatures(eval_row))
    value = pl.Series(est, dtype=pl.Float64)
    if "jaccard" in cross.columns:
        value = cross["jaccard"].cast(pl.Float64)
    value = pl.Series(np.where((cross["kind"] == "exact").to_numpy(), 1.0, value.to_numpy()), dtype=pl.Float64)
    ids = index.docs["id"]
    found = pl.DataFrame({"id": ids.gather(train_row), "reason_detail": ids.gather(eval_row), "reason_value": value})
    return (found.sort(["id", "reason_value", "reason_detail"], descending=[False, True, False])
            .unique(subset="id", keep="first", maintain_order=True)
            .with_columns(reason=pl.lit("eval_overlap"))
            .select(*DECISION_SCHEMA))


def find_overlaps(index: SignatureIndex, fields: Sequence[str], config: DedupConfig,
                  fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None) -> tuple[pl.DataFrame, dict]:
    """Candidate pairs (verified when `config.verify`), then the `eval_overlap` decisions and small stats."""
    pairs = candidate_pairs(index, config)
    if config.verify and not pairs.is_empty():
        if fetch is None:
            raise ValueError("evalset.dedup.verify is on: find_overlaps needs a `fetch` for the candidates' texts")
        pairs = verify_pairs(pairs, fetch(texts_needed(pairs)), fields, config)
    decisions = overlap_decisions(index, pairs)
    docs = index.docs
    return decisions, {"fields": list(fields), "train_docs": int((docs["split"] == "train").sum()),
                       "eval_docs": int((docs["split"] == "eval").sum()), "eval_overlap": decisions.height}
