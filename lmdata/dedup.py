"""Deduplication: exact groups, MinHash LSH near-duplicates and evaluation decontamination.

Three phases, so that no step ever holds the texts of all shards at once:

1. per shard (parallel): `sign_shard` writes `<stem>.keys.parquet` (id, split, length, exact key,
   shingle count), `<stem>.sig.npy` (MinHash signatures) and `<stem>.bands.parquet` (LSH band keys,
   a column per band) — never the texts.
2. globally, over those files: `load_index` (ids + LSH band keys), `candidate_pairs` (same exact key,
   or same key in any band), optionally `texts_needed` → caller fetches those rows per shard →
   `verify_pairs` (true Jaccard), then `decide`: union-find clusters, one keeper per cluster, a
   DECISIONS table (id, reason, reason_detail = kept id, reason_value) and explain-stats.
   The stage runs phase 2 sharded (`lmdata.dedup_global`): tasks per band range and key-hash
   partition emit buckets and their pairs, pairs tasks per partition verify them, one integer
   union-find over the candidate rows labels clusters, and keeper tasks per cluster partition
   apply `decide_clusters` (the keep rule below) to their own rows; no task holds every id.
3. per shard: `lmdata.stage.split_by_decisions(df, decisions)`.

Keeper rule, per cluster: evaluation documents first (they are never rejected), then the longest,
then the smallest id. A rejected training document is `eval_overlap` when its cluster holds an
evaluation document, else `exact_dup` when its exact key equals the keeper's, else `near_dup`.
(The pipeline's dedup stage sees training rows only: its decontamination against the frozen
evaluation set is `lmdata.decontaminate`, always on and by direct pairs.)
Clusters are transitive (A~B, B~C puts A, B, C together): `reason_value` is each rejected
document's estimated Jaccard to the keeper it names, so a chained member shows a lower value.

Banding is our own vectorised numpy (sort the 64-bit band keys, link each bucket to its first
member) rather than datasketch's `MinHashLSH`: that index inserts one document at a time in Python
and keeps Python bytes objects per band, while a sort holds 8 bytes per document and band. Both
give the same candidate pairs (tested); `minhash.to_lean` gives datasketch objects when wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import polars as pl
import xxhash
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lmdata.atomic import atomic_file
from lmdata.minhash import (
    MinHashConfig,
    band_keys,
    estimated_jaccard,
    make_permutations,
    shingle_sets,
    text_signatures,
)
from lmdata.stage import StepResult, split_by_decisions

REASONS = ("exact_dup", "near_dup", "eval_overlap")
KEY_SCHEMA = {"shard": pl.Utf8, "id": pl.Utf8, "split": pl.Utf8, "length": pl.Int64, "exact_key": pl.UInt64,
              "n_shingles": pl.Int64}
INDEX_SCHEMA = {**KEY_SCHEMA, "part": pl.Int32, "part_row": pl.Int64}


@dataclass
class NormalizeConfig:
    """Normalisation before exact keys are hashed (params.yaml `dedup.normalize`)."""

    lowercase: bool = True            # "The" == "the"
    collapse_whitespace: bool = True  # runs of whitespace -> one space; ends stripped (CRLF == LF)
    strip_punctuation: bool = False   # drop Unicode punctuation (\p{P}) before hashing


def _default_fields() -> dict[str, list[list[str]]]:
    return {"corpus": [["text"]],
            "instructions": [["prompt"], ["prompt", "response"]],
            "comparisons": [["prompt"], ["prompt", "chosen", "rejected"]]}


@dataclass
class DedupConfig:
    """The `dedup` section of params.yaml, field for field."""

    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    exact: bool = True                # group documents whose normalised text is identical
    near: bool = True                 # MinHash LSH near-duplicates
    verify: bool = False              # drop LSH candidate pairs whose true shingle Jaccard < threshold
    top_clusters: int = 10            # largest clusters listed in the explain-stats
    # The global phase as parallel tasks (lmdata.dedup_global): LSH bands cut into `band_ranges`
    # contiguous ranges, and every range's keys (and the exact keys) into `hash_partitions` by key
    # hash; a task holds one (range, partition)'s keys. Any values give the same decisions.
    band_ranges: int = 1
    hash_partitions: int = 1
    # Candidate pairs, then clusters, are cut into this many partitions (pairs by their first row,
    # clusters by their root), a task each; null: one per LSH bucket task (band_ranges x hash_partitions).
    cluster_partitions: int | None = None
    # dataset -> passes; each pass reads these fields (joined by "\n") and runs the whole machinery,
    # the next pass on what the previous kept ("by prompt, then by whole record").
    fields: dict[str, list[list[str]]] = field(default_factory=_default_fields)

    @classmethod
    def from_dict(cls, d: dict | None) -> DedupConfig:
        """Build from a params.yaml mapping; unknown keys are errors, not silently ignored."""
        d = dict(d or {})
        known = {f.name for f in dataclass_fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"params.yaml dedup: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if "normalize" in d:
            d["normalize"] = NormalizeConfig(**d["normalize"])
        if "minhash" in d:
            d["minhash"] = MinHashConfig(**d["minhash"])
        for k in ("band_ranges", "hash_partitions", "cluster_partitions"):
            if k in d and not (k == "cluster_partitions" and d[k] is None) and (not isinstance(d[k], int) or d[k] < 1):
                raise ValueError(f"params.yaml dedup.{k} must be an integer >= 1, got {d[k]!r}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def passes(self, dataset: str) -> list[list[str]]:
        """The field lists to deduplicate `dataset` by, in order. A pass is a list of fields, or
        `{fields: [...], near: false}` for an exact-only pass (short templated prompts share most
        5-grams without being the same task, so by-prompt passes default to exact matching)."""
        if dataset not in self.fields:
            raise ValueError(f"params.yaml dedup.fields has no entry for dataset {dataset!r}: {sorted(self.fields)}")
        out = []
        for entry in self.fields[dataset]:
            fields_ = entry.get("fields") if isinstance(entry, dict) else entry
            if not isinstance(fields_, list) or not fields_ or not all(isinstance(f, str) for f in fields_):
                raise ValueError(f"params.yaml dedup.fields.{dataset}: each pass needs a list of field names, "
                                 f"got {entry!r}")
            out.append(fields_)
        return out

    def pass_config(self, dataset: str, k: int) -> DedupConfig:
        """This config as pass `k` of `dataset` runs it (an exact-only pass turns `near` off)."""
        entry = self.fields[dataset][k]
        if isinstance(entry, dict) and "near" in entry:
            return replace(self, near=bool(entry["near"]) and self.near)
        return self


# ---- texts and keys -----------------------------------------------------------------------------

def record_text(df: pl.DataFrame, fields: Sequence[str]) -> pl.Series:
    """The text a pass compares: the named fields joined by a newline."""
    missing = [f for f in fields if f not in df.columns]
    if missing:
        raise ValueError(f"dedup fields {missing} are not columns of the data ({df.columns})")
    for f in fields:
        nulls = df[f].is_null()
        if nulls.any():
            raise ValueError(f"dedup field {f!r} is null in row {int(nulls.arg_true()[0])} "
                             f"(id {df['id'][int(nulls.arg_true()[0])]!r})")
    return df.select(pl.concat_str([pl.col(f).cast(pl.Utf8) for f in fields], separator="\n")).to_series()


def normalize_for_exact(texts: pl.Series, cfg: NormalizeConfig) -> pl.Series:
    """Apply the exact-key normalisation (vectorised, in polars)."""
    if cfg.lowercase:
        texts = texts.str.to_lowercase()
    if cfg.strip_punctuation:
        texts = texts.str.replace_all(r"\p{P}", "")
    if cfg.collapse_whitespace:  # = replace_all(r"\s+", " "), 3x faster: single spaces are no match
        texts = texts.str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars()
    return texts


def exact_keys(texts: pl.Series, cfg: NormalizeConfig) -> np.ndarray:
    """64-bit xxh3 of each normalised text: equal keys = exact duplicates."""
    norm = normalize_for_exact(texts, cfg)
    return np.fromiter((xxhash.xxh3_64_intdigest(s.encode("utf-8")) for s in norm), dtype=np.uint64,
                       count=len(norm))


def minhash_text(texts: pl.Series, cfg: MinHashConfig) -> pl.Series:
    """The text that gets shingled: lowercased, punctuation turned into spaces (per settings)."""
    if cfg.lowercase:
        texts = texts.str.to_lowercase()
    if cfg.strip_punctuation:
        texts = texts.str.replace_all(r"\p{P}+", " ")
    if cfg.shingle == "char":  # word shingles ignore spacing anyway; character ones should too
        texts = texts.str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars()
    return texts


# ---- phase 1: per shard -------------------------------------------------------------------------

def shard_signatures(df: pl.DataFrame, fields: Sequence[str], config: DedupConfig, shard: str = ""
                     ) -> tuple[pl.DataFrame, np.ndarray]:
    """The small per-document columns and the (docs, num_perm) signatures of one shard."""
    for col in ("id", "split"):
        if col not in df.columns:
            raise ValueError(f"dedup needs column {col!r}; shard {shard!r} has {df.columns}")
    bad = ~df["split"].is_in(["train", "eval"])
    if bad.any():
        i = int(bad.arg_true()[0])
        raise ValueError(f"shard {shard!r} row {i} (id {df['id'][i]!r}): split {df['split'][i]!r} "
                         "is not 'train' or 'eval'")
    texts = record_text(df, fields)
    sig, counts = text_signatures(minhash_text(texts, config.minhash).to_list(), config.minhash)
    keys = pl.DataFrame({
        "shard": pl.Series([shard] * len(df), dtype=pl.Utf8),
        "id": df["id"].cast(pl.Utf8),
        "split": df["split"].cast(pl.Utf8),
        "length": texts.str.len_chars().cast(pl.Int64),
        "exact_key": pl.Series(exact_keys(texts, config.normalize), dtype=pl.UInt64),
        "n_shingles": pl.Series(counts, dtype=pl.Int64),
    })
    return keys, sig


def band_column(k: int) -> str:
    """The column of `<stem>.bands.parquet` holding LSH band `k`'s keys."""
    return f"band_{k:02d}"


