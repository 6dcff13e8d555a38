"""Batched ingest normalisation gives exactly the per-row reference's bytes: texts, ids, content hashes,
rejects (file, line, field) and their order."""

from __future__ import annotations

import json
import random
import re
import unicodedata

import polars as pl

from lmdata.ingest import IngestConfig, ingest_source
from lmdata.text import document_id, hash_hex, normalise_text, normalise_texts

_REF_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def reference_normalise(text: str) -> str:
    """The per-row normalisation as it was before batching (kept verbatim as the reference)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\ufeff", "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _REF_CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


EDGE = [
    "plain ascii line\nsecond line\twith a tab",
    "\ufeffBOM first, \ufeff one inside",
    "windows\r\nline\r\nends and a lone\rCR",
    "controls \x00\x07\x0b\x0c\x1a\x1f DEL\x7f C1\x85\x9f kept\t\n",
    "cafe\u0301 -> café; A\u030a; \u212b (angstrom sign); e\u0327\u0301",
    "hangul jamo \u1100\u1161\u11a8 and 한",
    "ordering \u1e0b\u0323 vs d\u0323\u0307",
    "lone surrogates \ud800 and \udfff in text",
    "é" + "\u0301" * 3,
    "\u0301 starts with a combining mark",
    "",
    "   \t  ",
]


def test_batch_normalisation_equals_the_per_row_reference_on_edge_cases():
    clean = ["clean ascii text"] * 3 + ["non-ascii but NFC: café, 東京"]
    for batch in (EDGE, clean, clean + EDGE[4:5], EDGE[::-1] + clean):
        assert normalise_texts(batch) == [reference_normalise(t) for t in batch]
    assert [normalise_text(t) for t in EDGE] == [reference_normalise(t) for t in EDGE]


def test_batch_normalisation_equals_the_reference_on_random_mixtures():
    pool = list("ab \t\n\r\x00\x07\x0b\x1f\x7f\x85\x9f\ufeffé\u0301e\u0327\u0323\u1e0b\ud800\udc00\u212b\u1100\u1161")
    rng = random.Random(7)
    for _ in range(3000):
        batch = ["".join(rng.choice(pool) if rng.random() < 0.3 else "x" for _ in range(rng.randint(0, 9)))
                 for _ in range(rng.randint(0, 6))]
        assert normalise_texts(batch) == [reference_normalise(t) for t in batch]


def test_ingest_matches_the_per_row_reference(tmp_path):
    lines = [json.dumps({"text": t, "n": i}, ensure_ascii=i % 2 == 0 or "\ud800" in t).encode()
             for i, t in enumerate(EDGE)]
    lines[3:3] = [b'{"text": "broken', b"[1, 2]", b'{"txt": "no text field"}', b'{"text": 5}',
                  b'{"text": "bad utf8 \xff here"}', b"", b'{"text": "\\ud83d\\ude00 escaped pair"}']
    src = tmp_path / "edge.jsonl"
    src.write_bytes(b"\r\n".join(lines) + b"\n")
    params = {"data": {"shard_max_mb": 64}, "ingest": {"corpus": {"sources": [
        {"type": "jsonl", "source": "edge", "path": str(src)}]}}}
    cfg = IngestConfig.from_params(params, "corpus")
    stats = ingest_source(cfg.sources[0], "corpus", cfg, tmp_path / "out")

    expected = []
    for n, raw in enumerate(lines, 1):
        try:
            obj = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            text = reference_normalise(obj["text"])
            if text.strip():
                expected.append((document_id("edge", f"edge.jsonl:{n}", text), hash_hex(text), text))
    kept = pl.read_parquet(tmp_path / "out" / "edge-00000.parquet")
    assert [tuple(r) for r in kept.select("id", "content_hash", "text").iter_rows()] == expected
    assert kept["text"].to_list()[0] == "plain ascii line\nsecond line\twith a tab"
    rejected = pl.read_parquet(tmp_path / "out" / "rejected" / "edge-00000.parquet")
    assert rejected.select("locator", "reason").rows() == [
        ("edge.jsonl:4", "malformed_json"), ("edge.jsonl:5", "malformed_json"),
        ("edge.jsonl:6", "missing_field"), ("edge.jsonl:7", "wrong_type"), ("edge.jsonl:18", "empty"),
        ("edge.jsonl:19", "empty")]
    assert stats["rows_in"] == stats["rows_kept"] + stats["rows_rejected"] == len(lines) - 1  # one blank line
    assert stats["repaired_bytes"] == 1
