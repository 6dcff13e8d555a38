"""MinHash signatures: the vectorised code equals its plain-Python definition and datasketch."""

import math
import pickle

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from lmdata.minhash import (
    MinHashConfig,
    band_keys,
    datasketch_hashfunc,
    estimated_jaccard,
    make_permutations,
    optimal_bands,
    reference_shingle_hash,
    reference_shingles,
    shingle_hashes,
    shingle_sets,
    text_signatures,
    to_datasketch,
    to_lean,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "two words",
    "",
    " \n\t ",
    "héllo wörld\u3000日本語 テキスト\u2003x y z\r\nw v u",
    "one two three four five",
]
text_lists = st.lists(st.text(alphabet=st.sampled_from("ab cé\n\u3000\u00a0日x"), max_size=40), max_size=6)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(texts=text_lists, n=st.integers(1, 6), kind=st.sampled_from(["word", "char"]))
def test_vectorised_shingle_hashes_equal_reference_definition(texts, n, kind):
    hashes, offsets = shingle_hashes(texts, n, kind)
    for d, text in enumerate(texts):
        expected = [reference_shingle_hash(s, kind) for s in reference_shingles(text, n, kind)]
        assert hashes[offsets[d]:offsets[d + 1]].tolist() == expected


def test_word_shingles_split_like_str_split():
    text = "a\u2003b\u3000c\xa0d\te\u205ff"
    assert reference_shingles(text, 6) == [" ".join(text.split())]
    hashes, _ = shingle_hashes([text], 6)
    assert hashes.tolist() == [reference_shingle_hash("a b c d e f")]


def test_short_and_empty_texts():
    hashes, offsets = shingle_hashes(["", "a b", "a b c d e f"], 5)
    assert np.diff(offsets).tolist() == [0, 1, 2]
    assert hashes[0] == reference_shingle_hash("a b")


def test_shingle_sets_are_distinct_sorted_hashes():
    text = "a b c d e f a b c d e f"
    (got,) = shingle_sets([text], MinHashConfig(batch_chars=4))
    assert got.tolist() == sorted({reference_shingle_hash(s) for s in reference_shingles(text)})


def test_permutations_equal_datasketch_draws():
    for scheme in ("affine32", "affine64"):
        ours = make_permutations(112, seed=7, scheme=scheme)
        theirs = MinHash(num_perm=112, seed=7, scheme=scheme).permutations
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("scheme", ["affine32", "affine64"])
@pytest.mark.parametrize("kind", ["word", "char"])
def test_signatures_equal_datasketch_minhash(scheme, kind):
    cfg = MinHashConfig(shingle=kind, scheme=scheme, num_perm=64, bands=8, rows=8, seed=3, chunk_size=7)
    sig, counts = text_signatures(TEXTS, cfg)
    for d, text in enumerate(TEXTS):
        m = MinHash(num_perm=64, seed=3, scheme=scheme, hashfunc=datasketch_hashfunc(kind, scheme))
        m.update_batch([s.encode("utf-8") for s in reference_shingles(text, 5, kind)])
        assert np.array_equal(m.hashvalues, sig[d]), (d, text)
        assert counts[d] == len(reference_shingles(text, 5, kind))


def test_batches_do_not_change_signatures():
    texts = [f"document {i} " + "word " * (i % 13) + "end" for i in range(50)]
    small, _ = text_signatures(texts, MinHashConfig(batch_chars=30, chunk_size=5))
    large, _ = text_signatures(texts, MinHashConfig())
    assert np.array_equal(small, large)


def test_datasketch_objects_hold_our_signatures():
    cfg = MinHashConfig()
    sig, _ = text_signatures(TEXTS[:2], cfg)
    m0, m1 = to_datasketch(sig[0], cfg), to_datasketch(sig[1], cfg)
    assert m0.jaccard(m1) == pytest.approx(float(estimated_jaccard(sig[0], sig[1])))
    lean = pickle.loads(pickle.dumps(to_lean(sig[0], cfg)))
    assert np.array_equal(lean.hashvalues, sig[0]) and lean.scheme == "affine32"
    m0.update(b"The quick brown fox jumps")  # an object we built keeps working as a datasketch MinHash
    assert np.array_equal(m0.hashvalues, sig[0])  # that shingle was already in the document


@settings(max_examples=40, deadline=None, derandomize=True)
@given(shared=st.integers(0, 300), only_a=st.integers(0, 300), only_b=st.integers(0, 300),
       seed=st.integers(0, 10_000))
def test_estimated_jaccard_within_minhash_error(shared, only_a, only_b, seed):
    if shared + only_a == 0 or shared + only_b == 0:
        return
    words = [f"w{seed}x{i}" for i in range(shared + only_a + only_b)]
    a = " ".join(words[:shared + only_a])
    b = " ".join(words[:shared] + words[shared + only_a:])
    cfg = MinHashConfig(ngram=1, num_perm=256, bands=32, rows=8, seed=seed)
    sig, _ = text_signatures([a, b], cfg)
    sa, sb = set(reference_shingles(a, 1)), set(reference_shingles(b, 1))
    true = len(sa & sb) / len(sa | sb)
    # The estimate is a mean of 256 Bernoulli(J) draws: allow 5 standard errors (+2 values of slack).
    tolerance = 5 * math.sqrt(true * (1 - true) / 256) + 2 / 256
    assert abs(float(estimated_jaccard(sig[0], sig[1])) - true) <= tolerance


def test_band_keys_match_when_band_rows_match():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [1, 2, 3, 4]], dtype=np.uint32)
    keys = band_keys(sig, bands=2, rows=2)
    assert keys[0, 0] == keys[1, 0] == keys[2, 0]
    assert keys[0, 1] != keys[1, 1] and keys[0, 1] == keys[2, 1]


def test_optimal_bands_agree_with_datasketch():
    for threshold, num_perm in [(0.72, 112), (0.5, 128), (0.8, 64)]:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        assert optimal_bands(threshold, num_perm) == (lsh.b, lsh.r)


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="bands x rows"):
        MinHashConfig(num_perm=64, bands=14, rows=8)
    with pytest.raises(ValueError, match="both bands and rows"):
        MinHashConfig(bands=14, rows=None)
    assert (MinHashConfig(bands=None, rows=None, threshold=0.72).bands,) == (12,)
