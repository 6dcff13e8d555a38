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

from lmdata.filters.quality import QualityConfig, keep_threshold, quality_filter, train_quality_classifier

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
    with pytest.raises(ValueError, match="not a source"):
        train_quality_classifier(pool, QualityConfig(positive_source="wikipedia"), tmp_path / "q.bin")
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
