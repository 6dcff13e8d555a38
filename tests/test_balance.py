"""Mixture balancing: weights matched within tolerance, determinism, conservation, validation."""

from __future__ import annotations

import io

import polars as pl
import pytest

from lmdata.balance import BalanceConfig, balance, mixture_weights, source_tokens

# Stated tolerance: realised shares within 0.02 of the target when documents are small relative
# to each source (here 2% of the smallest source's target at most).
TOL = 0.02


def corpus() -> pl.DataFrame:
    """Three sources of very different sizes (docs of 400-800 bytes), plus an eval split."""
    rows = []
    for source, n in (("big", 600), ("mid", 150), ("small", 40)):
        for i in range(n):
            text = f"{source} document {i} " + "word " * (80 + (i * 37) % 80)
            rows.append((f"{source}-{i}", source, text, "eval" if i % 10 == 0 else "train"))
    df = pl.DataFrame(rows, schema=["id", "source", "text", "split"], orient="row")
    return df.with_columns(pl.col("text").str.len_bytes().cast(pl.Int64).alias("n_bytes"))


def realised(res) -> dict[str, float]:
    train = res.kept.filter(pl.col("split") == "train")
    tok = dict(train.group_by("source").agg((pl.col("n_bytes") * pl.col("repeats")).sum()).iter_rows())
    total = sum(tok.values())
    return {s: t / total for s, t in tok.items()}


@pytest.mark.parametrize("cfg", [
    BalanceConfig(mode="explicit", weights={"big": 0.5, "mid": 0.3, "small": 0.2}, max_repeats=8),
    BalanceConfig(temperature=2.0, max_repeats=8),
    BalanceConfig(temperature=4.0, max_repeats=3),
])
def test_weights_matched_within_tolerance(cfg):
    df = corpus()
    res, stats = balance(df, cfg)
    target = mixture_weights(source_tokens(df, cfg), cfg)
    for s, share in realised(res).items():
        assert abs(share - target[s]) < TOL, (s, share, target[s])
    assert res.kept["repeats"].max() <= cfg.max_repeats
    assert stats["target_weights"] == pytest.approx(target)


def test_temperature_one_keeps_the_natural_mixture():
    df = corpus()
    res, _ = balance(df, BalanceConfig(temperature=1.0))
    assert res.rejected.is_empty() and res.kept["repeats"].unique().to_list() == [1]


def test_conservation_and_untouched_eval():
    df = corpus()
    res, stats = balance(df, BalanceConfig(mode="explicit", weights={"big": 0.2, "mid": 0.3, "small": 0.5}))
    assert res.kept.height + res.rejected.height == df.height  # rows_kept counts unique documents
    assert stats["rows_out"] == res.kept["repeats"].sum()  # rows_out counts the up-sampled copies
    assert set(res.rejected["reason"].to_list()) == {"downsampled"}
    assert res.rejected["split"].unique().to_list() == ["train"]
    ev = res.kept.filter(pl.col("split") == "eval")
    assert ev.height == df.filter(pl.col("split") == "eval").height and ev["repeats"].unique().to_list() == [1]
    assert stats["tokens_after"]["small"] > stats["tokens_before"]["small"]
    assert stats["tokens_after"]["big"] < stats["tokens_before"]["big"]


def test_identical_params_give_identical_bytes():
    df = corpus()
    cfg = BalanceConfig(temperature=3.0, seed=7)

    def as_bytes(res) -> bytes:
        kept, rejected = io.BytesIO(), io.BytesIO()
        res.kept.write_parquet(kept)
        res.rejected.write_parquet(rejected)
        return kept.getvalue() + rejected.getvalue()

    assert as_bytes(balance(df, cfg)[0]) == as_bytes(balance(df, cfg)[0])
    other = balance(df, BalanceConfig(temperature=3.0, seed=8))[0]
    assert other.kept["id"].to_list() != balance(df, cfg)[0].kept["id"].to_list()


def test_bad_configuration_fails_before_work():
    df = corpus()
    with pytest.raises(ValueError, match="do not exist"):
        balance(df, BalanceConfig(mode="explicit", weights={"big": 1.0, "mid": 1.0, "small": 1.0, "wiki": 1.0}))
    with pytest.raises(ValueError, match="no weight"):
        balance(df, BalanceConfig(mode="explicit", weights={"big": 1.0}))
    with pytest.raises(ValueError, match="temperature"):
        BalanceConfig.from_dict({"temperature": "hot"})
    with pytest.raises(ValueError, match="unknown setting"):
        BalanceConfig.from_dict({"temprature": 2.0})
