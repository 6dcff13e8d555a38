"""Dedup's global phase as independent tasks, so that no task holds every document's keys.

`lmdata.dedup.load_index` holds every document's id and 14 band keys (~112 bytes each) in one
process. Here the same phase is cut in two:

1. bucket tasks, in parallel, each over one `BucketSpec`: the exact keys of one key-hash partition,
   or the LSH keys of one band range and key-hash partition, read column by column from the
   per-shard `<stem>.keys.parquet` / `<stem>.bands.parquet` (never the other bands, never ids or
   texts). Each writes the members of its buckets of two or more: (band, key, global row).
2. one candidates task: reads the bucket files, loads (id, split, length, exact key) of the
   candidate rows only, links each bucket to its smallest id (as `dedup._star_edges` does), and
   returns a `SignatureIndex` of the candidates with the pairs renumbered into it. From there the
   in-memory `verify_pairs`, `decide` (union-find over the edges) and
   `decontaminate.overlap_decisions` run unchanged, so the decisions are identical (tested).

A global row is the document's position in the stems' order (shard offsets + row in shard), as
`build_index` numbers them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lmdata.decontaminate import overlap_decisions
from lmdata.dedup import (
    INDEX_SCHEMA,
    DedupConfig,
    SignatureIndex,
    band_column,
    decide,
    texts_needed,
    verify_pairs,
)

BUCKET_SCHEMA = {"band": pl.Int16, "key": pl.UInt64, "row": pl.Int64}
EXACT = -1  # the `band` of exact-key buckets


@dataclass(frozen=True)
class BucketSpec:
    """One bucket task: bands [first, stop) (both -1 for exact keys), keys with key % parts == part."""

    first: int
    stop: int
    part: int
    parts: int

    @property
    def name(self) -> str:
        what = "exact" if self.first == EXACT else f"bands{self.first:02d}-{self.stop - 1:02d}"
        return f"{what}-p{self.part}of{self.parts}"


def bucket_specs(config: DedupConfig) -> list[BucketSpec]:
    """The bucket tasks of `config`: `hash_partitions` exact tasks, `band_ranges` x `hash_partitions` LSH ones."""
    parts = config.hash_partitions
    specs = [BucketSpec(EXACT, EXACT, p, parts) for p in range(parts)] if config.exact else []
    if config.near:
        bands = config.minhash.bands
        edges = np.linspace(0, bands, min(config.band_ranges, bands) + 1).round().astype(int)
        specs += [BucketSpec(int(a), int(b), p, parts) for a, b in zip(edges[:-1], edges[1:]) for p in range(parts)]
    return specs


def _file(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def shard_sizes(stems: Sequence[Path]) -> np.ndarray:
    """Documents per stem (from Parquet metadata, nothing read)."""
    return np.array([pl.scan_parquet(_file(Path(s), ".keys.parquet")).select(pl.len()).collect().item()
                     for s in stems], dtype=np.int64)


def _buckets(keys: np.ndarray, rows: np.ndarray, band: int) -> pl.DataFrame:
    """Members of every key shared by two or more rows."""
    order = np.argsort(keys, kind="stable")
    k, r = keys[order], rows[order]
    same = k[1:] == k[:-1]
    member = np.zeros(len(k), dtype=bool)
    member[1:] |= same
    member[:-1] |= same
    return pl.DataFrame({"band": np.full(int(member.sum()), band, np.int16), "key": k[member], "row": r[member]},
                        schema=BUCKET_SCHEMA)


def write_buckets(stems: Sequence[Path], spec: BucketSpec, out: Path) -> dict:
    """A bucket task: read only `spec`'s key columns from every shard, keep its hash partition, and
    write the members of buckets of two or more to `out` (Parquet); return small stats."""
    offsets = np.concatenate([[0], np.cumsum(shard_sizes(stems))])
    exact = spec.first == EXACT
    columns = ["exact_key"] if exact else [band_column(k) for k in range(spec.first, spec.stop)]
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    rows: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for p, stem in enumerate(map(Path, stems)):
        if exact:
            frame = pl.read_parquet(_file(stem, ".keys.parquet"), columns=columns)
            nonempty = np.ones(frame.height, dtype=bool)
        else:  # empty texts share all-max signatures: never LSH candidates
            frame = pl.read_parquet(_file(stem, ".bands.parquet"), columns=columns)
            nonempty = pl.read_parquet(_file(stem, ".keys.parquet"), columns=["n_shingles"])["n_shingles"].to_numpy() > 0
        for c in columns:
            keys = frame[c].to_numpy()
            keep = nonempty & (keys % np.uint64(spec.parts) == spec.part)
            parts[c].append(keys[keep])
            rows[c].append(np.flatnonzero(keep) + offsets[p])
        del frame
    out_frames = []
    for band, c in zip(range(spec.first, spec.stop) if not exact else [EXACT], columns):
        keys = np.concatenate(parts.pop(c)) if stems else np.empty(0, np.uint64)
        out_frames.append(_buckets(keys, np.concatenate(rows.pop(c)) if stems else np.empty(0, np.int64), band))
    buckets = pl.concat(out_frames) if out_frames else pl.DataFrame(schema=BUCKET_SCHEMA)
    buckets.write_parquet(out)
    return {"task": spec.name, "members": buckets.height, "buckets": str(out)}


def _candidate_docs(stems: Sequence[Path], rows: np.ndarray, offsets: np.ndarray) -> pl.DataFrame:
    """The keys-file columns of global `rows` (sorted), shard by shard, in the index's schema."""
    frames = []
    for p, stem in enumerate(map(Path, stems)):
        lo, hi = np.searchsorted(rows, [offsets[p], offsets[p + 1]])
        if lo == hi:
            continue
        local = rows[lo:hi] - offsets[p]
        keys = pl.read_parquet(_file(stem, ".keys.parquet"))[local]
        frames.append(keys.with_columns(pl.lit(p, pl.Int32).alias("part"), pl.Series("part_row", local, pl.Int64)))
        del keys
    return pl.concat(frames) if frames else pl.DataFrame(schema=INDEX_SCHEMA)


