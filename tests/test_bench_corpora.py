"""The corpora bench (bench/corpora.py): its labelled mixed corpus and its scoring of stage outputs."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from corpora_lib.corpus import build_corpus, jaccard  # noqa: E402
from corpora_lib.report import MARKUP, Outcomes, build_report  # noqa: E402


@pytest.fixture(scope="module")
def corpus(raw_sample) -> list[dict]:
    return build_corpus(raw_sample, seed=0, quick=True)


def test_corpus_is_deterministic_and_labelled(corpus, raw_sample):
    assert build_corpus(raw_sample, seed=0, quick=True) == corpus
    ids = [r["id"] for r in corpus]
    assert len(set(ids)) == len(ids)
    kinds = {r["plant_kind"] for r in corpus}
    assert {"article", "redirect", "disambiguation", "template_page", "html_page", "html_pydoc", "short_en",
            "short_foreign", "long_foreign", "dup_exact", "dup_near"} <= kinds
    by_id = {r["id"]: r for r in corpus}
    for r in corpus:
        if r["plant_kind"] == "redirect":
            assert re.match(r"#redirect ?\[\[", r["text"], re.I)
        if r["plant_kind"] == "dup_exact":
            assert r["text"] == by_id[r["plant_of"]]["text"]
        if r["plant_kind"] == "dup_near":
            assert by_id[r["plant_of"]]["plant_kind"] in ("article", "html_page")
            assert r["text"] != by_id[r["plant_of"]]["text"]
            assert 0.75 <= r["plant_jaccard"] <= 1.0
        if r["plant_kind"].endswith("foreign"):
            assert r["plant_lang"] != "en"
    articles = [r["text"] for r in corpus if r["plant_kind"] == "article"]
    for marker in ("{{Infobox", "{{cite", "<ref", "[[", "|", "'''", "== ", "{|", "[[File:", "[[Category:", "&lt;",
                   "&amp;", "&ndash;"):
        assert any(marker in a for a in articles), marker
    assert all("'''" in a and "<ref" in a and "[[Category:" in a for a in articles)


def test_near_copy_keeps_its_markup_choices(corpus):
    """A near copy of a wiki article differs from it about as much as its prose does."""
    by_id = {r["id"]: r for r in corpus}
    pairs = [(r, by_id[r["plant_of"]]) for r in corpus
             if r["plant_variant"] == "light_edit" and r["source"] == "wiki"]
    assert pairs
    for copy, orig in pairs:
        assert abs(jaccard(copy["text"], orig["text"]) - copy["plant_jaccard"]) < 0.3


def write_stage(root: Path, stage: str, kept: list[dict], rejected: list[dict]) -> Path:
    out = root / stage / "corpus"
    (out / "rejected").mkdir(parents=True)
    pl.DataFrame(kept, schema={"id": pl.Utf8, "split": pl.Utf8, "source": pl.Utf8, "text": pl.Utf8,
                               "meta": pl.Utf8}).write_parquet(out / "s-00000.parquet")
    pl.DataFrame(rejected, schema={"id": pl.Utf8, "split": pl.Utf8, "meta": pl.Utf8, "reason": pl.Utf8,
                                   "reason_detail": pl.Utf8, "reason_value": pl.Float64}
                 ).write_parquet(out / "rejected" / "s-00000.parquet")
    return out


def test_scoring_joins_rows_back_by_line_and_reads_reasons(tmp_path, raw_sample):
    def rec(rid, kind, text, lang="en", of=None):
        return {"id": rid, "source": "wiki", "title": rid, "url": "", "text": text, "plant_kind": kind,
                "plant_lang": lang, "plant_of": of, "plant_variant": "exact" if of else None,
                "plant_jaccard": 1.0 if of else None}

    prose = "The parish church of the town was rebuilt in the fifteenth century by the guild. " * 8
    records = [rec("a1", "article", prose), rec("a2", "article", "'''Bold''' " + prose),
               rec("r1", "redirect", "#REDIRECT [[A1]]"), rec("c1", "dup_exact", prose, of="a1"),
               rec("f1", "long_foreign", "Das ist ein deutscher Text über die Kirche der Stadt.", lang="de")]
    o = Outcomes(records, "mixed.jsonl")
    line = [json.dumps({"line": k + 1}) for k in range(len(records))]
    row = {f"p{k}": {"id": f"p{k}", "split": "train", "source": "wiki", "text": r["text"], "meta": line[k]}
           for k, r in enumerate(records)}
    row["p4"]["split"] = "eval"
    o.read_stage("ingest", write_stage(tmp_path, "ingest", list(row.values()), []))
    o.read_stage("clean", write_stage(tmp_path, "clean", [row["p0"], row["p1"], row["p3"], row["p4"]],
                                      [{**row["p2"], "reason": "redirect", "reason_detail": "A1", "reason_value": None}]))
    o.read_stage("dedup", write_stage(tmp_path, "dedup", [row["p0"], row["p1"], row["p4"]], [
        {**row["p3"], "reason": "exact_dup", "reason_detail": "p0", "reason_value": 1.0}]))
    params = {"filter": {"langid": {"allowed": ["en"], "min_score": 0.5,
                                    "model_path": str(raw_sample / "models" / "lid.176.ftz")}}}
    log = [{"stage": s, "status": "ok"} for s in ("ingest", "clean", "dedup")]
    rows = {r["measure"]: r for r in build_report(o, params, log)["rows"]}
    assert rows["corpora_articles_kept_for_training"]["ours"] == 1.0
    assert rows["corpora_redirects_rejected_as_redirect"]["ours"] == 1.0
    assert rows["corpora_planted_exact_duplicates_found"]["ours"] == 1.0
    assert rows["corpora_non_english_rejected"]["ours"] == 0.0  # the German eval document is in the eval set
    assert rows["corpora_evalset_allowed_language"]["ours"] == 0.0
    assert rows["corpora_kept_docs_without_markup"]["ours"] == pytest.approx(2 / 3, abs=1e-3)  # a2 kept its '''
    assert rows["corpora_planted_near_duplicates_found"]["ours"] is None  # no near copy planted here
    assert MARKUP["html_tag"].search("<p class='x'>") and not MARKUP["entity"].search("&c. and more")


def test_scratch_params_point_the_pipeline_at_one_jsonl(tmp_path, raw_sample):
    import corpora

    params = corpora.scratch_params(tmp_path, tmp_path / "mixed.jsonl", raw_sample, ["dedup.near=false"])
    (source,) = params["ingest"]["corpus"]["sources"]
    assert source["type"] == "jsonl" and source["fields"]["source"] == "source"
    assert params["data"]["root"] == str(tmp_path / "data") and params["dedup"]["near"] is False
    assert params["filter"]["langid"]["model_path"] == str(raw_sample / "models" / "lid.176.ftz")
    assert "data/raw/" not in json.dumps(params)
    assert corpora.stage_flow("ingest").name == "ingest"
    assert corpora.stage_flow("no_such_stage") is None
