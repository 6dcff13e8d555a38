"""Normalisation, hashing, schema validation and atomic writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import polars as pl
import pytest

from lmdata.atomic import atomic_dir, clean_stale_tmp
from lmdata.schema import SchemaViolation
from lmdata.shards import empty_frame, write_shard
from lmdata.text import InvalidUTF8, content_hash, decode_utf8, document_id, normalise_text


def test_normalise_strips_bom_crlf_and_control_characters():
    raw = "\ufeffLine one\r\nLine\x07 two\rLine three\x00\tend"
    assert normalise_text(raw) == "Line one\nLine two\nLine three\tend"


def test_normalise_composes_to_nfc():
    assert normalise_text("Cafe\u0301") == "Caf\u00e9"


def test_lone_surrogates_become_replacement_characters():
    assert normalise_text("a\ud800b") == "a\ufffdb"


def test_invalid_utf8_is_repaired_and_counted():
    dec = decode_utf8(b"ok \xff\xfe bad", "repair")
    assert dec.text == "ok \ufffd\ufffd bad" and dec.repaired_bytes == 2


def test_invalid_utf8_reject_names_the_offset():
    with pytest.raises(InvalidUTF8, match="byte 3"):
        decode_utf8(b"ok \xff", "reject")


def test_identical_texts_share_content_hash_but_not_id():
    text = "the same words"
    assert content_hash(text) == content_hash(text)
    assert document_id("milton", "a.txt", text) != document_id("milton", "b.txt", text)


def _row(**over):
    row = {"id": "a" * 32, "content_hash": "b" * 32, "source": "s", "locator": "f:1", "group": "g",
           "split": "train", "text": "hello", "n_bytes": 5, "meta": "{}"}
    row.update(over)
    return row


def test_schema_violation_names_file_and_column(tmp_path):
    df = pl.DataFrame([_row(split="validation")], schema=empty_frame("corpus").schema)
    with pytest.raises(SchemaViolation, match=r"(?s)bad\.parquet.*column 'split', row 0"):
        write_shard(df, tmp_path / "bad.parquet", "corpus")
    assert not (tmp_path / "bad.parquet").exists()


def test_schema_rejects_duplicate_ids(tmp_path):
    df = pl.DataFrame([_row(), _row()], schema=empty_frame("corpus").schema)
    with pytest.raises(SchemaViolation, match="id"):
        write_shard(df, tmp_path / "dupes.parquet", "corpus")


def test_comparisons_schema_requires_chosen(tmp_path):
    df = pl.DataFrame([_row(prompt="p", chosen="", rejected="r")], schema=empty_frame("comparisons").schema)
    with pytest.raises(SchemaViolation, match="chosen"):
        write_shard(df, tmp_path / "c.parquet", "comparisons")


def test_atomic_dir_keeps_previous_output_when_the_writer_fails(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(out) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stage_killed_mid_write_leaves_no_output(tmp_path):
    """SIGKILL a real process inside atomic_dir: the target never appears half-written."""
    out = tmp_path / "shards"
    code = textwrap.dedent(f"""
        import time, pathlib
        from lmdata.atomic import atomic_dir
        with atomic_dir(pathlib.Path({str(out)!r})) as s:
            (s / "part-0.parquet").write_bytes(b"x" * 1000)
            print("ready", flush=True)
            time.sleep(60)
            (s / "part-1.parquet").write_bytes(b"y")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(".tmp-" in p.name for p in leftovers)
    clean_stale_tmp(tmp_path)
    assert list(tmp_path.iterdir()) == []
