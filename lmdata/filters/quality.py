"""A DCLM-style quality classifier: fastText trained in the pipeline, one thread, seeded.

Positives are the documents of one designated high-quality source, negatives the rest of the
pool after language ID (never the positive source), so the classifier cannot learn language.
Documents are cut into chunks of words for training; whole groups (both editions of a play) are
held out to measure precision and recall per source. Every document gets `quality_score` =
P(high quality); the train split is filtered by threshold or top fraction, the eval split is
scored only.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from lmdata.filters.heuristics import check_field_types, config_from_dict
from lmdata.stage import REJECT_COLUMNS, StepResult, add_reason, empty_rejects

POS, NEG = "__label__hq", "__label__pool"


@dataclass
class QualityConfig:
    """Maps 1:1 to params.yaml `filter.quality`."""

    enabled: bool = True
    positive_source: str = "shakespeare"  # the designated high-quality source (a `source` value)
    keep_mode: str = "top_fraction"  # "top_fraction" or "threshold"
    top_fraction: float = 0.9  # share of train documents kept (DCLM keeps ~10% of a web pool)
    threshold: float = 0.5  # minimum quality_score, in threshold mode
    chunk_words: int = 64  # training examples are chunks of this many words
    min_chunk_words: int = 8  # shorter chunks are dropped (degenerate text makes fastText NaN)
    holdout_fraction: float = 0.2  # share of groups held out for precision/recall
    max_chunks_per_class: int = 20_000  # cap per class, chosen by hash (also balances the classes)
    epoch: int = 10
    lr: float = 0.2
    dim: int = 32
    word_ngrams: int = 2
    bucket: int = 50_000  # hash buckets for word n-grams (model size ~ bucket * dim * 4 bytes)
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "filter.quality")
        if self.keep_mode not in ("top_fraction", "threshold"):
            raise ValueError(f"filter.quality.keep_mode: 'top_fraction' or 'threshold', got {self.keep_mode!r}")
        for name in ("top_fraction", "threshold", "holdout_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"filter.quality.{name}: expected 0..1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict | None) -> QualityConfig:
        return config_from_dict(cls, d or {}, "filter.quality")


def _unit_hash(key: str, seed: int) -> float:
    """A stable number in [0, 1) for `key`."""
    return xxhash.xxh3_64_intdigest(key.encode(), seed=seed) / 2**64


def chunk_words(text: str, size: int, min_words: int) -> list[str]:
    """Consecutive chunks of `size` words (lowercased, one line each); short tails dropped."""
    words = text.lower().split()
    chunks = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [c for c in chunks if len(c.split()) >= min_words]


def holdout_groups(sources: list[str], groups: list[str], cfg: QualityConfig) -> set[str]:
    """Held-out groups, stratified by source: in each source, the ceil(holdout_fraction x n) groups
    of lowest hash (at least one when the source has two or more groups, none when it has one), so
    that every source with more than one group gets a held-out accuracy."""
    by_source: dict[str, set[str]] = {}
    for s, g in zip(sources, groups):
        by_source.setdefault(s, set()).add(g)
    held: set[str] = set()
    for gs in by_source.values():
        if len(gs) < 2 or cfg.holdout_fraction <= 0:
            continue
        k = min(len(gs) - 1, max(1, math.ceil(cfg.holdout_fraction * len(gs))))
        held.update(sorted(gs, key=lambda g: (_unit_hash(g, cfg.seed), g))[:k])
    return held


def training_examples(df: pl.DataFrame, cfg: QualityConfig) -> pl.DataFrame:
    """One row per chunk: source, label, holdout flag, chunk text (train split only)."""
    sources = set(df["source"].unique().to_list())
    if cfg.positive_source not in sources:
        raise ValueError(f"filter.quality.positive_source {cfg.positive_source!r} is not a source of "
                         f"the data; sources: {sorted(sources)}")
    if len(sources) < 2:
        raise ValueError(f"filter.quality: no negative source left after language ID (only {sorted(sources)})")
    group_col = "group" if "group" in df.columns else "id"
    rows = []
    train_df = df.filter(pl.col("split") == "train").select("id", "source", group_col, "text")
    held_groups = holdout_groups(train_df["source"].to_list(), train_df[group_col].to_list(), cfg)
    for r in train_df.iter_rows():
        held = r[2] in held_groups
        label = POS if r[1] == cfg.positive_source else NEG
        for k, chunk in enumerate(chunk_words(r[3], cfg.chunk_words, cfg.min_chunk_words)):
            rows.append((r[1], label, held, _unit_hash(f"{r[0]}:{k}", cfg.seed), chunk))
    ex = pl.DataFrame(rows, schema={"source": pl.Utf8, "label": pl.Utf8, "holdout": pl.Boolean,
                                    "order": pl.Float64, "chunk": pl.Utf8}, orient="row")
    # Cap each class (in the training part) by hash order: balanced, deterministic classes.
    train = ex.filter(~pl.col("holdout")).sort("order")
    n = min(cfg.max_chunks_per_class, *train.group_by("label").len()["len"].to_list())
    train = train.filter(pl.int_range(pl.len()).over("label") < n)
    return pl.concat([train, ex.filter(pl.col("holdout"))]).sort("holdout", "order")


def _train_in_this_process(data: str, params: dict, model_path: str) -> None:
    import fasttext

    fasttext.train_supervised(input=data, **params).save_model(model_path)


def _train(lines: list[str], cfg: QualityConfig, model_path: Path):
    """Train in a fresh (spawned) process: repeated training inside one process sometimes hits
    fastText's "Encountered NaN" on the very data a fresh process trains on cleanly (measured:
    the 3rd of 4 identical in-process runs), so each training gets its own process."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    params = dict(epoch=cfg.epoch, lr=cfg.lr, dim=cfg.dim, wordNgrams=cfg.word_ngrams, bucket=cfg.bucket,
                  minCount=1, thread=1, seed=cfg.seed, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            try:
                pool.submit(_train_in_this_process, str(data), params, str(model_path)).result()
            except RuntimeError as e:
                raise RuntimeError(f"fastText training failed on {len(lines)} chunks ({e}); degenerate "
                                   "text (few repeated lines) causes this: raise min_chunk_words or add "
                                   "data") from e
            except BrokenProcessPool as e:
                raise RuntimeError("the fastText training process died; a script that trains must guard "
                                   "its entry point with `if __name__ == '__main__':` (spawned "
                                   "processes re-import it)") from e
    return load_quality_model(model_path)


