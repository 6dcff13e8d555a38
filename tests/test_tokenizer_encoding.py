"""Encoding through tiktoken equals a pure-Python BPE encoder; round trips; save/load; char-level."""

from __future__ import annotations

import pydoc_data.topics

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from lmtrain.tokenizer import (
    DEFAULT_PATTERN,
    EOT,
    CharTokenizer,
    Tokenizer,
    count_chunks,
    learn_merges,
    train_bpe,
    train_char,
    train_tokenizer,
)
from lmtrain.tokenizer.core import RANKS_FILE, SIDECAR_FILE

TOPICS = pydoc_data.topics.topics
KEYS = sorted(TOPICS)
TRAIN_TEXTS = [TOPICS[k] for k in KEYS[::2]]  # real English prose with code samples
HELD_OUT = [TOPICS[k] for k in KEYS[1::2]]


def reference_encode(text: str, merges: list[tuple[int, int, int]], pattern: str = DEFAULT_PATTERN) -> list[int]:
    """Textbook BPE encoding: per pre-split chunk, apply the learned merge of highest priority first."""
    priority = {(a, b): (k, new) for k, (a, b, new) in enumerate(merges)}
    ids: list[int] = []
    for chunk in regex.findall(pattern, text):
        w = list(chunk.encode("utf-8"))
        while len(w) > 1:
            found = [priority[p] for p in zip(w, w[1:]) if p in priority]
            if not found:
                break
            k, new = min(found)
            a, b, _ = merges[k]
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            w = out
        ids += w
    return ids


@pytest.fixture(scope="module")
def merges() -> list[tuple[int, int, int]]:
    return learn_merges(count_chunks(TRAIN_TEXTS), 1024 - 5)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe(TRAIN_TEXTS, vocab_size=1024)


def test_tiktoken_encoding_equals_reference_encoder_on_held_out_text(tok, merges):
    for text in HELD_OUT:
        assert tok.encode(text) == reference_encode(text, merges)


def test_encode_batch_equals_encode(tok):
    assert tok.encode_batch(HELD_OUT[:10], num_threads=2) == [tok.encode(t) for t in HELD_OUT[:10]]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_inverts_encode_for_valid_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=())))
def test_char_decode_inverts_encode_for_seen_characters(s):
    ctok = train_char([s])
    assert ctok.decode(ctok.encode(s)) == s


def test_lone_surrogates_become_replacement_characters(tok):
    s = "abc\ud800def\udfff"
    assert tok.encode(s) == tok.encode("abc\ufffddef\ufffd")
    assert tok.decode(tok.encode(s)) == "abc\ufffddef\ufffd"


def test_special_token_text_is_ordinary_unless_allowed(tok):
    text = f"one{EOT}two"
    plain = tok.encode(text)
    assert tok.eot_id not in plain
    assert tok.decode(plain) == text
    assert tok.encode(text, allow_special=True) == tok.encode("one") + [tok.eot_id] + tok.encode("two")


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert (loaded.hash, loaded.vocab_size, loaded.special_tokens) == (tok.hash, tok.vocab_size, tok.special_tokens)
    assert loaded.encode(HELD_OUT[0]) == tok.encode(HELD_OUT[0])
    # the ranks file is plain tiktoken format
    assert load_tiktoken_bpe(str(tmp_path / "tok" / RANKS_FILE)) == tok.ranks
    assert (tmp_path / "tok" / SIDECAR_FILE).read_text().count(tok.hash) == 1


def test_load_refuses_an_edited_ranks_file(tok, tmp_path):
    folder = tok.save(tmp_path / "tok")
    lines = (folder / RANKS_FILE).read_bytes().splitlines(keepends=True)
    lines[300], lines[301] = lines[301].split()[0] + b" 300\n", lines[300].split()[0] + b" 301\n"
    (folder / RANKS_FILE).write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match="hash"):
        Tokenizer.load(folder)


def test_hash_changes_with_content(tok):
    assert train_bpe(TRAIN_TEXTS, vocab_size=1000).hash != tok.hash


def test_pattern_splits_alike_in_regex_and_hf_tokenizers():
    tokenizers = pytest.importorskip("tokenizers")
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(DEFAULT_PATTERN), behavior="isolated")
    for text in [*HELD_OUT[:5], "digits 1234567 x12y 3.14159 ٣٤٥٦ don't  \r\n\n  end  "]:
        assert [s for s, _ in split.pre_tokenize_str(text)] == regex.findall(DEFAULT_PATTERN, text)


def test_char_tokenizer_vocabulary_is_the_characters_seen(tmp_path):
    ctok = train_char(["hello", "world"])
    assert ctok.chars == sorted(set("helloworld") | {"\ufffd"})
    assert ctok.vocab_size == len(ctok.chars) + 5
    assert ctok.decode(ctok.encode("low")) == "low"
    assert ctok.decode(ctok.encode("lox")) == "lo\ufffd"  # unseen character
    assert ctok.encode(f"h{EOT}", allow_special=True) == ctok.encode("h") + [ctok.eot_id]
    loaded = Tokenizer.load(ctok.save(tmp_path / "char"))
    assert isinstance(loaded, CharTokenizer) and loaded.hash == ctok.hash


def test_possessive_digit_runs_are_read_differently_by_hf_hence_avoided():
    tokenizers = pytest.importorskip("tokenizers")
    possessive = r"\p{N}{1,3}+|\s+"  # tiktoken 0.14's cl100k form
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(possessive), behavior="isolated")
    assert [s for s, _ in split.pre_tokenize_str("1234567")] == ["1234567"]  # Oniguruma: runs of runs
    assert regex.findall(possessive, "1234567") == ["123", "456", "7"]
    assert regex.findall(DEFAULT_PATTERN, "1234567") == ["123", "456", "7"]


def test_train_tokenizer_picks_the_kind():
    assert isinstance(train_tokenizer(["abc"], kind="char"), CharTokenizer)
    assert train_tokenizer(TRAIN_TEXTS[:3], kind="bpe", vocab_size=300).vocab_size == 300
    with pytest.raises(ValueError, match="'wordpiece'"):
        train_tokenizer(["abc"], kind="wordpiece")
