"""Token shards: a flat binary file of token ids read by memmap, plus a JSON sidecar.

`<stem>.bin` holds each document's tokens followed by the end-of-text id, in uint16 (uint32 when the
vocabulary exceeds 65,535), native little-endian. `<stem>.json` holds
`{"format": "lmforge-tokens-v1", "vocab_size", "dtype", "tokens", "bytes", "documents",
"tokenizer_hash", "eot_id"}`, where `bytes` counts the UTF-8 bytes of the documents' texts (the EOT
separators are not text) so that bits per byte = total nats / (ln 2 · bytes). This module is the one
reader and writer of the format: the pretokenize stage writes with `write_token_shard`, training reads
a split folder with `TokenShards`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

FORMAT = "lmforge-tokens-v1"
BATCH_DOCS = 512  # documents per encode_batch call: enough to keep the threads busy, little memory


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 up to 65,535 ids, else uint32 (as DESIGN.md states it)."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def _batches(texts: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, n)):
        yield batch


def sidecar_path(bin_path: str | Path) -> Path:
    """`shard.bin` -> `shard.json`."""
    return Path(bin_path).with_suffix(".json")


def write_token_shard(texts: Iterable[str], tok, out_bin: str | Path, num_threads: int | None = None) -> dict:
    """Encode `texts` (each followed by EOT) into `out_bin` and its sidecar, atomically; return the sidecar."""
    out_bin = Path(out_bin)
    if out_bin.suffix != ".bin":
        raise ValueError(f"{out_bin}: token shards are named <stem>.bin")
    out_bin.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.vocab_size)
    eot = tok.eot_id
    n_tokens = n_bytes = n_docs = 0
    tmp_bin = out_bin.with_name(f".{out_bin.name}.tmp-{os.getpid()}")
    tmp_json = out_bin.with_name(f".{out_bin.stem}.json.tmp-{os.getpid()}")
    try:
        with open(tmp_bin, "wb") as f:
            for batch in _batches(texts, BATCH_DOCS):
                for i, text in enumerate(batch):
                    if not isinstance(text, str):
                        raise TypeError(f"{out_bin}: document {n_docs + i} is {type(text).__name__}, not str")
                encoded = tok.encode_batch(batch, num_threads=num_threads)
                lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
                flat = np.full(int(lengths.sum()), eot, dtype=dtype)  # each document's slot ends in EOT
                pos = 0
                for ids in encoded:
                    flat[pos:pos + len(ids)] = ids
                    pos += len(ids) + 1
                f.write(flat.tobytes())
                n_tokens += len(flat)
                n_docs += len(batch)
                n_bytes += sum(len(t.encode("utf-8", "surrogatepass")) for t in batch)
        meta = {"format": FORMAT, "vocab_size": tok.vocab_size, "dtype": dtype.name, "tokens": n_tokens,
                "bytes": n_bytes, "documents": n_docs, "tokenizer_hash": tok.hash, "eot_id": eot}
        tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_bin, out_bin)
        os.replace(tmp_json, sidecar_path(out_bin))
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return meta


def read_token_shard(bin_path: str | Path) -> tuple[np.memmap, dict]:
    """The shard's ids as a read-only memmap, and its sidecar (checked against the file size)."""
    bin_path = Path(bin_path)
    meta = json.loads(sidecar_path(bin_path).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{sidecar_path(bin_path)}: format {meta.get('format')!r}, expected {FORMAT!r}")
    dtype = np.dtype(meta["dtype"])
    size = bin_path.stat().st_size
    if size != meta["tokens"] * dtype.itemsize:
        raise ValueError(f"{bin_path}: {size} bytes, sidecar says {meta['tokens']} {dtype.name} tokens")
    if meta["tokens"] == 0:
        return np.zeros(0, dtype=dtype), meta  # np.memmap cannot map an empty file
    return np.memmap(bin_path, dtype=dtype, mode="r"), meta


SIDECAR_FIELDS = ("format", "vocab_size", "dtype", "tokens", "bytes", "documents", "tokenizer_hash", "eot_id")


def write_shard(path: str | Path, tokens: np.ndarray | list[int], vocab_size: int, n_bytes: int,
                documents: int, eot_id: int, tokenizer_hash: str = "") -> Path:
    """Write `<path>.bin` and its sidecar from ids already made (tests, benchmarks); see write_token_shard."""
    path = Path(path).with_suffix("")
    dtype = token_dtype(vocab_size)
    arr = np.asarray(tokens, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr.tofile(path.with_suffix(".bin"))
    meta = {"format": FORMAT, "vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "tokens": int(arr.size),
            "bytes": int(n_bytes), "documents": int(documents), "tokenizer_hash": tokenizer_hash, "eot_id": eot_id}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return path.with_suffix(".bin")


@dataclass
class Shard:
    path: Path
    tokens: np.memmap
    meta: dict


class TokenShards:
    """All shards of one split, memmapped; checks every sidecar against its .bin file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        bins = sorted(self.folder.glob("*.bin"))
        if not bins:
            raise FileNotFoundError(f"no token shards (*.bin) in {self.folder}")
        self.shards: list[Shard] = []
        for b in bins:
            if not sidecar_path(b).exists():
                raise FileNotFoundError(f"{b}: missing sidecar {sidecar_path(b).name}")
            tokens, meta = read_token_shard(b)
            missing = [f for f in SIDECAR_FIELDS if f not in meta]
            if missing:
                raise ValueError(f"{sidecar_path(b)}: missing field(s) {missing}")
            self.shards.append(Shard(b, tokens, meta))
        first = self.shards[0].meta
        for s in self.shards[1:]:
            for field in ("vocab_size", "eot_id", "tokenizer_hash"):
                if s.meta[field] != first[field]:
                    raise ValueError(f"{s.path.with_suffix('.json')}: field {field!r} = {s.meta[field]!r} differs "
                                     f"from {self.shards[0].path.name}'s {first[field]!r}")
        self.vocab_size: int = int(first["vocab_size"])
        self.eot_id: int = int(first["eot_id"])
        self.tokenizer_hash: str = first["tokenizer_hash"]

    @property
    def n_tokens(self) -> int:
        return sum(int(s.meta["tokens"]) for s in self.shards)

    @property
    def n_bytes(self) -> int:
        return sum(int(s.meta["bytes"]) for s in self.shards)


def _show(tok, i: int) -> str:
    return tok.token_bytes(i).decode("utf-8", errors="replace")


def shard_report(bin_paths: Iterable[str | Path], tok, top: int = 20) -> dict:
    """Bytes per token over shards (EOT separators not counted), and the most frequent and longest tokens."""
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    n_bytes = n_docs = 0
    for path in bin_paths:
        ids, meta = read_token_shard(path)
        if meta["tokenizer_hash"] != tok.hash:
            raise ValueError(f"{path}: written by tokenizer {meta['tokenizer_hash'][:12]}, not {tok.hash[:12]}")
        counts += np.bincount(ids, minlength=tok.vocab_size)
        n_bytes += meta["bytes"]
        n_docs += meta["documents"]
    text_tokens = int(counts.sum()) - n_docs
    frequent = np.argsort(-counts, kind="stable")[:top]
    longest = sorted(range(tok.vocab_size - len(tok.special_tokens)), key=lambda i: (-len(tok.token_bytes(i)), i))
    return {
        "bytes_per_token": n_bytes / text_tokens if text_tokens else 0.0,
        "tokens": text_tokens, "bytes": n_bytes, "documents": n_docs,
        "most_frequent": [{"id": int(i), "token": _show(tok, int(i)), "count": int(counts[i])} for i in frequent],
        "longest": [{"id": i, "token": _show(tok, i), "bytes": len(tok.token_bytes(i))} for i in longest[:top]],
    }
