"""Dedup's global phase as independent tasks, so that no task holds every document's keys or ids.

`lmdata.dedup.load_index` holds every document's id and 14 band keys (~112 bytes each) in one
process. Here the same phase runs as four kinds of task, of which only one sees every candidate,
and that one as integers:

1. bucket tasks, in parallel, each over one `BucketSpec`: the exact keys of one key-hash partition,
   or the LSH keys of one band range and key-hash partition, read column by column from the
   per-shard `<stem>.keys.parquet` / `<stem>.bands.parquet` (never the other bands, never texts).
   Each writes the members of its buckets of two or more: (band, key, global row) (`write_buckets`),
   then links each bucket's members to its smallest id (as `dedup._star_edges` does; it reads the
   ids of its own members only) and writes those pairs of global rows in `cluster_partitions`
   files by first row (`bucket_pairs`).
2. pairs tasks, one per partition: that partition's pairs from every bucket task, each once,
   verified by true Jaccard when `verify` is on (`partition_pairs`).
3. one components task: a union-find over the candidate rows (int64 rows + int32 parents, 12 bytes
   per candidate document), reading one pair partition at a time; writes (row, cluster) in
   partitions by cluster (`connected_rows`).
4. keeper tasks, one per cluster partition: (id, split, length, exact key) and signatures of their
   own rows only, then `dedup.decide_clusters`, the keep rule of `decide` (`keep_partition`); the
   decisions are merged by a streaming sort on id, the explain-stats from the tasks' parts.
   Decontamination needs no clusters (direct pairs only): `overlap_partition` per pair partition.

The decisions and stats are identical to the in-memory path's (tested). A global row is the
document's position in the stems' order (shard offsets + row in shard), as `build_index` numbers them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from lmdata.decontaminate import DECISION_SCHEMA, overlap_decisions
from lmdata.dedup import (
    INDEX_SCHEMA,
    REASONS,
    DedupConfig,
    SignatureIndex,
    band_column,
    decide_clusters,
    minhash_text,
    record_text,
)
from lmdata.minhash import shingle_sets

BUCKET_SCHEMA = {"band": pl.Int16, "key": pl.UInt64, "row": pl.Int64}
PAIR_SCHEMA = {"a": pl.Int64, "b": pl.Int64, "exact": pl.Boolean}
CLUSTER_SCHEMA = {"row": pl.Int64, "cluster": pl.Int64}
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


def _offsets(stems: Sequence[Path]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(shard_sizes(stems))]).astype(np.int64)


def compact_strings(df: pl.DataFrame) -> pl.DataFrame:
    """`df` with its string columns copied out of the buffers they share. A polars gather or filter of
    a string column keeps the whole source buffer alive (string views): rows picked from every shard
    would pin every shard's ids or texts (measured: 2% of the 1 GB corpus's rows, read shard by shard,
    held 1 GB; copied, 0.25 GB at the peak of one shard)."""
    cols = [c for c, t in df.schema.items() if t == pl.Utf8]
    if not cols or df.is_empty():
        return df
    return df.with_columns(pl.Series(c, df[c].to_arrow().cast(pa.large_string()), dtype=pl.Utf8) for c in cols)


def fetch_rows(needed: dict[str, list[str]], fields: Sequence[str]) -> pl.DataFrame:
    """shard -> ids: those rows' id and `fields`, read shard by shard, holding only the rows asked for."""
    frames = [compact_strings(pl.read_parquet(shard, columns=["id", *fields]).filter(
        pl.col("id").is_in(pl.Series(ids, dtype=pl.Utf8).implode()))) for shard, ids in needed.items()]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.Utf8, **{f: pl.Utf8 for f in fields}})


def _candidate_docs(stems: Sequence[Path], rows: np.ndarray, offsets: np.ndarray,
                    columns: Sequence[str] | None = None) -> pl.DataFrame:
    """The keys-file columns (all, in the index's schema, or `columns`) of global `rows` (sorted,
    unique), shard by shard: row i of the result is rows[i]."""
    schema = INDEX_SCHEMA if columns is None else {c: INDEX_SCHEMA[c] for c in columns}
    frames = []
    for p, stem in enumerate(map(Path, stems)):
        lo, hi = np.searchsorted(rows, [offsets[p], offsets[p + 1]])
        if lo == hi:
            continue
        local = rows[lo:hi] - offsets[p]
        keys = compact_strings(pl.read_parquet(_file(stem, ".keys.parquet"),
                                               columns=None if columns is None else list(columns))[local])
        if columns is None:
            keys = keys.with_columns(pl.lit(p, pl.Int32).alias("part"), pl.Series("part_row", local, pl.Int64))
        frames.append(keys)
        del keys
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _check_unique_ids(docs: pl.DataFrame) -> None:
    """Ids hash their text, so two rows of one id share every key and meet in some bucket."""
    if docs["id"].is_duplicated().any():
        dup = docs.filter(pl.col("id").is_duplicated()).sort("id").head(4).select("shard", "id").rows()
        raise ValueError(f"document ids are not unique across shards, e.g. (shard, id) {dup}")


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