def sign_shard(df: pl.DataFrame, fields: Sequence[str], config: DedupConfig, out: Path, shard: str) -> dict:
    """Phase 1: write `<out>.keys.parquet`, `<out>.sig.npy` and `<out>.bands.parquet` (one column of
    LSH keys per band, so a task can read one band range alone) for one shard; return small stats."""
    return write_signatures(*shard_signatures(df, fields, config, shard), config, out)


def write_signatures(keys: pl.DataFrame, sig: np.ndarray, config: DedupConfig, out: Path) -> dict:
    """The files of `sign_shard` for a shard's keys and signatures."""
    mh = config.minhash
    bands = band_keys(sig, mh.bands, mh.rows)
    out = Path(out)
    keys_path, sig_path = out.with_name(out.name + ".keys.parquet"), out.with_name(out.name + ".sig.npy")
    bands_path = out.with_name(out.name + ".bands.parquet")
    with atomic_file(sig_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, sig)
    with atomic_file(keys_path) as tmp:
        keys.write_parquet(tmp, compression="zstd")
    with atomic_file(bands_path) as tmp:
        pl.DataFrame({band_column(k): pl.Series(bands[:, k], dtype=pl.UInt64) for k in range(mh.bands)},
                     schema={band_column(k): pl.UInt64 for k in range(mh.bands)}).write_parquet(tmp)
    return {"docs": len(keys), "shingles": int(keys["n_shingles"].sum()), "keys": str(keys_path),
            "signatures": str(sig_path), "bands": str(bands_path)}


