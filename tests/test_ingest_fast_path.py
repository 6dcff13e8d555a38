"""Ingest's fast path gives the reference's records and rows: JSONL parsed by orjson from whole
blocks (falling back to `json` where the two could differ), rows built straight into Arrow and
written without pandera (the schema holds by construction: checked here by pandera on the output)."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import polars as pl
import pytest

import lmdata.readers as readers
from lmdata.ingest import BuiltRowWriter, IngestConfig, _meta_json, ingest_source
from lmdata.readers import BadRecord, RawRecord, record_of
from lmdata.schema import SchemaViolation, validate
from lmdata.shards import list_shards
from lmdata.text import decode_utf8, normalise_utf8
from tests.test_ingest_vectorised import EDGE, reference_normalise

LINES = [
    b'{"text": "plain", "n": 1}',
    b'{"text": "big ints", "a": 123456789012345678901234567890, "b": -9223372036854775809, '
    b'"c": 18446744073709551616, "d": [1, {"e": 99999999999999999999}]}',
    b'{"text": "floats", "f": 0.1, "g": 1e400, "h": -0.0, "i": 2.2250738585072011e-308, "j": 1E5}',
    b'{"text": "fast floats", "score": 0.9312, "x": [1.5e-300, 123.456e7, -2.5, 9.2e18], "n": -9223372036854775808, '
    b'"u": 18446744073709551615, "tiny": 5e-324}',
    b'{"text": "a float literal re-parsed", "big_float": 1e19, "neg": -9.3e18}',
    b'{"text": "not json numbers", "k": NaN, "l": -Infinity}',
    b'{"text": "lone \\ud800 surrogate and a pair \\ud83d\\ude00"}',
    b'\xef\xbb\xbf{"text": "a BOM before the object"}',
    b'{"text": "invalid utf8 \xff\xfe here"}',
    b'{"text": "CRLF line"}\r',
    b"",
    b"   \t",
    b"\r",
    b'["a list"]',
    b'"a string"',
    b'{"text": "unterminated',
    b'{"text": "control \\u0000\\u001f\\u007f and \\u0085", "nested": {"z": [true, null, "x"]}}',
    b'{"text": "dup keys", "text": "the last one wins"}',
    b'{"text": "' + b"long line " * 40 + b'", "id": 7}',
    b'{"text": "caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac", "group": "g1"}',
    b'  {"text": "leading and trailing space"}  ',
    b'{"text": 5}',
    b'{"text": "no newline at the end"}',
]


def reference_read_jsonl(spec: dict, dataset: str, invalid_utf8: str, data: bytes, name: str):
    """The JSONL reader as it was before the fast path (one `json.loads` per decoded line)."""
    lines = data.split(b"\n")  # as readlines() in binary mode: lines end at LF only
    if lines[-1] == b"":
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        loc = f"{name}:{lineno}"
        line = line.rstrip(b"\r\n")
        if not line or line.isspace():
            continue
        repaired = 0
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            try:
                dec = decode_utf8(line, invalid_utf8)
                text, repaired = dec.text, dec.repaired_bytes
            except readers.InvalidUTF8 as e:
                yield BadRecord(spec["source"], loc, "invalid_utf8", f"{loc}: {e}", line.decode("utf-8", errors="replace"))
                continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield BadRecord(spec["source"], loc, "malformed_json", f"{loc}: {e.msg} at column {e.colno}", text)
            continue
        if not isinstance(obj, dict):
            yield BadRecord(spec["source"], loc, "malformed_json",
                            f"{loc}: expected a JSON object, got {type(obj).__name__}", text)
            continue
        yield record_of(obj, spec, dataset, loc, {"file": name, "line": lineno}, repaired)


def exact(rec) -> tuple:
    """A record with every value's type visible (1 == 1.0 in Python, not here)."""
    if isinstance(rec, BadRecord):
        return ("bad", rec.source, rec.locator, rec.reason, rec.detail, rec.raw)
    return ("raw", rec.source, rec.locator, repr(rec.fields), rec.group, repr(rec.meta), rec.repaired_bytes)


@pytest.mark.parametrize("block_size", [1 << 22, 7, 64])
@pytest.mark.parametrize("invalid_utf8", ["repair", "reject"])
def test_jsonl_fast_path_gives_the_reference_records(tmp_path, monkeypatch, block_size, invalid_utf8):
    monkeypatch.setattr(readers, "_line_blocks", functools.partial(readers._line_blocks, size=block_size))
    data = b"\n".join(LINES)  # no newline after the last line
    src = tmp_path / "docs.jsonl"
    src.write_bytes(data)
    spec = {"type": "jsonl", "source": "web", "path": str(src), "id_field": "id", "fields": {"group": "group"}}
    ours = [exact(r) for r in readers.read_jsonl(spec, "corpus", invalid_utf8)]
    ref = [exact(r) for r in reference_read_jsonl(spec, "corpus", invalid_utf8, data, "docs.jsonl")]
    assert ours == ref
    assert len(ours) == len(LINES) - 3  # three blank lines are skipped, not records
    big = next(r for r in readers.read_jsonl(spec, "corpus", invalid_utf8) if r.locator == "docs.jsonl:2")
    assert big.meta["fields"]["a"] == 123456789012345678901234567890  # an int, not orjson's float
    assert isinstance(big.meta["fields"]["d"][1]["e"], int)
    assert not readers._may_hold_big_int(json.loads(LINES[3]))  # ordinary floats stay on the fast path


