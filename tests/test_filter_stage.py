"""The filter stage's guardrails: config errors and a missing positive_source stop it before any
work, in one line; rules that drop most of a source are named with the setting to change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from lmdata.filters.explain import SHORT_TEXT_HINT, heuristic_setting, rules_dropping_most
from lmdata.filters.heuristics import HeuristicsConfig
from tests.conftest import ROOT, python_env


def run_filter(tmp_path: Path, filter_params: dict) -> subprocess.CompletedProcess:
    """`python -m flows.filter corpus` on one crafted dedup shard (sources wiki and quotes)."""
    shard = tmp_path / "data" / "dedup" / "corpus" / "part-0000.parquet"
    shard.parent.mkdir(parents=True)
    pl.DataFrame({"id": ["a", "b", "c"], "source": ["wiki", "quotes", "secret"], "split": ["train", "train", "eval"],
                  "text": ["An article.", "A quote.", "Held out."]}).write_parquet(shard)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "data"}, "filter": filter_params}))
    return subprocess.run([sys.executable, "-m", "flows.filter", "corpus"], cwd=tmp_path, capture_output=True,
                          text=True, env=python_env(PYTHONPATH=str(ROOT)), timeout=120)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_missing_positive_source_stops_the_stage_before_work_naming_the_sources(tmp_path):
    out = run_filter(tmp_path, {"langid": {"enabled": False}, "quality": {"positive_source": "wikipedia"}})
    assert_one_line_error(out, "filter.quality.positive_source 'wikipedia'", "sources present: ['quotes', 'wiki']")
    assert not (tmp_path / "data" / "filter").exists() and not (tmp_path / "models").exists()


def test_config_errors_stop_the_stage_before_work(tmp_path):
    out = run_filter(tmp_path, {"heuristics": {"min_doc_word": 5}})
    assert_one_line_error(out, "filter.heuristics: unknown setting(s) ['min_doc_word']")
    assert not (tmp_path / "data" / "filter").exists()


def test_rules_dropping_most_of_a_source_name_the_setting():
    heur = HeuristicsConfig()
    rows = rules_dropping_most({"quotes": 100, "wiki": 10, "po": 50},
                               {("quotes", "gopher_word_count"): 97, ("quotes", "lang"): 3,
                                ("wiki", "c4_curly_bracket"): 6, ("po", "lang"): 20}, heur)
    assert [(r["source"], r["rule"], r["dropped"], r["of"]) for r in rows] == [
        ("quotes", "gopher_word_count", 97, 100), ("wiki", "c4_curly_bracket", 6, 10)]
    assert rows[0]["setting"] == "filter.heuristics.min_doc_words or filter.heuristics.disabled_rules"
    assert rows[0]["hint"] == SHORT_TEXT_HINT and "hint" not in rows[1]
    assert rows[1]["setting"].startswith("filter.heuristics.c4_max_curly_line_frac")


def test_rule_settings_read_the_threshold_that_ran():
    heur = HeuristicsConfig(min_doc_words=40)
    assert heuristic_setting("gopher_word_count", 12.0, heur).describe(12.0) == \
        "12 < filter.heuristics.min_doc_words 40"
    assert heuristic_setting("gopher_word_count", 2e5, heur).describe(2e5) == \
        "2e+05 > filter.heuristics.max_doc_words 100000"
    assert heuristic_setting("gopher_dup_5gram", 0.4, heur, "evalset.heuristics").describe(0.4) == \
        "0.4 > evalset.heuristics.max_dup_ngram_char_frac.5 0.15"
    line = heuristic_setting("c4_min_words_per_line", 0.8, heur).describe(0.8)
    assert line == ("0.8 > filter.heuristics.c4_max_bad_line_frac 0.5 "
                    "(filter.heuristics.c4_min_words_per_line 3)")


def small_pool(tmp_path: Path, quality: dict) -> dict:
    """A dedup output with two sources of 6 documents each, too few chunks to train a classifier."""
    prose = ("The river ran past the old mill and the miller watched it with a patient eye while the "
             "children gathered smooth stones from the shallow water near the bank. ")
    rows = [{"id": f"{s}{i}", "source": s, "group": f"{s}{i}", "split": "train", "locator": f"{s}:{i}",
             "content_hash": f"{i:032d}", "text": f"{s} {i}. " + prose * 3, "n_bytes": 500, "meta": "{}"}
            for s in ("wiki", "forum") for i in range(6)]
    shard = tmp_path / "data" / "dedup" / "corpus" / "part-0000.parquet"
    shard.parent.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(shard)
    return {"data": {"root": str(tmp_path / "data")},
            "filter": {"model_dir": str(tmp_path / "models"), "langid": {"enabled": False},
                       "heuristics": {"enabled": False}, "quality": {"positive_source": "wiki", **quality}}}


def test_too_small_a_classifier_fails_the_stage_in_one_line_writing_nothing(tmp_path, prefect_harness, monkeypatch):
    from flows.filter import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_pool(tmp_path, {})))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # the flow returns a Failed state: no traceback, one line
        main(["corpus"])
    error = str(stop.value.code)
    assert error.startswith("filter corpus: quality classifier not used:") and len(error.splitlines()) == 1
    assert "min_chunks_per_class 200" in error and "on_insufficient: skip" in error
    assert not (tmp_path / "data" / "filter" / "corpus").exists() and not (tmp_path / "models" / "corpus").exists()


def test_skipped_classifier_keeps_every_document_and_says_why(tmp_path, prefect_harness, monkeypatch):
    import json

    from flows.filter import filter_stage

    monkeypatch.chdir(tmp_path)
    metrics = filter_stage("corpus", small_pool(tmp_path, {"on_insufficient": "skip"}))
    assert metrics["rows_kept"] == 12 and metrics["rows_rejected"] == 0
    clf = metrics["quality_classifier"]
    assert clf["trained"] is False and "fewer than filter.quality.min_chunks_per_class 200" in clf["skipped_reason"]
    saved = json.loads((tmp_path / "models" / "corpus" / "classifier.json").read_text())
    assert saved["trained"] is False and saved["skipped_reason"] == clf["skipped_reason"]
    assert pl.read_parquet(tmp_path / "data" / "filter" / "corpus" / "part-0000.parquet").height == 12