def train_quality_classifier(df: pl.DataFrame, cfg: QualityConfig, model_path: str | Path) -> dict:
    """Train on the train split's chunks, save the model to `model_path`, return held-out metrics:
    precision/recall/accuracy overall and accuracy per source (and chunk counts)."""
    ex = training_examples(df, cfg)
    train, held = ex.filter(~pl.col("holdout")), ex.filter(pl.col("holdout"))
    if train["label"].n_unique() < 2:
        raise ValueError("filter.quality: training chunks hold only one class; add data or lower "
                         "holdout_fraction")
    model = _train([f"{lab} {c}" for lab, c in train.select("label", "chunk").iter_rows()], cfg,
                   Path(model_path))
    metrics: dict = {"train_chunks": train.height, "holdout_chunks": held.height,
                     "train_chunks_by_label": dict(sorted(train.group_by("label").len().iter_rows()))}
    if held.is_empty():
        return metrics
    pred_pos = score_texts(model, held["chunk"].to_list()) >= 0.5
    truth_pos = (held["label"] == POS).to_numpy()
    tp = int((pred_pos & truth_pos).sum())
    metrics.update(
        holdout_accuracy=float((pred_pos == truth_pos).mean()),
        holdout_precision=tp / int(pred_pos.sum()) if pred_pos.any() else 0.0,
        holdout_recall=tp / int(truth_pos.sum()) if truth_pos.any() else 0.0,
        holdout_accuracy_by_source={
            s: float((pred_pos[m] == truth_pos[m]).mean())
            for s in sorted(held["source"].unique().to_list())
            for m in [(held["source"] == s).to_numpy()]},
        holdout_chunks_by_source=dict(sorted(held.group_by("source").len().iter_rows())),
    )
    return metrics


def load_quality_model(model_path: str | Path):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None
    return fasttext.load_model(str(model_path))


def score_texts(model, texts: list[str]) -> np.ndarray:
    """P(high quality) per text (lowercased, newlines replaced); empty text scores 0."""
    lines = [" ".join(t.lower().split()) for t in texts]
    out = np.zeros(len(texts))
    idx = [i for i, t in enumerate(lines) if t]
    if idx:
        labels, probs = model.predict([lines[i] for i in idx], k=2)
        for i, labs, ps in zip(idx, labels, probs):
            p = dict(zip(labs, ps))
            out[i] = min(1.0, float(p.get(POS, 1.0 - p.get(NEG, 1.0))))
    return out


def keep_threshold(scores: np.ndarray, cfg: QualityConfig) -> float:
    """The score a train document needs: `threshold`, or the top-fraction cut of `scores`."""
    if cfg.keep_mode == "threshold":
        return cfg.threshold
    if len(scores) == 0:
        return 0.0
    k = max(1, math.ceil(cfg.top_fraction * len(scores)))
    return float(np.sort(scores)[::-1][k - 1])


def quality_filter(df: pl.DataFrame, cfg: QualityConfig, model_path: str | Path,
                   threshold: float | None = None) -> StepResult:
    """Score every row (`quality_score`); reject train rows below the threshold (reason `quality`).

    Pass `threshold` (from `keep_threshold` over all shards' train scores) when filtering shard
    by shard, so that a top fraction is taken over the whole dataset."""
    if not cfg.enabled or df.is_empty():
        return StepResult(df, empty_rejects(df))
    scored = df.with_columns(pl.Series("quality_score", score_texts(load_quality_model(model_path),
                                                                    df["text"].to_list())))
    if threshold is None:
        threshold = keep_threshold(scored.filter(pl.col("split") == "train")["quality_score"].to_numpy(), cfg)
    fails = (pl.col("split") == "train") & (pl.col("quality_score") < threshold)
    rejected = add_reason(scored.filter(fails), reason="quality", detail=f"threshold={threshold:.6f}",
                          value=pl.col("quality_score"))
    return StepResult(scored.filter(~fails), rejected.select(*scored.columns, *REJECT_COLUMNS))


def score_histogram(scores: np.ndarray, bins: int = 10) -> dict[str, int]:
    """Counts of scores in equal bins over [0, 1], keyed "lo-hi" (for metrics and artifacts)."""
    counts, edges = np.histogram(np.clip(scores, 0, 1), bins=bins, range=(0.0, 1.0))
    return {f"{edges[i]:.1f}-{edges[i + 1]:.1f}": int(c) for i, c in enumerate(counts)}
