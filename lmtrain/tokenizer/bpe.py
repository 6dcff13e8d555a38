"""Byte-level BPE training from scratch, fast enough for tens of MB in seconds.

The algorithm is textbook BPE (the reference lives in tests/test_tokenizer_bpe.py) organised so
each merge only touches the words it changes:

1. Pre-split every text with the regex `pattern` and count each distinct chunk once
   (a 10 MB English corpus has ~2M chunks but only ~60k distinct ones).
2. Keep `pair -> count` (weighted by chunk frequency) and `pair -> chunks that hold it`.
3. Pick the most frequent pair from a max-heap with lazy invalidation: entries whose count is
   stale are skipped when popped; every pair whose count changes is pushed again.
4. Merge it in the chunks that hold it; update only the counts of pairs next to each merge.

Ties: among pairs with the highest count, the pair with the smallest (left id, right id) wins.
Ids are bytes 0-255, then merges in the order learned, so ties favour earlier-learned tokens,
and among raw bytes, byte order. Non-overlapping occurrences are merged left to right.

A merge whose bytes already form a token (e.g. "a"+"bc" after "ab"+"c" made "abc") reuses that id
instead of adding a duplicate: one id per byte string, as tiktoken's ranks require.

`vocab_size` counts everything: 256 byte tokens + learned tokens + special tokens. If the corpus
runs out of pairs first, the vocabulary is smaller (all chunks are single tokens by then).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from lmtrain.tokenizer.chat import DEFAULT_SPECIALS
from lmtrain.tokenizer.core import DEFAULT_PATTERN, Tokenizer, valid_utf8

DEFAULT_VOCAB_SIZE = 4096  # tiny profile
GPT2_VOCAB_SIZE = 50257  # GPT-2 profile

Pair = tuple[int, int]


def count_chunks(texts: Iterable[str], pattern: str = DEFAULT_PATTERN) -> Counter[bytes]:
    """How often each distinct pre-split chunk (as UTF-8 bytes) occurs in `texts`."""
    import regex  # only training needs it (encoding is tiktoken's)

    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(valid_utf8(text)))
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items()})


def _merge_in_word(words: list[list[int]], i: int, f: int, a: int, b: int, new: int,
                   delta: dict[Pair, int], where: dict[Pair, set[int]]) -> None:
    """Merge (a, b) left to right in words[i]; add to `delta` the count changes of the pairs it touches.

    Only pairs next to a merge change: each merge removes (a, b) and the old pair on its left, and adds
    (left neighbour, new); a merge not followed by another swaps (b, t) for (new, t) on its right.
    """
    w = words[i]
    hits = [k for k, p in enumerate(zip(w, w[1:])) if p[0] == a and p[1] == b]
    if a == b:  # "aaa": occurrences overlap; keep the leftmost of each run
        kept, last = [], -2
        for k in hits:
            if k > last + 1:
                kept.append(k)
                last = k
        hits = kept
    get = delta.get
    out: list[int] = []
    start = 0
    n = len(w)
    for k in hits:
        out += w[start:k]
        delta[(a, b)] = get((a, b), 0) - f
        if k:
            p = (w[k - 1], a)
            delta[p] = get(p, 0) - f
            p = (out[-1], new)
            delta[p] = get(p, 0) + f
            where.setdefault(p, set()).add(i)
        out.append(new)
        start = k + 2
        if start < n and not (w[start] == a and start + 1 < n and w[start + 1] == b):
            t = w[start]
            p = (b, t)
            delta[p] = get(p, 0) - f
            p = (new, t)
            delta[p] = get(p, 0) + f
            where.setdefault(p, set()).add(i)
    out += w[start:]
    words[i] = out


def learn_merges(chunk_counts: Mapping[bytes, int], n_tokens: int) -> list[tuple[int, int, int]]:
    """Merges `(left, right, new_id)` in the order learned, until there are `n_tokens` tokens."""
    chunks = sorted(c for c in chunk_counts if len(c) > 1)  # sorted: deterministic set iteration
    words = [list(c) for c in chunks]
    freqs = [chunk_counts[c] for c in chunks]
    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for i, (w, f) in enumerate(zip(words, freqs)):
        for p in zip(w, w[1:]):
            counts[p] = counts.get(p, 0) + f
            where.setdefault(p, set()).add(i)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    token_bytes = [bytes([i]) for i in range(256)]
    id_of = {t: i for i, t in enumerate(token_bytes)}
    merges: list[tuple[int, int, int]] = []
    while len(token_bytes) < n_tokens and heap:
        negc, a, b = heapq.heappop(heap)
        if counts.get((a, b), 0) != -negc:
            continue  # stale entry: the pair's current count was pushed separately
        joined = token_bytes[a] + token_bytes[b]
        new = id_of.get(joined)
        if new is None:
            new = id_of[joined] = len(token_bytes)
            token_bytes.append(joined)
        merges.append((a, b, new))
        delta: dict[Pair, int] = {}
        for i in where.pop((a, b)):
            _merge_in_word(words, i, freqs[i], a, b, new, delta, where)
        for p, d in delta.items():
            if d == 0:
                continue
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, (-c, p[0], p[1]))
            else:
                counts.pop(p, None)
                where.pop(p, None)
    return merges


def merges_to_ranks(merges: Sequence[tuple[int, int, int]]) -> dict[bytes, int]:
    """tiktoken's mergeable ranks (bytes -> id) for the byte tokens plus `merges`."""
    token_bytes = {i: bytes([i]) for i in range(256)}
    for a, b, new in merges:
        token_bytes[new] = token_bytes[a] + token_bytes[b]
    return {t: i for i, t in token_bytes.items()}


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, pattern: str = DEFAULT_PATTERN,
              special_tokens: Sequence[str] = DEFAULT_SPECIALS) -> Tokenizer:
    """Learn a byte-level BPE of `vocab_size` ids in all (256 bytes + merges + specials) from `texts`."""
    n_tokens = vocab_size - len(special_tokens)
    if n_tokens < 256:
        raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} special tokens")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens repeat: {list(special_tokens)}")
    merges = learn_merges(count_chunks(texts, pattern), n_tokens)
    ranks = merges_to_ranks(merges)
    specials = {s: len(ranks) + k for k, s in enumerate(special_tokens)}
    return Tokenizer(ranks, specials, pattern=pattern)