def candidate_signatures(stems: Sequence[Path], docs: pl.DataFrame) -> np.ndarray:
    """The signature rows of `docs` (part, part_row), read row by row: a memory map touched at
    scattered rows would bring nearly every page of every signature file into memory."""
    parts, local = docs["part"].to_numpy(), docs["part_row"].to_numpy()
    out = None
    for p, stem in enumerate(map(Path, stems)):
        sel = np.flatnonzero(parts == p)
        path = _file(stem, ".sig.npy")
        mapped = np.load(path, mmap_mode="r")  # for its shape, dtype and data offset; no page is read
        dtype, start, width = mapped.dtype, mapped.offset, mapped.shape[1] * mapped.dtype.itemsize
        if out is None:
            out = np.empty((len(docs), mapped.shape[1]), dtype=dtype)
        del mapped
        with open(path, "rb") as fh:
            for i in sel:
                out[i] = np.frombuffer(os.pread(fh.fileno(), width, start + int(local[i]) * width), dtype=dtype)
    return out if out is not None else np.empty((0, 0), np.uint32)


def _unique_pairs(a: np.ndarray, b: np.ndarray, exact: np.ndarray, m: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each (a, b) once, exact when any of its copies is (as `candidate_pairs` keeps them)."""
    code = a * np.int64(m) + b
    order = np.lexsort((~exact, code))
    first = np.ones(len(code), dtype=bool)
    first[1:] = code[order][1:] != code[order][:-1]
    keep = order[first]
    return a[keep], b[keep], exact[keep]


def _star_pairs(band: np.ndarray, key: np.ndarray, local: np.ndarray, rank: np.ndarray, m: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bucket's members linked to its smallest-id member (as `dedup._star_edges`): (a < b, is_exact)."""
    order = np.lexsort((rank[local], key, band))
    band, key, local = band[order], key[order], local[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (band[1:] != band[:-1])
    center = local[np.flatnonzero(new)[np.cumsum(new) - 1]]
    linked = ~new
    a, b = np.minimum(center, local)[linked], np.maximum(center, local)[linked]
    return _unique_pairs(a, b, band[linked] == EXACT, m)


def candidate_index(stems: Sequence[Path], bucket_files: Sequence[Path], one_split: bool = False
                    ) -> tuple[SignatureIndex, pl.DataFrame]:
    """The candidates task: a `SignatureIndex` of the documents in any bucket (their keys-file
    columns and signature rows only), and the candidate pairs numbered into it, equal to
    `candidate_pairs` on the full index. `one_split`: every document is treated as `train` (the
    evaluation set deduplicating itself)."""
    stems = [Path(s) for s in stems]
    offsets = np.concatenate([[0], np.cumsum(shard_sizes(stems))])
    rows = np.unique(np.concatenate([np.empty(0, np.int64)] + [  # pass 1: which rows are candidates
        np.unique(pl.read_parquet(f, columns=["row"])["row"].to_numpy()) for f in bucket_files]))
    docs = _candidate_docs(stems, rows, offsets)
    if one_split:
        docs = docs.with_columns(split=pl.lit("train"))
    if docs["id"].is_duplicated().any():  # among candidates: an id hashes its text, so a repeat is an exact pair
        dup = docs.filter(pl.col("id").is_duplicated()).sort("id").head(4).select("shard", "id").rows()
        raise ValueError(f"document ids are not unique across shards, e.g. (shard, id) {dup}")
    sig = candidate_signatures(stems, docs)
    docs = docs.with_columns(part=pl.lit(0, pl.Int32), part_row=pl.int_range(len(docs), dtype=pl.Int64))
    index = SignatureIndex(docs, np.empty((len(docs), 0), np.uint64), [sig])
    rank = np.empty(len(docs), dtype=np.int64)
    rank[np.argsort(docs["id"].to_numpy(), kind="stable")] = np.arange(len(docs))
    found = []  # pass 2, a bucket file at a time: a bucket never spans two files
    for f in bucket_files:
        members = pl.read_parquet(f)
        found.append(_star_pairs(members["band"].to_numpy(), members["key"].to_numpy(),
                                 np.searchsorted(rows, members["row"].to_numpy()), rank, len(docs)))
        del members
    a, b, exact = _unique_pairs(*(np.concatenate([np.empty(0, t)] + [x[i] for x in found])
                                  for i, t in enumerate((np.int64, np.int64, bool))), len(docs))
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    ids, shards = docs["id"], docs["shard"]
    pairs = pl.DataFrame({"a": a, "b": b, "kind": np.where(exact[order], "exact", "lsh")},
                         schema={"a": pl.Int64, "b": pl.Int64, "kind": pl.Utf8})
    pairs = pairs.with_columns(id_a=ids.gather(pairs["a"]), id_b=ids.gather(pairs["b"]),
                               shard_a=shards.gather(pairs["a"]), shard_b=shards.gather(pairs["b"]))
    return index, pairs


def split_counts(stems: Sequence[Path]) -> dict[str, int]:
    """Documents per split over every stem (one small column read per shard)."""
    counts = {"train": 0, "eval": 0}
    for stem in map(Path, stems):
        for split, n in pl.read_parquet(_file(stem, ".keys.parquet"), columns=["split"]).group_by("split").len().rows():
            counts[split] = counts.get(split, 0) + n
    return counts


def find_duplicates_sharded(stems: Sequence[Path], bucket_files: Sequence[Path], fields: Sequence[str],
                            config: DedupConfig, fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None,
                            one_split: bool = False) -> tuple[pl.DataFrame, dict, SignatureIndex]:
    """`dedup.find_duplicates` from bucket files: the decisions, explain-stats and the candidates' index."""
    index, pairs = candidate_index(stems, bucket_files, one_split)
    if config.verify and not pairs.is_empty():
        if fetch is None:
            raise ValueError("dedup.verify is on: find_duplicates_sharded needs a `fetch` for the candidates' texts")
        pairs = verify_pairs(pairs, fetch(texts_needed(pairs)), fields, config)
    decisions, stats = decide(index, pairs, config)
    return decisions, {**stats, "docs": int(shard_sizes(stems).sum())}, index


def find_overlaps_sharded(stems: Sequence[Path], bucket_files: Sequence[Path], fields: Sequence[str],
                          config: DedupConfig, fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None
                          ) -> tuple[pl.DataFrame, dict]:
    """`decontaminate.find_overlaps` from bucket files: the `eval_overlap` decisions and small stats."""
    index, pairs = candidate_index(stems, bucket_files)
    if config.verify and not pairs.is_empty():
        if fetch is None:
            raise ValueError("evalset.dedup.verify is on: find_overlaps_sharded needs a `fetch` for the texts")
        pairs = verify_pairs(pairs, fetch(texts_needed(pairs)), fields, config)
    decisions = overlap_decisions(index, pairs)
    counts = split_counts(stems)
    return decisions, {"fields": list(fields), "train_docs": counts["train"], "eval_docs": counts["eval"],
                       "eval_overlap": decisions.height}
