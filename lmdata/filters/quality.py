"""A DCLM-style quality classifier: fastText trained in the pipeline, one thread, seeded.

Positives are the documents of one designated high-quality source, negatives the rest of the
pool after language ID (never the positive source), so the classifier cannot learn language.
Documents are cut into chunks of words for training; whole groups (both editions of a play) are
held out to measure precision and recall per source. Every document gets `quality_score` =
P(high quality); the train split is filtered by threshold or top fraction, the eval split is
scored only.

A classifier trained on too little data does harm (the issue's case: 14 chunks, held-out accuracy
0.22, 157 documents removed). So it needs `min_chunks_per_class` training chunks of each class and
a held-out balanced accuracy of at least `min_holdout_accuracy`; below either it raises
`InsufficientQualityData` (nothing filtered), or, with `on_insufficient: skip`, reports
`trained: false` with the reason and the stage keeps every document.
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

from lmdata.errors import ConfigError
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
    max_train_docs: int = 100_000  # documents per class read to train, whole groups by hash (`training_pool`)
    epoch: int = 10
    lr: float = 0.2
    dim: int = 32
    word_ngrams: int = 2
    bucket: int = 50_000  # hash buckets for word n-grams (model size ~ bucket * dim * 4 bytes)
    min_chunks_per_class: int = 200  # fewer training chunks in either class: not trained
    min_holdout_accuracy: float = 0.6  # held-out balanced accuracy (chance 0.5) below this: not used
    on_insufficient: str = "fail"  # "fail" (stop the stage) or "skip" (keep every document, say why)
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "filter.quality")
        if self.keep_mode not in ("top_fraction", "threshold"):
            raise ConfigError(f"filter.quality.keep_mode: 'top_fraction' or 'threshold', got {self.keep_mode!r}")
        if self.on_insufficient not in ("fail", "skip"):
            raise ConfigError(f"filter.quality.on_insufficient: 'fail' or 'skip', got {self.on_insufficient!r}")
        for name in ("top_fraction", "threshold", "holdout_fraction", "min_holdout_accuracy"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"filter.quality.{name}: expected 0..1, got {getattr(self, name)}")
        for name in ("chunk_words", "min_chunk_words", "max_chunks_per_class", "max_train_docs", "epoch", "dim",
                     "bucket"):
            if getattr(self, name) < 1:
                raise ConfigError(f"filter.quality.{name}: must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict | None) -> QualityConfig:
        return config_from_dict(cls, d or {}, "filter.quality")


class InsufficientQualityData(ConfigError):
    """Too few training chunks, or a held-out accuracy below the floor: the classifier would do harm."""


def check_positive_source(cfg: QualityConfig, sources: list[str], where: str = "the training rows") -> None:
    """`positive_source` must be a `source` value of the training rows (checked before any work)."""
    if cfg.positive_source not in sources:
        raise ConfigError(f"filter.quality.positive_source {cfg.positive_source!r} is not a source of {where}; "
                          f"sources present: {sorted(sources)} (set it to one of them, or filter.quality.enabled: "
                          "false)")


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
    """One row per chunk: source, label, holdout flag, chunk text (train split only); the training
    part capped to the same number of chunks per class."""
    return cap_classes(all_chunks(df, cfg), cfg)


def all_chunks(df: pl.DataFrame, cfg: QualityConfig) -> pl.DataFrame:
    """Every chunk of the train split, labelled and marked held out or not (no cap)."""
    check_positive_source(cfg, df.filter(pl.col("split") == "train")["source"].unique().to_list())
    group_col = "group" if "group" in df.columns else "id"
    rows = []
    train_df = df.filter(pl.col("split") == "train").select("id", "source", group_col, "text")
    held_groups = holdout_groups(train_df["source"].to_list(), train_df[group_col].to_list(), cfg)
    for r in train_df.iter_rows():
        held = r[2] in held_groups
        label = POS if r[1] == cfg.positive_source else NEG
        for k, chunk in enumerate(chunk_words(r[3], cfg.chunk_words, cfg.min_chunk_words)):
            rows.append((r[1], label, held, _unit_hash(f"{r[0]}:{k}", cfg.seed), chunk))
    return pl.DataFrame(rows, schema={"source": pl.Utf8, "label": pl.Utf8, "holdout": pl.Boolean,
                                      "order": pl.Float64, "chunk": pl.Utf8}, orient="row")


POOL_COLUMNS = ["id", "source", "group", "split", "text"]


def training_pool(shards: list[Path], cfg: QualityConfig) -> pl.DataFrame:
    """The train-split rows the classifier learns from, read shard by shard: per class (positive
    source or not), whole groups in hash order up to `max_train_docs` documents (at least one
    group), so the stage never holds the whole corpus's text. Under the cap: every train row."""
    meta = pl.concat([pl.read_parquet(s, columns=["id", "source", "group", "split"]) for s in shards])
    meta = meta.filter(pl.col("split") == "train").with_columns(
        positive=pl.col("source") == cfg.positive_source)
    sizes = meta.group_by("positive", "group").len()
    sizes = sizes.with_columns(order=pl.col("group").map_elements(lambda g: _unit_hash(g, cfg.seed),
                                                                   return_dtype=pl.Float64))
    sizes = sizes.sort("positive", "order", "group").with_columns(total=pl.col("len").cum_sum().over("positive"))
    chosen = sizes.filter((pl.col("total") <= cfg.max_train_docs) | (pl.col("total") == pl.col("len")))
    ids = meta.join(chosen.select("positive", "group"), on=["positive", "group"], how="semi")["id"]
    frames = [pl.read_parquet(s, columns=POOL_COLUMNS).filter(pl.col("id").is_in(ids)) for s in shards]
    return pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.Utf8 for c in POOL_COLUMNS})


