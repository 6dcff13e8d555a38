"""`lmforge why` names, for every stage, the rule, the measured value, the threshold and the
setting; evaluation documents show what the evaluation-set curation did; `lmforge query` with bad
SQL prints one line and fails. Crafted shards, one folder per stage, as the pipeline writes them."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from flows.cli import main as lmforge

REJECT = {"reason": pl.Utf8, "reason_detail": pl.Utf8, "reason_value": pl.Float64}


def write(root: Path, stage: str, rows: list[dict], rejected: bool = False) -> None:
    folder = root / stage / "corpus" / ("rejected" if rejected else "")
    folder.mkdir(parents=True, exist_ok=True)
    base = {"content_hash": "h", "locator": "f.jsonl:1", "n_bytes": 10, "text": "t"}
    schema = {"id": pl.Utf8, "source": pl.Utf8, "split": pl.Utf8, "content_hash": pl.Utf8, "locator": pl.Utf8,
              "n_bytes": pl.Int64, "text": pl.Utf8, **(REJECT if rejected else {})}
    extra = {k: v for r in rows for k, v in r.items() if k not in schema}
    schema |= {k: pl.Int64 if isinstance(v, int) else pl.Float64 if isinstance(v, float) else pl.Utf8
               for k, v in extra.items()}
    pl.DataFrame([{**base, **r} for r in rows], schema=schema).write_parquet(folder / "part-0000.parquet")


@pytest.fixture
def pipeline(tmp_path) -> Path:
    """Documents: big (too large at ingest), redir (clean: redirect), dupe (dedup: near_dup of keep1),
    french (filter: lang), short (filter: gopher_word_count), low (filter: quality), cut (balance:
    downsampled), keep1 (emitted twice), evfr (evalset: lang), evok (in the evaluation set)."""
    d = tmp_path / "data"
    train = [{"id": i, "source": "wiki", "split": "train"} for i in ("dupe", "french", "short", "low", "cut", "keep1")]
    ev = [{"id": i, "source": "wiki", "split": "eval"} for i in ("evfr", "evok")]
    write(d, "ingest", train + ev + [{"id": "redir", "source": "wiki", "split": "train"}])
    write(d, "ingest", [{"id": "big", "source": "wiki", "split": None, "reason": "too_large",
                         "reason_detail": "f.jsonl:9", "reason_value": 2e7}], rejected=True)
    write(d, "clean", train + ev)
    write(d, "clean", [{"id": "redir", "source": "wiki", "split": "train", "reason": "redirect",
                        "reason_detail": "redirect to [[Africa]]", "reason_value": None}], rejected=True)
    write(d, "evalset", [{"id": "evok", "source": "wiki", "split": "eval", "lang": "en", "lang_score": 0.97}])
    write(d, "evalset", [{"id": "evfr", "source": "wiki", "split": "eval", "reason": "lang", "reason_detail": "en",
                          "reason_value": 0.224}], rejected=True)
    write(d, "dedup", [r for r in train if r["id"] != "dupe"])
    write(d, "dedup", [{"id": "dupe", "source": "wiki", "split": "train", "reason": "near_dup",
                        "reason_detail": "keep1", "reason_value": 0.81}], rejected=True)
    kept = [{"id": i, "source": "wiki", "split": "train", "lang": "en", "lang_score": 0.93, "quality_score": 0.9}
            for i in ("cut", "keep1")]
    write(d, "filter", kept)
    write(d, "filter", [
        {"id": "french", "source": "wiki", "split": "train", "reason": "lang", "reason_detail": "fr",
         "reason_value": 0.98},
        {"id": "short", "source": "wiki", "split": "train", "reason": "gopher_word_count", "reason_detail": None,
         "reason_value": 12.0},
        {"id": "low", "source": "wiki", "split": "train", "reason": "quality", "reason_detail": "threshold=0.300000",
         "reason_value": 0.12}], rejected=True)
    write(d, "balance", [{"id": "keep1", "source": "wiki", "split": "train", "repeats": 2}])
    write(d, "balance", [{"id": "cut", "source": "wiki", "split": "train", "reason": "downsampled",
                          "reason_detail": "wiki", "reason_value": None}], rejected=True)
    params = {"ingest": {"max_doc_bytes": 10_000_000}, "filter": {"langid": {"min_score": 0.5}},
              "evalset": {"langid": {"min_score": 0.4}}, "balance": {"corpus": {"temperature": 2.0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # dvc.lock records what the filter ran with; it wins over a params.yaml edited since.
    lock = {"schema": "2.0", "stages": {"filter@corpus": {"params": {"params.yaml": {
        "filter": {"langid": {"min_score": 0.6}, "heuristics": {"min_doc_words": 40}}}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    return tmp_path


def why(root: Path, doc: str, capsys) -> str:
    assert lmforge(["why", doc, "--data", str(root / "data"), "--params", str(root / "params.yaml")]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("doc, expected", [
    ("big", "ingest corpus: rejected too_large (2e+07 bytes > ingest.max_doc_bytes 10000000)"),
    ("redir", "clean corpus: rejected redirect (redirect to [[Africa]]; clean.redirects true)"),
    ("dupe", "dedup corpus: rejected near_dup (near-duplicate of keep1, estimated Jaccard 0.81 >= "
             "dedup.minhash.threshold 0.72 (LSH 14 bands x 8 rows"),
    ("french", "filter corpus: rejected lang (fr 0.98 not in filter.langid.allowed ['en'])"),
    ("short", "filter corpus: rejected gopher_word_count (12 < filter.heuristics.min_doc_words 40)"),
    ("low", "filter corpus: rejected quality (score 0.12 < 0.3, the cut that keeps the top "
            "filter.quality.top_fraction 0.9 of training scores)"),
    ("cut", "balance corpus: rejected downsampled (source wiki is over its mixture share; balance.corpus: "
            "temperature 2.0"),
    ("keep1", "balance corpus: kept (emitted x2 (repeats))"),
    ("evfr", "evalset corpus: rejected lang (en 0.224 < evalset.langid.min_score 0.4)"),
    ("evok", "evalset corpus: kept (lang en 0.97 >= evalset.langid.min_score 0.4; in the evaluation set)"),
])
def test_why_names_rule_value_threshold_and_setting_at_every_stage(pipeline, capsys, doc, expected):
    out = why(pipeline, doc, capsys)
    assert expected in out, out


def test_why_walks_the_stages_in_pipeline_order(pipeline, capsys):
    lines = why(pipeline, "keep1", capsys).splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [
        "ingest corpus", "clean corpus", "dedup corpus", "filter corpus", "balance corpus"]
    assert "  filter corpus: kept (lang en 0.93 >= filter.langid.min_score 0.6; quality score 0.9)" in lines


def test_a_lang_rejection_under_the_score_floor_names_min_score(pipeline, capsys):
    write(pipeline / "data", "filter", [{"id": "french", "source": "wiki", "split": "train", "reason": "lang",
                                         "reason_detail": "en", "reason_value": 0.224}], rejected=True)
    assert "filter corpus: rejected lang (en 0.224 < filter.langid.min_score 0.6)" in why(pipeline, "french", capsys)


def test_unknown_id_and_bad_sql_fail_in_one_line(pipeline, capsys):
    assert lmforge(["why", "nope", "--data", str(pipeline / "data")]) == 1
    assert "no document with id starting 'nope'" in capsys.readouterr().err
    rc = lmforge(["query", "SELEC id FROM lineage", "--data", str(pipeline / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "syntax error" in err and "lineage" in err
    assert lmforge(["query", "SELECT count(*) AS n FROM lineage WHERE status = 'rejected'",
                    "--data", str(pipeline / "data")]) == 0
    assert "\n8\n" in capsys.readouterr().out  # big, redir, evfr, dupe, french, short, low, cut


def test_a_planted_document_names_its_kind_origin_and_target_step(pipeline, capsys):
    """With the planted-noise study's labels (data/plant/labels.parquet), `why` says what a planted
    document is, then (as for any document) which step removed it; other documents are unchanged."""
    from lmdata.plant import LABEL_SCHEMA, LABELS_FILE

    (pipeline / "data" / "plant").mkdir()
    pl.DataFrame([{"id": "dupe", "kind": "near_copy", "origin": "keep1", "jaccard": 0.81, "jaccard_bin": "0.8-0.9",
                   "detail": "12% of words replaced"}], schema=LABEL_SCHEMA).write_parquet(
        pipeline / "data" / "plant" / LABELS_FILE)
    lines = why(pipeline, "dupe", capsys).splitlines()
    assert lines[1] == ("  planted near_copy (origin keep1; Jaccard 0.81 to it; 12% of words replaced): the step "
                        "meant to catch it is minhash (docs/NOISE.md)")
    assert "dedup corpus: rejected near_dup (near-duplicate of keep1" in "\n".join(lines[2:])
    assert "planted" not in why(pipeline, "keep1", capsys)