# ---- phase 2: global, over signatures only ------------------------------------------------------

@dataclass
class SignatureIndex:
    """Ids, small columns and LSH band keys of every document; signatures stay on disk (mmap)."""

    docs: pl.DataFrame            # shard, id, split, length, exact_key, n_shingles, part, part_row
    bands: np.ndarray             # (docs, bands) uint64
    parts: list[np.ndarray]       # per shard: its signatures (np.memmap when loaded from files)

    def signatures(self, rows: np.ndarray) -> np.ndarray:
        """Signature rows for global document numbers `rows`, read from their shards."""
        part = self.docs["part"].to_numpy()[rows]
        local = self.docs["part_row"].to_numpy()[rows]
        out = np.empty((len(rows), self.parts[0].shape[1]) if self.parts else (0, 0),
                       dtype=self.parts[0].dtype if self.parts else np.uint32)
        for p in np.unique(part):
            sel = part == p
            out[sel] = self.parts[p][local[sel]]
        return out


def build_index(shards: Sequence[tuple[pl.DataFrame, np.ndarray]], config: DedupConfig) -> SignatureIndex:
    """Index (keys, signatures) pairs: from `shard_signatures` in memory, or loaded by `load_index`."""
    mh = config.minhash
    frames, bands, parts = [], [], []
    for p, (keys, sig) in enumerate(shards):
        if sig.shape != (len(keys), mh.num_perm):
            raise ValueError(f"shard {p}: signatures of shape {sig.shape} for {len(keys)} documents "
                             f"and num_perm {mh.num_perm} (signed with other params?)")
        frames.append(keys.with_columns(pl.lit(p, pl.Int32).alias("part"),
                                        pl.int_range(len(keys), dtype=pl.Int64).alias("part_row")))
        bands.append(band_keys(sig, mh.bands, mh.rows))
        parts.append(sig)
    docs = pl.concat(frames) if frames else pl.DataFrame(schema=INDEX_SCHEMA)
    if len(docs) and docs["id"].is_duplicated().any():
        dup = docs.filter(pl.col("id").is_duplicated()).sort("id").head(4).select("shard", "id").rows()
        raise ValueError(f"document ids are not unique across shards, e.g. (shard, id) {dup}")
    band_arr = np.concatenate(bands) if bands else np.empty((0, mh.bands), np.uint64)
    return SignatureIndex(docs, band_arr, parts)