def cap_classes(ex: pl.DataFrame, cfg: QualityConfig) -> pl.DataFrame:
    """Cap each class (in the training part) by hash order: balanced, deterministic classes."""
    train = ex.filter(~pl.col("holdout")).sort("order")
    n = min(cfg.max_chunks_per_class, *train.group_by("label").len()["len"].to_list(), 2**62)
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
    chunks = all_chunks(df, cfg)
    available = {POS: 0, NEG: 0} | dict(chunks.filter(~pl.col("holdout")).group_by("label").len().iter_rows())
    ex = cap_classes(chunks, cfg)
    train, held = ex.filter(~pl.col("holdout")), ex.filter(pl.col("holdout"))
    by_label = {POS: 0, NEG: 0} | dict(train.group_by("label").len().iter_rows())
    held_by_label = {POS: 0, NEG: 0} | dict(held.group_by("label").len().iter_rows())
    metrics: dict = {"trained": False, "train_chunks": train.height, "holdout_chunks": held.height,
                     "train_chunks_by_label": dict(sorted(by_label.items()))}
    fewest = min(available, key=lambda k: (available[k], k))
    if available[fewest] < cfg.min_chunks_per_class:
        what = (f"positive_source {cfg.positive_source!r}" if fewest == POS
                else "the other sources (negatives, after language ID and the rules)")
        return _insufficient(metrics, cfg, (
            f"{available[fewest]} training chunks of {what}, fewer than filter.quality.min_chunks_per_class "
            f"{cfg.min_chunks_per_class}: add data, lower min_chunks_per_class or chunk_words"))
    if min(held_by_label.values()) == 0:
        return _insufficient(metrics, cfg, (
            f"no held-out chunks of {'the positive' if held_by_label[POS] == 0 else 'the negative'} class "
            "(each source needs 2+ groups for one to be held out), so accuracy cannot be measured: add "
            "data or raise filter.quality.holdout_fraction"))
    model = _train([f"{lab} {c}" for lab, c in train.select("label", "chunk").iter_rows()], cfg,
                   Path(model_path))
    pred_pos = score_texts(model, held["chunk"].to_list()) >= 0.5
    truth_pos = (held["label"] == POS).to_numpy()
    tp = int((pred_pos & truth_pos).sum())
    balanced = float((pred_pos[truth_pos].mean() + (~pred_pos[~truth_pos]).mean()) / 2)
    metrics.update(
        holdout_balanced_accuracy=balanced,
        holdout_accuracy=float((pred_pos == truth_pos).mean()),
        holdout_precision=tp / int(pred_pos.sum()) if pred_pos.any() else 0.0,
        holdout_recall=tp / int(truth_pos.sum()) if truth_pos.any() else 0.0,
        holdout_accuracy_by_source={
            s: float((pred_pos[m] == truth_pos[m]).mean())
            for s in sorted(held["source"].unique().to_list())
            for m in [(held["source"] == s).to_numpy()]},
        holdout_chunks_by_source=dict(sorted(held.group_by("source").len().iter_rows())),
    )
    if balanced < cfg.min_holdout_accuracy:
        Path(model_path).unlink(missing_ok=True)
        return _insufficient(metrics, cfg, (
            f"held-out balanced accuracy {balanced:.3f} is below filter.quality.min_holdout_accuracy "
            f"{cfg.min_holdout_accuracy} (chance 0.5): the classifier cannot tell positive_source "
            f"{cfg.positive_source!r} from the rest; choose another positive_source or add data"))
    metrics["trained"] = True
    return metrics


def _insufficient(metrics: dict, cfg: QualityConfig, reason: str) -> dict:
    """Raise (on_insufficient: fail) or return the metrics with `skipped_reason` (skip)."""
    if cfg.on_insufficient == "fail":
        raise InsufficientQualityData(f"quality classifier not used: {reason}; or set "
                                      "filter.quality.on_insufficient: skip (or enabled: false)")
    return {**metrics, "trained": False, "skipped_reason": reason}


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
