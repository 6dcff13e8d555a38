"""The fast BPE trainer learns exactly what textbook BPE learns, deterministically."""

from __future__ import annotations

import pydoc_data.topics
import random

import pytest
import regex

from lmtrain.tokenizer import DEFAULT_PATTERN, DEFAULT_SPECIALS, count_chunks, learn_merges, train_bpe
from lmtrain.tokenizer.bpe import merges_to_ranks


def textbook_bpe(texts: list[str], n_tokens: int, pattern: str = DEFAULT_PATTERN) -> list[tuple[int, int, int]]:
    """The O(merges x corpus) loop: recount every pair of every chunk occurrence, merge the best everywhere.

    Best = highest count, ties to the smallest (left id, right id); a merge whose bytes already form
    a token reuses its id.
    """
    words = [list(c.encode("utf-8")) for t in texts for c in regex.findall(pattern, t)]
    token_bytes = [bytes([i]) for i in range(256)]
    merges = []
    while len(token_bytes) < n_tokens:
        counts: dict[tuple[int, int], int] = {}
        for w in words:
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            break
        a, b = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        joined = token_bytes[a] + token_bytes[b]
        if joined in token_bytes:
            new = token_bytes.index(joined)
        else:
            new = len(token_bytes)
            token_bytes.append(joined)
        merges.append((a, b, new))
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


@pytest.fixture(scope="module")
def small_corpus() -> list[str]:
    topics = pydoc_data.topics.topics
    # real English prose plus code, numbers, non-ASCII and repeated letters (overlapping pairs "aaaa")
    return [topics[k][:2500] for k in sorted(topics)[:8]] + [
        "Ünïcödé naïve café — 東京 42 1234567 aaaa aaaaaaa bbbb ab ab ab",
    ]


def test_fast_trainer_learns_the_textbook_merges(small_corpus):
    n_tokens = 256 + 250
    expected = textbook_bpe(small_corpus, n_tokens)
    assert len(expected) >= 250
    assert learn_merges(count_chunks(small_corpus), n_tokens) == expected


def test_ties_go_to_the_smallest_pair_ids():
    # "ab" and "cd" occur equally often: (97, 98) < (99, 100), so "ab" is learned first.
    merges = learn_merges(count_chunks(["cd", "ab", "cd", "ab"]), 257)
    assert merges == [(ord("a"), ord("b"), 256)]


def test_vocab_size_counts_bytes_merges_and_specials(small_corpus):
    tok = train_bpe(small_corpus, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.ranks) == 300 - len(DEFAULT_SPECIALS)
    assert sorted(tok.special_tokens.values()) == list(range(295, 300))
    assert tok.eot_id == 295


def test_training_is_deterministic(small_corpus):
    assert train_bpe(small_corpus, 400).hash == train_bpe(list(small_corpus), 400).hash


def test_tiny_corpus_stops_when_pairs_run_out():
    tok = train_bpe(["hello hello"], vocab_size=1000)
    # " hello" and "hello" are single tokens once the pairs are exhausted
    assert tok.encode("hello hello") == [tok.ranks[b"hello"], tok.ranks[b" hello"]]
    assert tok.vocab_size < 1000


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="256 bytes"):
        train_bpe(["abc"], vocab_size=256)


def test_merges_map_to_tiktoken_ranks():
    merges = [(ord("a"), ord("b"), 256), (256, ord("c"), 257)]
    ranks = merges_to_ranks(merges)
    assert ranks[b"ab"] == 256 and ranks[b"abc"] == 257 and len(ranks) == 258


def test_fast_trainer_matches_textbook_on_random_small_corpora():
    # few letters and many repeats: overlapping pairs, ties and exhausted pairs all occur
    rng = random.Random(0)
    for _ in range(200):
        texts = ["".join(rng.choice("aab c") for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 6))]
        assert learn_merges(count_chunks(texts), 300) == textbook_bpe(texts, 300), texts
