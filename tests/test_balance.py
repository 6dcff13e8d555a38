"""Mixture balancing: weights matched within tolerance, UniMax redistribution, the cut guard,
determinism, conservation, validation."""

from __future__ import annotations

import io

import polars as pl
import pytest

from lmdata.balance import BalanceConfig, balance, mixture_weights, source_tokens, unimax_allocation
from lmdata.errors import ConfigError

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
    planned = stats["planned_weights"]  # the target after UniMax gave capped sources' excess away
    for s, share in realised(res).items():
        assert abs(share - planned[s]) < TOL, (s, share, planned[s])
    assert res.kept["repeats"].max() <= cfg.max_repeats
    assert stats["target_weights"] == pytest.approx(target)
    capped = {s for s, row in stats["sources"].items() if row["capped"]}
    for s in set(target) - capped:  # uncapped sources keep their ratios to each other
        for o in set(target) - capped - {s}:
            assert planned[s] / planned[o] == pytest.approx(target[s] / target[o])


def test_temperature_one_keeps_the_natural_mixture():
    df = corpus()
    res, _ = balance(df, BalanceConfig(temperature=1.0))
    assert res.rejected.is_empty() and res.kept["repeats"].unique().to_list() == [1]


def test_unimax_gives_a_capped_source_excess_to_the_others_by_weight():
    sizes = {"small": 100.0, "mid": 300.0, "big": 600.0}
    weights = {"small": 0.5, "mid": 0.3, "big": 0.2}
    # small needs 500 > 2 x 100: capped at 200; the other 800 split 0.3 : 0.2 -> 480, 320.
    assert unimax_allocation(sizes, weights, 1000.0, 2) == pytest.approx({"small": 200, "mid": 480, "big": 320})
    # With mid at 200 tokens its 480 also exceeds 2 epochs: capped at 400, big takes the remaining 400.
    sizes["mid"] = 200.0
    assert unimax_allocation(sizes, weights, 1000.0, 2) == pytest.approx({"small": 200, "mid": 400, "big": 400})
    # Every source capped: the total falls short of the budget rather than breaking the cap.
    assert unimax_allocation({"a": 10.0, "b": 10.0}, {"a": 0.5, "b": 0.5}, 100.0, 2) == {"a": 20.0, "b": 20.0}
    assert unimax_allocation({"a": 10.0, "b": 10.0}, {"a": 1.0, "b": 0.0}, 15.0, 2) == {"a": 15.0, "b": 0.0}


def tiny_sources_beside_a_big_one() -> pl.DataFrame:
    """The issue's case: one large source and two sources with one small surviving document each."""
    rows = [(f"big-{i}", "big", f"big document {i} " + "word " * 200) for i in range(200)]
    rows += [("tiny-a", "tiny_a", "a short text " * 10), ("tiny-b", "tiny_b", "another short one " * 8)]
    df = pl.DataFrame(rows, schema=["id", "source", "text"], orient="row").with_columns(pl.lit("train").alias("split"))
    return df.with_columns(pl.col("text").str.len_bytes().cast(pl.Int64).alias("n_bytes"))


def test_a_tiny_source_at_its_cap_no_longer_shrinks_the_big_one():
    df = tiny_sources_beside_a_big_one()
    res, stats = balance(df, BalanceConfig(temperature=2.0, max_repeats=4))
    big = stats["sources"]["big"]
    # Temperature 2 asks 2.4% for each one-document source (natural share 0.26%): more than 4 copies
    # give. Shrinking the whole budget until that cap held cut big by ~90%; UniMax gives the excess to big.
    tiny = stats["sources"]["tiny_a"]
    assert stats["target_weights"]["tiny_a"] * sum(stats["tokens_before"].values()) > 4 * tiny["tokens_before"]
    assert tiny["capped"] and big["change_pct"] > -3
    assert res.kept.filter(pl.col("source") == "tiny_a")["repeats"].to_list() == [4]
    assert stats["small_sources"] == {"tiny_a": 1, "tiny_b": 1}  # fewer than min_source_docs (5)
    assert balance(df, BalanceConfig(min_source_docs=1))[1]["small_sources"] == {}


def test_cut_guard_fails_naming_source_cut_and_setting():
    df = corpus()
    cfg = BalanceConfig(mode="explicit", weights={"big": 0.1, "mid": 0.45, "small": 0.45}, max_repeats=4)
    with pytest.raises(ConfigError, match=r"source 'big' would be cut by \d+% .*balance.max_source_cut 0.5"):
        balance(df, cfg)
    res, stats = balance(df, BalanceConfig(**{**cfg.__dict__, "max_source_cut": 0.9}))
    assert -90 < stats["sources"]["big"]["change_pct"] < -50
    assert res.rejected.height > 0
    # A weight of 0 drops a source on purpose: not a cut the guard refuses.
    res, _ = balance(df, BalanceConfig(mode="explicit", weights={"big": 1.0, "mid": 1.0, "small": 0.0}, max_repeats=8))
    assert res.kept.filter((pl.col("source") == "small") & (pl.col("split") == "train")).is_empty()


def test_conservation_and_untouched_eval():
    df = corpus()
    res, stats = balance(df, BalanceConfig(mode="explicit", weights={"big": 0.2, "mid": 0.3, "small": 0.5},
                                           max_source_cut=0.9))
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
    with pytest.raises(ConfigError, match="max_source_cut"):
        BalanceConfig.from_dict({"max_source_cut": 1.5})


def test_stage_refuses_a_gutting_plan_in_one_line_before_writing(tmp_path):
    """`python -m flows.balance corpus`: the guard runs before Prefect starts; no traceback, no output."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT, python_env

    (tmp_path / "data" / "filter" / "corpus").mkdir(parents=True)
    corpus().write_parquet(tmp_path / "data" / "filter" / "corpus" / "part-0000.parquet")
    params = {"data": {"root": "data"}, "balance": {"corpus": {
        "mode": "explicit", "weights": {"big": 0.1, "mid": 0.45, "small": 0.45}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "flows.balance", "corpus"], cwd=tmp_path, capture_output=True,
                         text=True, env=python_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "'big' would be cut by" in out.stderr and "balance.corpus.max_source_cut" in out.stderr
    assert not (tmp_path / "data" / "balance").exists()