def _candidate_index(stems: Sequence[Path], rows: np.ndarray, offsets: np.ndarray, one_split: bool = False
                     ) -> SignatureIndex:
    """A `SignatureIndex` of global `rows` (sorted, unique) alone: their keys-file columns and signatures."""
    docs = _candidate_docs(stems, rows, offsets)
    if one_split:
        docs = docs.with_columns(split=pl.lit("train"))
    _check_unique_ids(docs)
    sig = candidate_signatures(stems, docs)
    docs = docs.with_columns(part=pl.lit(0, pl.Int32), part_row=pl.int_range(len(docs), dtype=pl.Int64))
    return SignatureIndex(docs, np.empty((len(docs), 0), np.uint64), [sig])


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


# ---- the candidates phase, partitioned ------------------------------------------------------------

def cluster_partitions(config: DedupConfig) -> int:
    """How many pair / cluster partitions (tasks) the candidates phase of `config` runs."""
    if config.cluster_partitions is not None:
        return config.cluster_partitions
    ranges = min(config.band_ranges, config.minhash.bands) if config.near else 1
    return ranges * config.hash_partitions


def _partition_file(prefix: Path, what: str, q: int) -> Path:
    return prefix.with_name(f"{prefix.name}-{what}{q}.parquet")


def _write_partitions(frame: pl.DataFrame, by: np.ndarray, parts: int, prefix: Path, what: str) -> list[Path]:
    """`frame`'s rows into `parts` files, row i into file by[i] % parts (each file in `frame`'s order)."""
    which = by % parts
    out = []
    for q in range(parts):
        path = _partition_file(prefix, what, q)
        frame.filter(pl.Series(which == q)).write_parquet(path)
        out.append(path)
    return out


def bucket_pairs(stems: Sequence[Path], bucket_file: Path, parts: int, prefix: Path) -> list[Path]:
    """A bucket task's second half: each of its buckets' members linked to the bucket's smallest-id
    member (as `dedup._star_edges`), as global rows (a < b, exact), written to `parts` files by
    a % parts (`<prefix>-pairs<q>.parquet`). It reads the ids of its own members only."""
    stems = [Path(s) for s in stems]
    members = pl.read_parquet(bucket_file)
    rows = np.unique(members["row"].to_numpy())
    ids = _candidate_docs(stems, rows, _offsets(stems), ["shard", "id"])
    _check_unique_ids(ids)
    rank = np.empty(len(rows), dtype=np.int64)
    rank[ids["id"].arg_sort().to_numpy()] = np.arange(len(rows))
    del ids
    a, b, exact = _star_pairs(members["band"].to_numpy(), members["key"].to_numpy(),
                              np.searchsorted(rows, members["row"].to_numpy()), rank, len(rows))
    del members
    pairs = pl.DataFrame({"a": rows[a], "b": rows[b], "exact": exact}, schema=PAIR_SCHEMA)
    return _write_partitions(pairs, pairs["a"].to_numpy(), parts, Path(prefix), "pairs")


def partition_pairs(stems: Sequence[Path], pair_files: Sequence[Path], fields: Sequence[str], config: DedupConfig,
                    out: Path, fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None) -> dict:
    """A pairs task: one partition's pairs from every bucket task, each pair once (exact when any
    copy is), verified by true Jaccard when `config.verify` (only these pairs' texts are fetched);
    writes (a, b, kind[, jaccard]) sorted to `out`; returns counts by kind."""
    stems = [Path(s) for s in stems]
    found = pl.concat([pl.read_parquet(f) for f in pair_files]) if pair_files else pl.DataFrame(schema=PAIR_SCHEMA)
    pairs = (found.sort("a", "b", "exact", descending=[False, False, True])
             .unique(subset=["a", "b"], keep="first", maintain_order=True))
    del found
    pairs = pairs.select("a", "b", kind=pl.when(pl.col("exact")).then(pl.lit("exact")).otherwise(pl.lit("lsh")))
    if config.verify and not pairs.is_empty():
        if fetch is None:
            raise ValueError("dedup.verify is on: partition_pairs needs a `fetch` for the candidates' texts")
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=Path(out).parent) as spill:
            pairs = verify_by_shard(stems, pairs, fields, config, fetch, Path(spill))
    pairs.write_parquet(out)
    return {"pairs": pairs.height, "candidate_pairs": dict(pairs.group_by("kind").len().sort("kind").rows())}


