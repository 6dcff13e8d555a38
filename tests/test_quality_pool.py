"""The quality classifier's training pool: capped per class by whole groups, read shard by shard."""

import polars as pl
import pytest

from lmdata.errors import ConfigError
from lmdata.filters.quality import QualityConfig, training_pool


def shards(tmp_path, n_groups: int = 30, per_group: int = 3) -> list:
    """Two sources of `n_groups` groups each, spread over three shards, plus held-out rows."""
    rows = [{"id": f"{src}-{g}-{k}", "source": src, "group": f"{src}-g{g}", "split": "train",
             "text": f"text of {src} group {g} part {k}"}
            for src in ("shakespeare", "web") for g in range(n_groups) for k in range(per_group)]
    rows += [{"id": f"eval-{i}", "source": "web", "group": f"e{i}", "split": "eval", "text": "held out"}
             for i in range(5)]
    df = pl.DataFrame(rows)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"s{i}.parquet")
        df[i::3].write_parquet(paths[-1])
    return paths


def test_pool_under_the_cap_is_every_train_row(tmp_path):
    paths = shards(tmp_path)
    pool = training_pool(paths, QualityConfig(max_train_docs=1000))
    everything = pl.concat([pl.read_parquet(p) for p in paths]).filter(pl.col("split") == "train")
    assert sorted(pool["id"]) == sorted(everything["id"]) and pool.columns == everything.columns


def test_pool_is_capped_per_class_by_whole_groups(tmp_path):
    paths = shards(tmp_path)
    cfg = QualityConfig(max_train_docs=20)
    pool = training_pool(paths, cfg)
    by_source = dict(pool.group_by("source").len().rows())
    assert by_source == {"shakespeare": 18, "web": 18}  # 6 whole groups of 3 per class (<= 20)
    assert (pool.group_by("group").len()["len"] == 3).all() and set(pool["split"]) == {"train"}
    again = training_pool(list(reversed(paths)), cfg)
    assert sorted(again["id"]) == sorted(pool["id"])  # the choice does not depend on shard order
    assert training_pool(paths, QualityConfig(max_train_docs=1)).height == 6  # at least one group per class
    with pytest.raises(ConfigError, match="max_train_docs"):
        QualityConfig(max_train_docs=0)
