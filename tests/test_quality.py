"""The fastText quality classifier on varied real text from the standard library.

Positives: `pydoc_data.topics` (the reference manual). Negatives: IDLE's release notes and the
docstrings of stdlib modules (two sources, so accuracy per source is meaningful).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lmdata.errors import ConfigError
from lmdata.filters.quality import (
    InsufficientQualityData,
    QualityConfig,
    keep_threshold,
    quality_filter,
    train_quality_classifier,
)

MODULES = ("argparse asyncio collections csv datetime decimal email functools heapq http inspect json "
           "logging os pathlib pickle random re shutil socket sqlite3 statistics string subprocess "
           "tarfile threading typing unittest urllib zipfile").split()


def stdlib_pool() -> pl.DataFrame:
    import idlelib
    import pydoc_data.topics as topics

    rows = [(f"pydoc/{k}", "pydoc", v) for k, v in sorted(topics.topics.items())]
    notes = Path(idlelib.__file__).parent
    for name in ("NEWS.txt", "NEWS2x.txt", "HISTORY.txt", "README.txt", "TODO.txt"):
        lines = (notes / name).read_text(encoding="utf-8").splitlines()
        rows += [(f"idle/{name}:{i}", "idle_notes", "\n".join(lines[i:i + 40])) for i in range(0, len(lines), 40)]
    for mod in MODULES:
        m = importlib.import_module(mod)
        # Submodules are skipped: dir() gains them as other tests import them (email.mime, http.client),
        # which made this pool, and so the classifier's numbers, depend on test order.
        names = [a for a in sorted(dir(m)) if not a.startswith("_") and not inspect.ismodule(getattr(m, a))]
        docs = [inspect.getdoc(getattr(m, a)) or "" for a in names]
        text = "\n\n".join(d for d in [inspect.getdoc(m) or "", *docs] if len(d) > 40)
        rows.append((f"doc/{mod}", "module_docs", text))
    df = pl.DataFrame(rows, schema=["id", "source", "text"], orient="row")
    return df.with_columns(pl.col("id").alias("group"),
                           pl.when(pl.int_range(pl.len()) % 5 == 0).then(pl.lit("eval"))
                           .otherwise(pl.lit("train")).alias("split"))


@pytest.fixture(scope="module")
def pool() -> pl.DataFrame:
    return stdlib_pool()


CFG = QualityConfig(positive_source="pydoc", holdout_fraction=0.3, seed=3)


def test_training_is_deterministic(pool, tmp_path):
    m1 = train_quality_classifier(pool, CFG, tmp_path / "a.bin")
    m2 = train_quality_classifier(pool, CFG, tmp_path / "b.bin")
    assert m1 == m2
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_held_out_accuracy_above_chance_per_source(pool, tmp_path):
    m = train_quality_classifier(pool, CFG, tmp_path / "q.bin")
    assert m["trained"] is True and m["holdout_balanced_accuracy"] > CFG.min_holdout_accuracy
    by_source = m["holdout_accuracy_by_source"]
    assert set(by_source) == {"pydoc", "idle_notes", "module_docs"}
    # chance: 0.5; held-out chunks ~70 idle notes, ~190 module docs (std errors ~0.06, ~0.035)
    assert by_source["idle_notes"] > 0.65 and by_source["module_docs"] > 0.58
    assert m["holdout_accuracy"] > 0.7 and m["holdout_precision"] > 0.6 and m["holdout_recall"] > 0.6


def test_filter_scores_all_but_never_drops_eval(pool, tmp_path):
    train_quality_classifier(pool, CFG, tmp_path / "q.bin")
    cfg = QualityConfig(positive_source="pydoc", keep_mode="top_fraction", top_fraction=0.5)
    res = quality_filter(pool, cfg, tmp_path / "q.bin")
    assert res.kept.height + res.rejected.height == pool.height
    assert res.rejected["split"].unique().to_list() == ["train"]
    assert res.rejected["reason"].unique().to_list() == ["quality"]
    assert res.kept.filter(pl.col("split") == "eval").height == pool.filter(pl.col("split") == "eval").height
    n_train = pool.filter(pl.col("split") == "train").height
    assert abs(res.kept.filter(pl.col("split") == "train").height - n_train / 2) <= 1
    # The manual's own pages score higher than the notes on average.
    scores = res.kept.vstack(res.rejected.drop("reason", "reason_detail", "reason_value"))
    means = dict(scores.group_by("source").agg(pl.col("quality_score").mean()).iter_rows())
    assert means["pydoc"] > means["idle_notes"]


def test_keep_threshold_modes():
    s = np.array([0.9, 0.1, 0.5, 0.7])
    assert keep_threshold(s, QualityConfig(top_fraction=0.5)) == 0.7
    assert keep_threshold(s, QualityConfig(keep_mode="threshold", threshold=0.3)) == 0.3


def test_bad_positive_source_fails_before_training(pool, tmp_path):
    with pytest.raises(ConfigError, match=r"'wikipedia' is not a source .*sources present: \['idle_notes', "
                       r"'module_docs', 'pydoc'\]"):
        train_quality_classifier(pool, QualityConfig(positive_source="wikipedia"), tmp_path / "q.bin")
    with pytest.raises(ConfigError, match="on_insufficient"):
        QualityConfig.from_dict({"on_insufficient": "ignore"})
    with pytest.raises(ValueError, match="keep_mode"):
        QualityConfig.from_dict({"keep_mode": "best"})
    with pytest.raises(ValueError, match="epoch"):
        QualityConfig.from_dict({"epoch": 2.5})


def test_holdout_is_stratified_by_source():
    from lmdata.filters.quality import holdout_groups

    sources = ["big"] * 20 + ["small"] * 3 + ["single"] * 2
    groups = [f"b{i}" for i in range(20)] + ["s0", "s1", "s2"] + ["one", "one"]  # "single": one group, 2 docs
    held = holdout_groups(sources, groups, QualityConfig(positive_source="big", holdout_fraction=0.2))
    assert len([g for g in held if g.startswith("b")]) == 4  # ceil(0.2 x 20)
    assert len([g for g in held if g.startswith("s")]) == 1  # at least one of a small source
    assert "one" not in held  # a source with a single group keeps it for training
    assert held == holdout_groups(sources[::-1], groups[::-1], QualityConfig(positive_source="big",
                                                                              holdout_fraction=0.2))


def tiny_pool() -> pl.DataFrame:
    """The issue's case in small: a handful of chunks per class."""
    import pydoc_data.topics as topics

    texts = [v for _, v in sorted(topics.topics.items())]
    rows = [(f"p{i}", "manual", texts[i][:2000]) for i in range(4)]
    rows += [(f"n{i}", "notes", texts[40 + i][:2000]) for i in range(4)]
    df = pl.DataFrame(rows, schema=["id", "source", "text"], orient="row")
    return df.with_columns(pl.col("id").alias("group"), pl.lit("train").alias("split"))