def verify_by_shard(stems: Sequence[Path], pairs: pl.DataFrame, fields: Sequence[str], config: DedupConfig,
                    fetch: Callable[[dict[str, list[str]]], pl.DataFrame], spill: Path) -> pl.DataFrame:
    """`dedup.verify_pairs` on pairs of global rows (a, b, kind), the same Jaccard values and the same
    pairs kept, holding one shard's texts at a time: `fetch` is called per shard, and each needed
    document's shingle set is written to a file under `spill` and read back (pread) per pair."""
    mh = config.minhash
    lsh = pairs.filter(pl.col("kind") == "lsh")
    a, b = lsh["a"].to_numpy(), lsh["b"].to_numpy()
    rows = np.unique(np.concatenate([a, b]))
    docs = _candidate_docs(stems, rows, _offsets(stems), ["shard", "id"]).with_columns(
        k=pl.int_range(len(rows), dtype=pl.Int64))
    start, count = np.zeros(len(rows), np.int64), np.full(len(rows), -1, np.int64)
    path, pos, itemsize = spill / "shingles.bin", 0, np.dtype(np.uint64).itemsize
    with open(path, "wb") as fh:
        for (shard,), group in docs.group_by("shard", maintain_order=True):
            got = group.select("id", "k").join(fetch({shard: group["id"].to_list()}), on="id", how="inner")
            sets = shingle_sets(minhash_text(record_text(got, fields), mh).to_list(), mh)
            for k, s in zip(got["k"].to_numpy(), sets):
                s = s.astype(np.uint64, copy=False)
                start[k], count[k] = pos, len(s)
                fh.write(s.tobytes())
                pos += len(s)
            del got, sets
    if (count < 0).any():
        missing = docs["id"].filter(pl.Series(count < 0)).to_list()
        raise ValueError(f"verify: texts of {len(missing)} ids not given, e.g. {sorted(missing)[:3]}")
    jac = np.empty(len(a), dtype=np.float64)
    with open(path, "rb") as fh:
        fd = fh.fileno()

        def read(k: int) -> np.ndarray:
            return np.frombuffer(os.pread(fd, int(count[k]) * itemsize, int(start[k]) * itemsize), dtype=np.uint64)
        for i, (x, y) in enumerate(zip(np.searchsorted(rows, a), np.searchsorted(rows, b))):
            sx, sy = read(x), read(y)
            inter = len(np.intersect1d(sx, sy, assume_unique=True))
            union = len(sx) + len(sy) - inter
            jac[i] = inter / union if union else 1.0
    lsh = lsh.with_columns(jaccard=pl.Series(jac, dtype=pl.Float64))
    exact = pairs.filter(pl.col("kind") != "lsh").with_columns(jaccard=pl.lit(1.0))
    return pl.concat([exact, lsh.filter(pl.col("jaccard") >= mh.threshold)]).sort("a", "b")


def _compress(parent: np.ndarray) -> None:
    """Point every entry of the forest `parent` (parent[i] <= i) at its root, in place."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def _union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
    """Join the trees of every edge (u[i], v[i]), the larger root under the smaller (so a root is its
    tree's smallest entry), vectorised: hook, compress, again for the edges still split."""
    while len(u):
        _compress(parent)
        ru, rv = parent[u], parent[v]
        split = ru != rv
        u, v, ru, rv = u[split], v[split], ru[split], rv[split]
        if len(u):
            np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))


def connected_rows(pair_files: Sequence[Path], parts: int, prefix: Path) -> tuple[list[Path], dict]:
    """The components task, the one global step: connected components over the (verified) pair
    partitions, read one at a time, by a union-find over the candidate rows alone: a sorted int64
    array of their global rows and an int32 parent array (12 bytes per candidate document, no ids,
    no strings). Writes (row, cluster = the component's smallest row) in `parts` files by cluster %
    parts (`<prefix>-clusters<q>.parquet`); returns them and small stats."""
    rows = np.empty(0, np.int64)
    for f in pair_files:
        rows = np.union1d(rows, pl.read_parquet(f, columns=["a", "b"]).to_numpy().ravel())
    if len(rows) >= 2 ** 31:
        raise ValueError(f"{len(rows)} candidate documents: more than an int32 union-find holds")
    parent = np.arange(len(rows), dtype=np.int32)
    n_pairs = 0
    for f in pair_files:
        ab = pl.read_parquet(f, columns=["a", "b"])
        n_pairs += ab.height
        _union(parent, np.searchsorted(rows, ab["a"].to_numpy()).astype(np.int32),
               np.searchsorted(rows, ab["b"].to_numpy()).astype(np.int32))
        del ab
    _compress(parent)
    root = rows[parent]
    clusters = pl.DataFrame({"row": rows, "cluster": root}, schema=CLUSTER_SCHEMA)
    files = _write_partitions(clusters, root, parts, Path(prefix), "clusters")
    return files, {"candidates": len(rows), "pairs": n_pairs, "clusters": int((parent == np.arange(len(rows))).sum())}