def test_line_blocks_cover_every_byte_once(tmp_path):
    data = b"a\nbb\n\nccccccccccccccc\nd\r\neeeeeeeeeeeeeeeeeeeeeeeeeee"
    for size in (1, 2, 3, 5, 8, 100):
        src = tmp_path / "f"
        src.write_bytes(data)
        with open(src, "rb") as f:
            parts = [block[start:stop] for block, start, stop in readers._line_blocks(f, size)]
        assert b"".join(parts) == data
        assert all(p.endswith(b"\n") for p in parts[:-1])  # blocks end at line ends


def test_meta_json_is_json_dumps():
    for meta in ({}, {"fields": {"b": {"z": 1, "a": [1.5, None, True, "é\u2028\x00"]}, "n": 10**30},
                      "file": "f.jsonl", "line": 3}, {"x": float("nan"), "y": float("-inf"), "o": object()}):
        assert _meta_json(meta) == json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)


def _instruction_and_comparison_sources(tmp_path: Path) -> dict[str, list[dict]]:
    ins = tmp_path / "ins.jsonl"
    ins.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prompt": "Say hi", "response": "Hi!", "lang": "en"},
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"prompt": "only a prompt"},
    ]) + "\n")
    cmp = tmp_path / "cmp.jsonl"
    cmp.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p", "chosen": "good", "rejected": "bad", "score": 0.5},
        {"prompt": "p2", "chosen": "", "rejected": "bad"},
    ]) + "\n")
    doc = tmp_path / "docs.jsonl"
    doc.write_bytes(b"\n".join(LINES) + b"\n")
    return {"corpus": [{"type": "jsonl", "source": "web", "path": str(doc)}],
            "instructions": [{"type": "jsonl", "source": "ins", "path": str(ins)}],
            "comparisons": [{"type": "jsonl", "source": "cmp", "path": str(cmp)}]}


@pytest.mark.parametrize("dataset", ["corpus", "instructions", "comparisons"])
def test_rows_built_without_pandera_satisfy_the_schema(tmp_path, dataset):
    sources = _instruction_and_comparison_sources(tmp_path)[dataset]
    cfg = IngestConfig.from_params({"data": {"shard_max_mb": 0.0001},  # several shards and row groups
                                    "ingest": {dataset: {"sources": sources}}}, dataset)
    stats = ingest_source(cfg.sources[0], dataset, cfg, tmp_path / "out")
    assert stats["rows_kept"] >= 1 and stats["rows_rejected"] >= 1
    shards = list_shards(tmp_path / "out")
    for path in shards:
        validate(pl.read_parquet(path), dataset, where=str(path))  # pandera: the full schema
    kept = pl.concat([pl.read_parquet(p) for p in shards])
    assert kept.height == stats["rows_kept"]
    assert (kept["text"].str.len_bytes() == kept["n_bytes"]).all()


def test_duplicate_ids_in_a_row_group_are_a_schema_violation(tmp_path):
    row = ("a" * 32, "b" * 32, "src", "f:1", "g", "train", b"text", 4, "{}")
    writer = BuiltRowWriter(tmp_path, "x", "corpus", 1_000_000)
    writer.add(row, 4)
    writer.add(("c" * 32,) + row[1:], 4)
    writer.add(row, 4)
    with pytest.raises(SchemaViolation, match=r"(?s)x-00000\.parquet.*column 'id', row 2"):
        writer.close()


def test_record_of_is_unchanged_for_mapped_fields():
    spec = {"source": "web", "fields": {"text": "body", "source": "site", "title": "t"}, "group_field": "g"}
    rec = record_of({"body": "x", "site": " s ", "t": "T", "g": 3, "extra": [1]}, spec, "corpus", "f:1", {"file": "f"})
    assert isinstance(rec, RawRecord)
    assert (rec.source, rec.group, rec.meta) == ("s", "3", {"file": "f", "title": "T", "fields": {"extra": [1]}})
    bad = record_of({"body": "x", "site": 5}, spec, "corpus", "f:2", {})
    assert isinstance(bad, BadRecord) and bad.reason == "wrong_type"


def test_normalise_utf8_gives_the_reference_text_and_its_bytes():
    pool = ["x", "é", "\r\n", "\x00", "\x7f", "\x85", "\ufeff", "e\u0301", "\ud800", "東", "\t", "\n", " "]
    rng = random.Random(3)
    texts = EDGE + ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    for text in texts:
        ref = reference_normalise(text)
        assert normalise_utf8(text) == (ref, ref.encode("utf-8"))