def load_index(stems: Sequence[Path], config: DedupConfig) -> SignatureIndex:
    """Phase 2 input: the files `sign_shard` wrote under each stem (signatures memory-mapped)."""
    loaded = []
    for stem in map(Path, stems):
        keys = pl.read_parquet(stem.with_name(stem.name + ".keys.parquet"))
        sig = np.load(stem.with_name(stem.name + ".sig.npy"), mmap_mode="r")
        loaded.append((keys, sig))
    return build_index(loaded, config)


def _star_edges(keys: np.ndarray, rows: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link every row to the lowest-`rank` row with the same key: a bucket of k gives k-1 edges."""
    order = np.lexsort((rank[rows], keys))
    k, r = keys[order], rows[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = k[1:] != k[:-1]
    first = r[np.flatnonzero(new)[np.cumsum(new) - 1]]
    dup = ~new
    return first[dup], r[dup]


def candidate_pairs(index: SignatureIndex, config: DedupConfig) -> pl.DataFrame:
    """Pairs of global rows (a < b) sharing an exact key (`kind`=exact) or an LSH band (`kind`=lsh)."""
    n = len(index.docs)
    rank = np.empty(n, dtype=np.int64)  # rank by id, so the pairs do not depend on the shards' order
    rank[np.argsort(index.docs["id"].to_numpy(), kind="stable")] = np.arange(n)
    out = []
    if config.exact and n:
        a, b = _star_edges(index.docs["exact_key"].to_numpy(), np.arange(n), rank)
        out.append((a, b, "exact"))
    if config.near and n:
        rows = np.flatnonzero(index.docs["n_shingles"].to_numpy() > 0)  # empty texts share all-max sigs
        edges = [_star_edges(index.bands[rows, k], rows, rank) for k in range(index.bands.shape[1])]
        a = np.concatenate([e[0] for e in edges]) if edges else np.empty(0, np.int64)
        b = np.concatenate([e[1] for e in edges]) if edges else np.empty(0, np.int64)
        out.append((a, b, "lsh"))
    frames = []
    for a, b, kind in out:
        lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
        frames.append(pl.DataFrame({"a": lo, "b": hi}).with_columns(pl.lit(kind).alias("kind")))
    if not frames:
        return pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64, "kind": pl.Utf8, "id_a": pl.Utf8,
                                    "id_b": pl.Utf8, "shard_a": pl.Utf8, "shard_b": pl.Utf8})
    # An exact pair is also an LSH pair; keep it once, as exact (no verification needed).
    pairs = pl.concat(frames).unique(subset=["a", "b"], keep="first", maintain_order=True).sort("a", "b")
    ids, shards = index.docs["id"], index.docs["shard"]
    return pairs.with_columns(id_a=ids.gather(pairs["a"]), id_b=ids.gather(pairs["b"]),
                              shard_a=shards.gather(pairs["a"]), shard_b=shards.gather(pairs["b"]))


def texts_needed(pairs: pl.DataFrame) -> dict[str, list[str]]:
    """For verification: shard -> ids whose texts `verify_pairs` needs (LSH candidates only)."""
    lsh = pairs.filter(pl.col("kind") == "lsh")
    both = pl.concat([lsh.select(shard="shard_a", id="id_a"), lsh.select(shard="shard_b", id="id_b")])
    both = both.unique().sort("shard", "id")
    return {s: g["id"].to_list() for (s,), g in both.group_by("shard", maintain_order=True)}


def verify_pairs(pairs: pl.DataFrame, docs: pl.DataFrame, fields: Sequence[str], config: DedupConfig
                 ) -> pl.DataFrame:
    """Add `jaccard` (true, over shingle sets) to LSH pairs and drop those below the threshold.

    `docs` holds `id` and the pass's fields for (at least) every id in `texts_needed(pairs)`."""
    mh = config.minhash
    sets = dict(zip(docs["id"].to_list(), shingle_sets(minhash_text(record_text(docs, fields), mh).to_list(), mh)))
    lsh = pairs.filter(pl.col("kind") == "lsh")
    missing = (set(lsh["id_a"]) | set(lsh["id_b"])) - sets.keys()
    if missing:
        raise ValueError(f"verify_pairs: texts of {len(missing)} ids not given, e.g. {sorted(missing)[:3]}")
    jac = []
    for x, y in zip(lsh["id_a"], lsh["id_b"]):
        sx, sy = sets[x], sets[y]
        inter = len(np.intersect1d(sx, sy, assume_unique=True))
        union = len(sx) + len(sy) - inter
        jac.append(inter / union if union else 1.0)
    lsh = lsh.with_columns(jaccard=pl.Series(jac, dtype=pl.Float64))
    exact = pairs.filter(pl.col("kind") != "lsh").with_columns(jaccard=pl.lit(1.0))
    return pl.concat([exact, lsh.filter(pl.col("jaccard") >= mh.threshold)]).sort("a", "b")


def decide(index: SignatureIndex, pairs: pl.DataFrame, config: DedupConfig) -> tuple[pl.DataFrame, dict]:
    """Clusters from the pairs, one keeper each; the DECISIONS table (sorted by id) and explain-stats."""
    n = len(index.docs)
    if n == 0:
        empty = pl.DataFrame(schema={"id": pl.Utf8, "reason": pl.Utf8, "reason_detail": pl.Utf8,
                                     "reason_value": pl.Float64})
        return empty, {"docs": 0, "rows_rejected": 0, "rejected_by_reason": dict.fromkeys(REASONS, 0),
                       "candidate_pairs": {}, "clusters": 0, "cluster_size_histogram": {}, "largest_clusters": []}
    a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
    _, label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False)
    decisions, members = decide_clusters(index, label, config)
    return decisions, explain(members, decisions, pairs, n, config.top_clusters)


