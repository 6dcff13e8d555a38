"""MinHash signatures, vectorised over a whole batch of documents, and LSH band keys.

Pipeline for a batch of texts (the caller normalises them first, see `dedup.minhash_text`):

1. shingles: word n-grams (maximal runs of non-whitespace, as `str.split()`) or character n-grams;
   a document with fewer than n words/characters gives one shingle of all of them.
2. each shingle is hashed ONCE to 64 bits, all shingles of the batch at once: a polynomial hash of
   code points taken from prefix sums (no Python loop per word), mixed by the MurmurHash3 finalizer.
   `reference_shingle_hash` is the same function in plain Python (the spec, and datasketch's hashfunc).
3. the affine permutations of datasketch 2.x (`affine32` default, or `affine64`) applied to every
   shingle in one numpy operation per chunk of ~2,000 shingles: permutations on the first axis,
   `minimum.reduceat` over each document's segment. Signatures equal datasketch's `MinHash` built
   with `make_permutations` and `datasketch_hashfunc` (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import LeanMinHash, MinHash

M64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15  # odd: invertible mod 2^64, so a word's hash does not depend on its position
_P_INV = pow(_P, -1, 1 << 64)
_Q = 0xC2B2AE3D27D4EB4F  # combines word hashes into a shingle hash (order-sensitive)
_LEN = 0x165667B19E3779F9  # folds the shingle length in, so "a b" and "a b c" hash apart
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_FMIX32 = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))
SCHEMES = {"affine32": np.uint32, "affine64": np.uint64}

# The code points `str.split()` treats as whitespace; a lookup table beats np.isin on long arrays.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) \
    + "\u2028\u2029\u202f\u205f\u3000"
_WS_TABLE = np.zeros(0x3002, dtype=bool)  # np.take(mode="clip") sends every code point > 0x3000 to the
_WS_TABLE[[ord(c) for c in WHITESPACE]] = True  # last entry, which is False: one pass, no branches


@dataclass
class MinHashConfig:
    """MinHash near-duplicate settings (params.yaml `dedup.minhash`); FineWeb defaults."""

    shingle: str = "word"          # "word" n-grams or "char" n-grams
    ngram: int = 5                 # n of the n-grams (FineWeb: word 5-grams)
    num_perm: int = 112            # permutations; must be >= bands * rows
    bands: int | None = 14         # LSH bands; None (with rows None) = chosen from threshold
    rows: int | None = 8           # rows per band; 14 x 8 puts the S-curve midpoint near 0.72
    threshold: float = 0.72        # Jaccard threshold: picks bands x rows when unset, and verification
    seed: int = 1                  # permutation seed (datasketch's convention)
    scheme: str = "affine32"       # datasketch permutation scheme: affine32 (4 B/value) or affine64
    lowercase: bool = True         # shingle the lowercased text
    strip_punctuation: bool = True  # punctuation becomes a space before shingling
    chunk_size: int = 1024         # shingles per permutation block: (num_perm x chunk) stays in cache
    batch_chars: int = 131072      # characters shingled together in one vectorised pass

    def __post_init__(self) -> None:
        if self.shingle not in ("word", "char"):
            raise ValueError(f"dedup.minhash.shingle must be 'word' or 'char', got {self.shingle!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"dedup.minhash.scheme must be one of {list(SCHEMES)}, got {self.scheme!r}")
        if self.ngram < 1:
            raise ValueError(f"dedup.minhash.ngram must be >= 1, got {self.ngram}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("dedup.minhash: give both bands and rows, or neither (derive from threshold)")
        if self.bands is None:
            self.bands, self.rows = optimal_bands(self.threshold, self.num_perm)
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"dedup.minhash: bands x rows = {self.bands * self.rows} > num_perm {self.num_perm}")


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives around `threshold` (as datasketch)."""
    s = np.linspace(0.0, 1.0, 1001)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s ** r) ** b  # probability that a pair of similarity s becomes a candidate
            fp = np.trapezoid(np.where(s <= threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def make_permutations(num_perm: int, seed: int = 1, scheme: str = "affine32") -> np.ndarray:
    """The (2, num_perm) affine parameters (a odd, b) that datasketch 2.x draws for `seed`."""
    dtype, width = SCHEMES[scheme], 32 if scheme == "affine32" else 64
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
    b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
    return np.array([a, b])


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, element-wise (multiplications wrap mod 2^64 by design)."""
    s, m1, m2 = _FMIX64
    h = h ^ (h >> s)
    h = h * m1
    h = h ^ (h >> s)
    h = h * m2
    return h ^ (h >> s)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch pre-mixes input hashes in `affine32`."""
    m1, m2 = _FMIX32
    h = h ^ (h >> np.uint32(16))
    h = h * m1
    h = h ^ (h >> np.uint32(13))
    h = h * m2
    return h ^ (h >> np.uint32(16))


# ---- the reference definition, in plain Python -------------------------------------------------

def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def _poly(codes: Sequence[int]) -> int:
    return sum(c * pow(_P, j, 1 << 64) for j, c in enumerate(codes)) & M64


def _word_hash(word: str) -> int:
    return _fmix64_int((_poly([ord(c) for c in word]) + len(word) * _LEN) & M64)


def reference_shingle_hash(shingle: str, kind: str = "word") -> int:
    """The 64-bit hash of one shingle (words joined by one space, or a character n-gram)."""
    if kind == "char":
        return _fmix64_int((_poly([ord(c) for c in shingle]) + len(shingle) * _LEN) & M64)
    words = shingle.split(" ")
    acc = 0
    for w in words:
        acc = (acc * _Q + _word_hash(w)) & M64
    return _fmix64_int((acc + len(words) * _LEN) & M64)


def reference_shingles(text: str, n: int = 5, kind: str = "word") -> list[str]:
    """Every shingle of `text` in order (words joined by one space), as the vectorised code sees them."""
    if kind == "char":
        return [text[i:i + n] for i in range(len(text) - n + 1)] if len(text) >= n else [text] if text else []
    words = text.split()
    if 0 < len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def datasketch_hashfunc(kind: str = "word", scheme: str = "affine32") -> Callable[[bytes], int]:
    """A datasketch `hashfunc` giving our shingle hash of UTF-8 shingle bytes (32-bit for affine32)."""
    mask = 0xFFFFFFFF if scheme == "affine32" else M64
    return lambda b: reference_shingle_hash(b.decode("utf-8"), kind) & mask


# ---- vectorised shingle hashes ------------------------------------------------------------------

_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64, from a table that grows by doubling and is reused across batches."""
    table = _POWERS.get(base)
    if table is None or len(table) < n:
        size = max(n, 2 * len(table) if table is not None else 1 << 16)
        table = np.full(size, base, dtype=np.uint64)
        table[0] = 1
        np.cumprod(table, out=table)  # wraps mod 2^64, which is the arithmetic we want
        _POWERS[base] = table
    return table[:n]


def shingle_hashes(texts: Sequence[str], n: int = 5, kind: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every shingle of every text, CSR layout: text d owns `hashes[offsets[d]:offsets[d+1]]`."""
    num_docs = len(texts)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=num_docs)
    doc_start = np.ones(num_docs + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=doc_start[1:])  # +1: "\n" separators, so words never span texts
    doc_start[1:] += 1
    # A separator before and after too: every word then starts and ends at a whitespace boundary.
    codes = np.frombuffer(("\n" + "\n".join(texts) + "\n").encode("utf-32-le"), dtype=np.uint32)
    total = len(codes)
    pw, pw_inv = _powers(_P, total + 1), _powers(_P_INV, total + 1)
    prefix = np.zeros(total + 1, dtype=np.uint64)
    np.cumsum(np.multiply(codes, pw[:total]), out=prefix[1:])

    def substring_hash(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        raw = (prefix[ends] - prefix[starts]) * pw_inv[starts]  # = sum c_j P^(j - start)
        return fmix64(raw + (ends - starts).astype(np.uint64) * np.uint64(_LEN))

    if kind == "char":
        counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
        offsets = np.zeros(num_docs + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        doc = np.repeat(np.arange(num_docs), counts)
        starts = doc_start[doc] + (np.arange(offsets[-1]) - offsets[doc])
        ends = np.minimum(starts + n, doc_start[doc] + lengths[doc])
        return substring_hash(starts, ends), offsets
    if kind != "word":
        raise ValueError(f"shingle kind must be 'word' or 'char', got {kind!r}")

    ws = np.take(_WS_TABLE, codes, mode="clip")
    w_start = np.flatnonzero(ws[:-1] & ~ws[1:]) + 1
    w_end = np.flatnonzero(~ws[:-1] & ws[1:]) + 1
    words = substring_hash(w_start, w_end)
    w_doc = np.searchsorted(doc_start, w_start, side="right") - 1
    w_count = np.bincount(w_doc, minlength=num_docs)
    w_first = np.zeros(num_docs + 1, dtype=np.int64)
    np.cumsum(w_count, out=w_first[1:])
    counts = np.where(w_count >= n, w_count - n + 1, np.minimum(w_count, 1))
    offsets = np.zeros(num_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    hashes = np.empty(offsets[-1], dtype=np.uint64)
    q = np.uint64(_Q)

    # Full n-grams: a polynomial over n consecutive word hashes, kept where all n lie in one text.
    num_full = max(len(words) - n + 1, 0)
    acc = np.zeros(num_full, dtype=np.uint64)
    for t in range(n):
        acc = acc * q + words[t:t + num_full]
    full = np.flatnonzero(w_doc[:num_full] == w_doc[n - 1:n - 1 + num_full]) if num_full else np.empty(0, int)
    fdoc = w_doc[full]
    hashes[offsets[fdoc] + full - w_first[fdoc]] = fmix64(acc[full] + np.uint64(n * _LEN))

    # Texts with 1..n-1 words: one shingle of all their words.
    short = np.flatnonzero((w_count > 0) & (w_count < n))
    acc = np.zeros(len(short), dtype=np.uint64)
    for t in range(n - 1):
        has = t < w_count[short]
        acc = np.where(has, acc * q + words[np.where(has, w_first[short] + t, 0)], acc)
    hashes[offsets[short]] = fmix64(acc + w_count[short].astype(np.uint64) * np.uint64(_LEN))
    return hashes, offsets


# ---- signatures ---------------------------------------------------------------------------------

_TILES: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray]] = {}


def _tiles(a: np.ndarray, b: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """a and b repeated `width` times along axis 1: numpy's integer SIMD loops need both operands
    contiguous, and a stride-0 (broadcast) inner operand runs them ~2x slower."""
    key = (a.tobytes() + b.tobytes(), width)
    if key not in _TILES:
        _TILES.clear()
        _TILES[key] = (np.repeat(a[:, None], width, axis=1), np.repeat(b[:, None], width, axis=1))
    return _TILES[key]


def minhash_signatures(hashes: np.ndarray, offsets: np.ndarray, permutations: np.ndarray,
                       scheme: str = "affine32", chunk_size: int = 1024) -> np.ndarray:
    """(docs, num_perm) MinHash signatures of CSR shingle hashes; an empty text gets all-max values."""
    dtype = SCHEMES[scheme]
    a_tile, b_tile = _tiles(permutations[0].astype(dtype), permutations[1].astype(dtype), chunk_size)
    num_perm, num_docs = a_tile.shape[0], len(offsets) - 1
    hv = fmix32((hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)) if scheme == "affine32" else fmix64(hashes)
    sig = np.full((num_perm, num_docs), np.iinfo(dtype).max, dtype=dtype)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    seg_start = offsets[nonempty]
    buf = np.empty((num_perm, chunk_size), dtype=dtype)
    for c0 in range(0, len(hv), chunk_size):
        c1 = min(c0 + chunk_size, len(hv))
        width = c1 - c0
        block = buf[:, :width]
        np.multiply(a_tile[:, :width], hv[c0:c1], out=block)  # all permutations of the chunk at once
        np.add(block, b_tile[:, :width], out=block)
        j0 = np.searchsorted(seg_start, c0, side="right") - 1
        j1 = np.searchsorted(seg_start, c1, side="left")
        starts = np.maximum(seg_start[j0:j1], c0) - c0
        docs = nonempty[j0:j1]
        part = np.minimum.reduceat(block, starts, axis=1)
        if docs[-1] - docs[0] + 1 == len(docs):  # the usual case: a slice, not a fancy-index scatter
            np.minimum(sig[:, docs[0]:docs[-1] + 1], part, out=sig[:, docs[0]:docs[-1] + 1])
        else:
            sig[:, docs] = np.minimum(sig[:, docs], part)
    return np.ascontiguousarray(sig.T)


def text_signatures(texts: Sequence[str], config: MinHashConfig, permutations: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Signatures (docs, num_perm) and shingle counts of already-normalised texts.

    Texts go in batches of about `config.batch_chars` characters: small enough that every
    intermediate array stays in cache and is recycled by the allocator, large enough that numpy's
    per-call overhead is shared by many documents."""
    if permutations is None:
        permutations = make_permutations(config.num_perm, config.seed, config.scheme)
    sig = np.empty((len(texts), config.num_perm), dtype=SCHEMES[config.scheme])
    counts = np.empty(len(texts), dtype=np.int64)
    for start, stop in batches(texts, config.batch_chars):
        hashes, offsets = shingle_hashes(texts[start:stop], config.ngram, config.shingle)
        sig[start:stop] = minhash_signatures(hashes, offsets, permutations, config.scheme, config.chunk_size)
        counts[start:stop] = np.diff(offsets)
    return sig, counts


def batches(texts: Sequence[str], batch_chars: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of consecutive texts holding about `batch_chars` characters each."""
    ends = np.cumsum(np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts)))
    out, start = [], 0
    while start < len(texts):
        limit = (ends[start - 1] if start else 0) + batch_chars
        stop = max(int(np.searchsorted(ends, limit, "right")), start + 1)
        out.append((start, stop))
        start = stop
    return out


def shingle_sets(texts: Sequence[str], config: MinHashConfig) -> list[np.ndarray]:
    """Each text's distinct shingle hashes, sorted: the sets whose true Jaccard verification compares."""
    out = []
    for start, stop in batches(texts, config.batch_chars):
        hashes, offsets = shingle_hashes(texts[start:stop], config.ngram, config.shingle)
        out.extend(np.unique(hashes[offsets[k]:offsets[k + 1]]) for k in range(stop - start))
    return out


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) 64-bit keys: two documents share key k iff their band k rows agree (up to 2^-64)."""
    keys = np.empty((signatures.shape[0], bands), dtype=np.uint64)
    q = np.uint64(_Q)
    for k in range(bands):
        acc = np.zeros(signatures.shape[0], dtype=np.uint64)
        for j in range(k * rows, (k + 1) * rows):
            acc = acc * q + signatures[:, j].astype(np.uint64)
        keys[:, k] = fmix64(acc)
    return keys


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of equal signature values: the MinHash estimate of Jaccard similarity."""
    return (np.asarray(a) == np.asarray(b)).mean(axis=-1)


def to_datasketch(signature: np.ndarray, config: MinHashConfig) -> MinHash:
    """A datasketch `MinHash` holding `signature`, with the same permutations (for its LSH, merges)."""
    return MinHash(num_perm=config.num_perm, seed=config.seed, hashvalues=signature, scheme=config.scheme,
                   permutations=make_permutations(config.num_perm, config.seed, config.scheme),
                   hashfunc=datasketch_hashfunc(config.shingle, config.scheme))


def to_lean(signature: np.ndarray, config: MinHashConfig) -> LeanMinHash:
    """A datasketch `LeanMinHash` (compact, serialisable) holding `signature`."""
    return LeanMinHash(seed=config.seed, hashvalues=signature, scheme=config.scheme)
