"""Token shards: flat ids with EOT after every document, a sidecar with counts, atomic writes."""

from __future__ import annotations

import json
import pydoc_data.topics

import numpy as np
import pytest

from lmtrain.data.shards import read_token_shard, shard_report, write_token_shard
from lmtrain.tokenizer import train_bpe
from lmtrain.tokenizer.char import CharTokenizer

TOPICS = pydoc_data.topics.topics
DOCS = [TOPICS[k] for k in sorted(TOPICS)[:30]] + ["", "café ☕ 東京"]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(DOCS, vocab_size=500)


def test_shard_holds_each_document_followed_by_eot(tok, tmp_path):
    meta = write_token_shard(DOCS, tok, tmp_path / "train_000.bin")
    ids, sidecar = read_token_shard(tmp_path / "train_000.bin")
    expected = [t for d in DOCS for t in [*tok.encode(d), tok.eot_id]]
    assert ids.dtype == np.uint16 and ids.tolist() == expected
    assert sidecar == meta == json.loads((tmp_path / "train_000.json").read_text())
    assert meta == {"format": "lmforge-tokens-v1", "vocab_size": 500, "dtype": "uint16", "tokens": len(expected),
                    "bytes": sum(len(d.encode("utf-8")) for d in DOCS), "documents": len(DOCS),
                    "tokenizer_hash": tok.hash, "eot_id": tok.eot_id}


def test_shard_bytes_are_deterministic(tok, tmp_path):
    write_token_shard(iter(DOCS), tok, tmp_path / "a.bin")
    write_token_shard(DOCS, tok, tmp_path / "b.bin", num_threads=1)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_large_vocabulary_uses_uint32(tmp_path):
    big = CharTokenizer([chr(0x10000 + i) for i in range(65_600)])
    assert big.vocab_size > 65535
    text = chr(0x10000 + 65_000) + chr(0x10001)
    meta = write_token_shard([text], big, tmp_path / "big.bin")
    ids, _ = read_token_shard(tmp_path / "big.bin")
    assert meta["dtype"] == "uint32" and ids.tolist() == [*big.encode(text), big.eot_id]
    assert max(ids) > 65535


def test_failed_write_leaves_nothing_behind(tok, tmp_path):
    def documents():
        yield "a first document"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_token_shard(documents(), tok, tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_non_text_document_is_refused_with_its_position(tok, tmp_path):
    with pytest.raises(TypeError, match="document 1 is NoneType"):
        write_token_shard(["fine", None], tok, tmp_path / "x.bin")


def test_empty_shard_reads_back_empty(tok, tmp_path):
    meta = write_token_shard([], tok, tmp_path / "empty.bin")
    ids, _ = read_token_shard(tmp_path / "empty.bin")
    assert meta["tokens"] == meta["documents"] == 0 and len(ids) == 0


def test_truncated_shard_is_detected(tok, tmp_path):
    write_token_shard(DOCS[:3], tok, tmp_path / "t.bin")
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="sidecar says"):
        read_token_shard(tmp_path / "t.bin")


def test_shard_report_counts_bytes_per_text_token(tok, tmp_path):
    write_token_shard(DOCS[:10], tok, tmp_path / "a.bin")
    write_token_shard(DOCS[10:], tok, tmp_path / "b.bin")
    report = shard_report([tmp_path / "a.bin", tmp_path / "b.bin"], tok, top=5)
    n_tokens = sum(len(tok.encode(d)) for d in DOCS)
    assert report["tokens"] == n_tokens and report["documents"] == len(DOCS)
    assert report["bytes_per_token"] == pytest.approx(sum(len(d.encode()) for d in DOCS) / n_tokens)
    assert len(report["most_frequent"]) == 5 and report["most_frequent"][0]["count"] >= report["most_frequent"][1]["count"]
    assert report["longest"][0]["bytes"] == max(len(tok.token_bytes(i)) for i in range(tok.vocab_size - 5))