def test_too_few_training_chunks_fail_before_training_with_what_to_change(tmp_path):
    cfg = QualityConfig(positive_source="manual", min_chunks_per_class=200)
    with pytest.raises(InsufficientQualityData, match=r"training chunks of .* fewer than "
                       r"filter.quality.min_chunks_per_class 200.*on_insufficient: skip"):
        train_quality_classifier(tiny_pool(), cfg, tmp_path / "q.bin")
    assert not (tmp_path / "q.bin").exists()  # never trained


def test_too_few_training_chunks_skip_with_the_reason_when_configured(tmp_path):
    cfg = QualityConfig(positive_source="manual", min_chunks_per_class=200, on_insufficient="skip")
    m = train_quality_classifier(tiny_pool(), cfg, tmp_path / "q.bin")
    assert m["trained"] is False and "fewer than filter.quality.min_chunks_per_class 200" in m["skipped_reason"]
    assert 0 < m["train_chunks_by_label"]["__label__hq"] < 200


def indistinguishable_pool() -> pl.DataFrame:
    """The reference manual's topics split into two "sources" by a hash of the topic: no quality
    difference to learn, so held-out accuracy is at chance (measured 0.32-0.50 over 3 seeds)."""
    import pydoc_data.topics as topics

    import xxhash

    rows = [(f"pydoc/{k}", "manual_a" if xxhash.xxh3_64_intdigest(k.encode()) % 2 else "manual_b", v)
            for k, v in sorted(topics.topics.items())]
    df = pl.DataFrame(rows, schema=["id", "source", "text"], orient="row")
    return df.with_columns(pl.col("id").alias("group"), pl.lit("train").alias("split"))


def test_held_out_accuracy_below_the_floor_is_not_used(tmp_path):
    cfg = QualityConfig(positive_source="manual_a", min_chunks_per_class=20, holdout_fraction=0.3)
    with pytest.raises(InsufficientQualityData, match=r"balanced accuracy 0\.\d+ is below "
                       r"filter.quality.min_holdout_accuracy 0.6"):
        train_quality_classifier(indistinguishable_pool(), cfg, tmp_path / "q.bin")
    skip = QualityConfig(**{**cfg.__dict__, "on_insufficient": "skip"})
    m = train_quality_classifier(indistinguishable_pool(), skip, tmp_path / "q.bin")
    assert m["trained"] is False and m["holdout_balanced_accuracy"] < 0.6
    assert not (tmp_path / "q.bin").exists()  # a model that failed the floor is not left behind