def keep_partition(stems: Sequence[Path], cluster_file: Path, config: DedupConfig, out: Path,
                   one_split: bool = False) -> dict:
    """A keeper task over one cluster partition: the keeper rule (`dedup.decide_clusters`) with the
    (id, split, length, exact key) and signatures of its own rows only; writes its decisions to `out`
    and returns its part of the explain-stats (merged by `merge_stats`)."""
    stems = [Path(s) for s in stems]
    clusters = pl.read_parquet(cluster_file)
    index = _candidate_index(stems, clusters["row"].to_numpy(), _offsets(stems), one_split)
    if index.docs.is_empty():
        decisions, members = pl.DataFrame(schema=DECISION_SCHEMA), pl.DataFrame(
            schema={"cluster": pl.Int64, "id": pl.Utf8, "keeper": pl.Utf8})
    else:
        decisions, members = decide_clusters(index, clusters["cluster"].to_numpy(), config)
    decisions.write_parquet(out)
    sizes = members.group_by("cluster").agg(size=pl.len(), keeper=pl.col("keeper").first(), members=pl.col("id"))
    largest = sizes.sort(["size", "keeper"], descending=[True, False]).head(config.top_clusters)
    shown = largest["members"].explode() if largest.height else pl.Series("members", [], pl.Utf8)
    shard = dict(index.docs.filter(pl.col("id").is_in(shown.implode())).select("id", "shard").iter_rows())
    return {"documents": len(index.docs), "rows_rejected": decisions.height,
            "rejected_by_reason": dict(decisions.group_by("reason").len().rows()),
            "clusters": sizes.height, "cluster_size_histogram": dict(sizes.group_by("size").len().rows()),
            "largest_clusters": [{"kept": k, "size": s, "members": m, "shards": [shard[i] for i in m]}
                                 for s, k, m in largest.select("size", "keeper", "members").rows()]}


def merge_stats(pair_stats: Sequence[dict], keeper_stats: Sequence[dict], docs: int, top: int
                ) -> tuple[dict, dict[str, list[str]]]:
    """The explain-stats of `dedup.decide` from the tasks' parts, and shard -> ids of the largest
    clusters' members (for snippets)."""
    by_reason = dict.fromkeys(REASONS, 0)
    pairs: dict[str, int] = {}
    hist: dict[int, int] = {}
    for st in pair_stats:
        for k, c in st["candidate_pairs"].items():
            pairs[k] = pairs.get(k, 0) + c
    for st in keeper_stats:
        for r, c in st["rejected_by_reason"].items():
            by_reason[r] += c
        for s, c in st["cluster_size_histogram"].items():
            hist[s] = hist.get(s, 0) + c
    largest = sorted((c for st in keeper_stats for c in st["largest_clusters"]),
                     key=lambda c: (-c["size"], c["kept"]))[:top]
    needed: dict[str, set[str]] = {}
    for c in largest:
        for i, s in zip(c["members"], c["shards"]):
            needed.setdefault(s, set()).add(i)
    stats = {"docs": docs, "rows_rejected": sum(st["rows_rejected"] for st in keeper_stats),
             "rejected_by_reason": by_reason, "candidate_pairs": dict(sorted(pairs.items())),
             "clusters": sum(st["clusters"] for st in keeper_stats),
             "cluster_size_histogram": {str(s): hist[s] for s in sorted(hist)},
             "largest_clusters": [{"kept": c["kept"], "size": c["size"], "members": c["members"]} for c in largest]}
    return stats, {s: sorted(ids) for s, ids in sorted(needed.items())}


def merge_decisions(files: Sequence[Path], out: Path) -> int:
    """The partitions' decisions as one file sorted by id (a streaming sort); returns its rows."""
    if not files:
        pl.DataFrame(schema=DECISION_SCHEMA).write_parquet(out)
        return 0
    pl.scan_parquet([str(f) for f in files]).sort("id").sink_parquet(out)
    return pl.scan_parquet(out).select(pl.len()).collect().item()