def decide_clusters(index: SignatureIndex, label: np.ndarray, config: DedupConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The keeper rule over given clusters (`label[row]`, any integers; singletons are left alone):
    the DECISIONS table (sorted by id) and the members of clusters of two or more, keeper first."""
    n = len(index.docs)
    docs = index.docs.select("id", "split", "length", "exact_key").with_columns(
        row=pl.int_range(n, dtype=pl.Int64), cluster=pl.Series(label, dtype=pl.Int64))
    members = (docs.filter(pl.len().over("cluster") > 1)
               .sort("cluster", pl.col("split") == "eval", "length", "id", descending=[False, True, True, False]))
    members = members.with_columns(
        keeper=pl.col("id").first().over("cluster"), keeper_row=pl.col("row").first().over("cluster"),
        keeper_split=pl.col("split").first().over("cluster"),
        keeper_key=pl.col("exact_key").first().over("cluster"))
    rejected = members.filter((pl.col("split") == "train") & (pl.col("id") != pl.col("keeper")))
    reason = (pl.when(pl.col("keeper_split") == "eval").then(pl.lit("eval_overlap"))
              .when(pl.lit(config.exact) & (pl.col("exact_key") == pl.col("keeper_key"))).then(pl.lit("exact_dup"))
              .otherwise(pl.lit("near_dup")))
    est = estimated_jaccard(index.signatures(rejected["row"].to_numpy()),
                            index.signatures(rejected["keeper_row"].to_numpy()))
    decisions = rejected.with_columns(reason=reason, reason_detail=pl.col("keeper"),
                                      est=pl.Series(est, dtype=pl.Float64))
    decisions = decisions.with_columns(
        reason_value=pl.when(pl.col("reason") == "exact_dup").then(None).otherwise(pl.col("est"))
    ).select("id", "reason", "reason_detail", "reason_value").sort("id")
    return decisions, members


def explain(members: pl.DataFrame, decisions: pl.DataFrame, pairs: pl.DataFrame, n_docs: int,
            top: int = 10) -> dict:
    """Counts by reason, cluster-size histogram and the largest clusters (keeper first)."""
    sizes = members.group_by("cluster").agg(size=pl.len(), keeper=pl.col("keeper").first(),
                                            members=pl.col("id"))
    hist = sizes.group_by("size").len().sort("size")
    largest = sizes.sort(["size", "keeper"], descending=[True, False]).head(top)
    by_reason = {r: 0 for r in REASONS}
    for r, c in decisions.group_by("reason").len().rows():
        by_reason[r] = c
    return {
        "docs": n_docs,
        "rows_rejected": len(decisions),
        "rejected_by_reason": by_reason,
        "candidate_pairs": {k: c for k, c in pairs.group_by("kind").len().sort("kind").rows()},
        "clusters": len(sizes),
        "cluster_size_histogram": {str(s): c for s, c in hist.rows()},
        "largest_clusters": [{"kept": k, "size": s, "members": m} for s, k, m in
                             largest.select("size", "keeper", "members").rows()],
    }


def members_needed(stats: dict, index: SignatureIndex) -> dict[str, list[str]]:
    """shard -> ids of the largest clusters' members, for the caller to fetch snippets of."""
    ids = sorted({m for c in stats["largest_clusters"] for m in c["members"]})
    found = index.docs.filter(pl.col("id").is_in(ids)).select("shard", "id").sort("shard", "id")
    return {s: g["id"].to_list() for (s,), g in found.group_by("shard", maintain_order=True)}


def with_snippets(stats: dict, docs: pl.DataFrame, fields: Sequence[str], width: int = 120) -> dict:
    """A copy of `stats` whose largest clusters list {id, snippet} per member (`docs`: id + fields)."""
    text = dict(zip(docs["id"].to_list(), record_text(docs, fields).to_list()))
    clusters = [{**c, "members": [{"id": m, "snippet": " ".join(text.get(m, "").split())[:width]}
                                  for m in c["members"]]} for c in stats["largest_clusters"]]
    return {**stats, "largest_clusters": clusters}


def find_duplicates(index: SignatureIndex, fields: Sequence[str], config: DedupConfig,
                    fetch: Callable[[dict[str, list[str]]], pl.DataFrame] | None = None
                    ) -> tuple[pl.DataFrame, dict]:
    """Phase 2 in one call. `fetch(shard -> ids)` returns those rows (id + fields); needed iff verify."""
    pairs = candidate_pairs(index, config)
    if config.verify:
        if fetch is None:
            raise ValueError("dedup.verify is on: find_duplicates needs a `fetch` for the candidates' texts")
        pairs = verify_pairs(pairs, fetch(texts_needed(pairs)), fields, config)
    return decide(index, pairs, config)


def dedup_frame(df: pl.DataFrame, fields: Sequence[str], config: DedupConfig) -> tuple[StepResult, dict]:
    """All three phases on one in-memory frame (tests, small data): the step result and stats."""
    index = build_index([shard_signatures(df, fields, config, shard="memory")], config)
    decisions, stats = find_duplicates(index, fields, config, fetch=lambda _needed: df)
    return split_by_decisions(df, decisions), stats


def permutations_for(config: DedupConfig) -> np.ndarray:
    """The permutation parameters behind every signature of `config` (for datasketch interop)."""
    return make_permutations(config.minhash.num_perm, config.minhash.seed, config.minhash.scheme)