def overlap_partition(stems: Sequence[Path], pairs_file: Path, out: Path) -> int:
    """A decontamination task over one pair partition: `decontaminate.overlap_decisions` with its
    rows' (id, split) and signatures only; each training id once, its best evaluation match."""
    stems = [Path(s) for s in stems]
    pairs = pl.read_parquet(pairs_file)
    rows = np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]))
    index = _candidate_index(stems, rows, _offsets(stems))
    local = pairs.with_columns(a=pl.Series(np.searchsorted(rows, pairs["a"].to_numpy()), dtype=pl.Int64),
                               b=pl.Series(np.searchsorted(rows, pairs["b"].to_numpy()), dtype=pl.Int64))
    decisions = overlap_decisions(index, local)
    decisions.write_parquet(out)
    return decisions.height


def merge_overlaps(files: Sequence[Path], out: Path) -> int:
    """The partitions' `eval_overlap` decisions, each training id once (its best match over all
    partitions, as `overlap_decisions` picks it), sorted by id."""
    found = pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame(schema=DECISION_SCHEMA)
    decisions = (found.sort(["id", "reason_value", "reason_detail"], descending=[False, True, False])
                 .unique(subset="id", keep="first", maintain_order=True).select(*DECISION_SCHEMA))
    decisions.write_parquet(out)
    return decisions.height


def split_counts(stems: Sequence[Path]) -> dict[str, int]:
    """Documents per split over every stem (one small column read per shard)."""
    counts = {"train": 0, "eval": 0}
    for stem in map(Path, stems):
        for split, n in pl.read_parquet(_file(stem, ".keys.parquet"), columns=["split"]).group_by("split").len().rows():
            counts[split] = counts.get(split, 0) + n
    return counts


# ---- the whole phase in one process (tests, notebooks); the stage submits each step as a task ------

def _pair_partitions(stems: Sequence[Path], bucket_files: Sequence[Path], fields: Sequence[str],
                     config: DedupConfig, fetch, work: Path) -> tuple[list[Path], list[dict]]:
    parts = cluster_partitions(config)
    found = [bucket_pairs(stems, f, parts, work / f"b{i}") for i, f in enumerate(bucket_files)]
    files = [work / f"pairs-{q}.parquet" for q in range(parts)]
    stats = [partition_pairs(stems, [f[q] for f in found], fields, config, files[q], fetch) for q in range(parts)]
    return files, stats


def find_duplicates_sharded(stems: Sequence[Path], bucket_files: Sequence[Path], fields: Sequence[str],
                            config: DedupConfig, fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None,
                            one_split: bool = False) -> tuple[pl.DataFrame, dict, dict]:
    """`dedup.find_duplicates` from bucket files, step by step as the stage's tasks run them: the
    decisions, the explain-stats, and the tasks' sizes (`candidates`: rows in the union-find,
    `largest_partition`: the most documents one keeper task read)."""
    stems = [Path(s) for s in stems]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pair_files, pair_stats = _pair_partitions(stems, bucket_files, fields, config, fetch, work)
        cluster_files, comp = connected_rows(pair_files, cluster_partitions(config), work / "c")
        keeper = [keep_partition(stems, f, config, work / f"decisions-{q}.parquet", one_split)
                  for q, f in enumerate(cluster_files)]
        stats, _ = merge_stats(pair_stats, keeper, int(shard_sizes(stems).sum()), config.top_clusters)
        merge_decisions([work / f"decisions-{q}.parquet" for q in range(len(cluster_files))], work / "decisions.parquet")
        decisions = pl.read_parquet(work / "decisions.parquet")
    return decisions, stats, {"candidates": comp["candidates"],
                              "largest_partition": max((k["documents"] for k in keeper), default=0)}


def find_overlaps_sharded(stems: Sequence[Path], bucket_files: Sequence[Path], fields: Sequence[str],
                          config: DedupConfig, fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None
                          ) -> tuple[pl.DataFrame, dict]:
    """`decontaminate.find_overlaps` from bucket files: the `eval_overlap` decisions and small stats."""
    stems = [Path(s) for s in stems]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pair_files, _ = _pair_partitions(stems, bucket_files, fields, config, fetch, work)
        found = [work / f"overlap-{q}.parquet" for q in range(len(pair_files))]
        for f, o in zip(pair_files, found):
            overlap_partition(stems, f, o)
        merge_overlaps(found, work / "overlap.parquet")
        decisions = pl.read_parquet(work / "overlap.parquet")
    counts = split_counts(stems)
    return decisions, {"fields": list(fields), "train_docs": counts["train"], "eval_docs": counts["eval"],
                       "eval_overlap": decisions.height}
