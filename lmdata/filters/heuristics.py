"""Gopher quality, Gopher repetition and C4 line rules: each a small named function.

A rule reads a `TextView` (the text plus lazily cached lines, paragraphs and words) and a
`HeuristicsConfig`, and returns None (keep) or the measured value that broke its threshold.
`check_text` runs the enabled rules in order and reports the first failure: the reference.
`heuristic_filter`, the stage step, runs the same rules batched (heuristics_batch.py: the same
decisions and values, tested against `check_text`, several times less CPU). Words follow datatrove's English tokenisation closely (punctuation marks are
tokens of their own) so that thresholds mean the same thing as theirs; see docs/LOG.md.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
import polars as pl

from lmdata.errors import ConfigError
from lmdata.stage import REJECT_COLUMNS, StepResult, add_reason, empty_rejects, first_failure

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher's list, as datatrove
C4_TERMINAL = (".", "?", "!", '"', "'")
# A word with inner apostrophes ("o'er", "abandon'd"), a run of dots or dashes, or one other symbol.
WORD_RE = re.compile(r"\w+(?:['’]\w+)*|\.{2,}|-{2,}|[^\w\s]")
SENTENCE_END_RE = re.compile(r"[.!?…]+[\"')\]]*(?=\s|$)")
CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")


@dataclass
class HeuristicsConfig:
    """Thresholds of every heuristic rule; maps 1:1 to params.yaml `filter.heuristics`.

    Defaults are the published values (Gopher as in datatrove, C4) except where the Shakespeare
    sample needs otherwise; each change is measured in docs/LOG.md ("Filtering and balance")."""

    enabled: bool = True
    # Rule names (see `rule_names`) switched off. C4's terminal-punctuation rule is off by default:
    # verse lines end in commas or nothing (76% of a work's lines, median), so it would gut plays.
    disabled_rules: list[str] = field(default_factory=lambda: ["c4_terminal_punct"])
    # datatrove counts each punctuation mark as a word in the alpha and symbol ratios; the Gopher
    # paper counts whitespace-separated words. Punctuation-dense verse fails 0.8 alphabetic words on
    # datatrove's count (48 of 94 works; median 0.81) but not on the paper's (median 0.999).
    count_punctuation_as_words: bool = False
    # Gopher quality (Rae et al. 2021, table A1; datatrove GopherQualityFilter defaults)
    min_doc_words: int = 50  # non-symbol words; Gopher 50
    max_doc_words: int = 100_000  # Gopher 100k
    min_mean_word_length: float = 3.0  # Gopher 3
    max_mean_word_length: float = 10.0  # Gopher 10
    max_symbol_word_ratio: float = 0.1  # '#' and '...' per word, each; Gopher 0.1
    max_bullet_lines_ratio: float = 0.9  # lines starting with a bullet or dash; Gopher 0.9
    max_ellipsis_lines_ratio: float = 0.3  # lines ending in an ellipsis; Gopher 0.3
    min_alpha_words_ratio: float = 0.8  # words with a letter; Gopher 0.8
    min_stop_words: int = 2  # distinct stop words present; Gopher 2
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))
    # Gopher repetition (table A1). Shares of characters are noise on a text of a few words (one
    # repeated pair of words in a 12-word quote is 28%): texts with fewer words skip these rules.
    min_words_for_repetition: int = 0  # 0 = always applied (the short-text preset uses 20)
    # Gopher repetition (table A1)
    max_dup_para_frac: float = 0.3
    max_dup_para_char_frac: float = 0.2
    max_dup_line_frac: float = 0.35  # Gopher 0.3; plays repeat speaker lines (Merry Wives: 0.303)
    max_dup_line_char_frac: float = 0.2
    max_top_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    # C4 (Raffel et al. 2020). "modify" drops failing lines (a document left empty is rejected);
    # "filter" rejects a document when more than c4_max_bad_line_frac of its lines fail a line rule.
    c4_mode: str = "filter"
    c4_max_bad_line_frac: float = 0.5  # filter mode only
    c4_min_words_per_line: int = 3  # C4 3
    c4_min_sentences: int = 5  # C4 5 (counted on the lines that survive the line rules)
    c4_max_word_length: int = 1000  # lines with a longer word are dropped (C4 code)
    # C4 drops a page with any curly bracket (code); stray "{Aside.]" typos in 6 plays would drop
    # them, so a share of lines is allowed (the plays' largest is 0.2%; see LOG).
    c4_max_curly_line_frac: float = 0.005

    def __post_init__(self) -> None:
        validate_config(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> HeuristicsConfig:
        """Build from a params.yaml section; unknown keys or wrong types raise ValueError."""
        return config_from_dict(cls, d or {}, "filter.heuristics")


def config_from_dict(cls, d: dict, section: str):
    """Construct dataclass `cls` from a mapping, naming the unknown key at fault."""
    if not isinstance(d, dict):
        raise ConfigError(f"{section}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return cls(**d)


def _type_ok(value, annotation: str) -> bool:
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    if annotation.startswith("list[str]"):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if annotation.startswith("dict[int, float]"):
        return isinstance(value, dict) and all(
            isinstance(k, int) and not isinstance(k, bool) and isinstance(v, (int, float))
            and not isinstance(v, bool) for k, v in value.items())
    if annotation.startswith("dict[str, float]"):
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in value.items())
    if annotation.startswith("str | None"):
        return value is None or isinstance(value, str)
    if annotation.startswith("float | None"):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    raise TypeError(f"no type check for annotation {annotation!r}")


def check_field_types(cfg, section: str) -> None:
    """Raise ValueError naming `section.field` when a value has the wrong type."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, str(f.type)):
            raise ConfigError(f"{section}.{f.name}: expected {f.type}, got {value!r} "
                             f"({type(value).__name__})")


def validate_config(cfg: HeuristicsConfig) -> None:
    """Type-check every threshold and every rule name before any document is read."""
    check_field_types(cfg, "filter.heuristics")
    unknown = sorted(set(cfg.disabled_rules) - set(rule_names(cfg)))
    if unknown:
        raise ConfigError(f"filter.heuristics.disabled_rules: unknown rule(s) {unknown}; "
                         f"known: {rule_names(cfg)}")
    if cfg.c4_mode not in ("filter", "modify"):
        raise ConfigError(f"filter.heuristics.c4_mode: expected 'filter' or 'modify', got {cfg.c4_mode!r}")


class TextView:
    """One document's text with lazily computed views shared by the rules."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    @cached_property
    def words(self) -> list[str]:
        return WORD_RE.findall(self.text)

    @cached_property
    def spaced_words(self) -> list[str]:
        """Whitespace-separated words, as the Gopher paper counts them."""
        return self.text.split()

    @cached_property
    def plain_words(self) -> list[str]:
        """Words that are not punctuation marks (datatrove's `non_symbol_words`)."""
        return [w for w in self.words if w[0].isalnum() or w[0] == "_"]

    @cached_property
    def word_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(integer id per word, character length per word), for n-gram hashing."""
        ids: dict[str, int] = {}
        codes = np.fromiter((ids.setdefault(w, len(ids)) for w in self.words), np.uint64, len(self.words))
        lengths = np.fromiter((len(w) for w in self.words), np.int64, len(self.words))
        return codes, lengths


def _frac(num: float, den: float) -> float:
    return num / den if den else 0.0


# --- Gopher quality -------------------------------------------------------------------------------

def gopher_word_count(v: TextView, c: HeuristicsConfig) -> float | None:
    n = len(v.plain_words)
    return float(n) if n < c.min_doc_words or n > c.max_doc_words else None


def gopher_mean_word_length(v: TextView, c: HeuristicsConfig) -> float | None:
    if not v.plain_words:
        return 0.0
    mean = sum(map(len, v.plain_words)) / len(v.plain_words)
    return mean if mean < c.min_mean_word_length or mean > c.max_mean_word_length else None


def _denominator_words(v: TextView, c: HeuristicsConfig) -> list[str]:
    return v.words if c.count_punctuation_as_words else v.spaced_words


def gopher_symbol_ratio(v: TextView, c: HeuristicsConfig) -> float | None:
    n = len(_denominator_words(v, c))
    ratio = max(_frac(v.text.count("#"), n), _frac(v.text.count("...") + v.text.count("…"), n))
    return ratio if ratio > c.max_symbol_word_ratio else None


def gopher_bullet_lines(v: TextView, c: HeuristicsConfig) -> float | None:
    ratio = _frac(sum(s.lstrip().startswith(("•", "-")) for s in v.lines), len(v.lines))
    return ratio if ratio > c.max_bullet_lines_ratio else None


def gopher_ellipsis_lines(v: TextView, c: HeuristicsConfig) -> float | None:
    ratio = _frac(sum(s.rstrip().endswith(("...", "…")) for s in v.lines), len(v.lines))
    return ratio if ratio > c.max_ellipsis_lines_ratio else None


def gopher_alpha_words(v: TextView, c: HeuristicsConfig) -> float | None:
    words = _denominator_words(v, c)
    ratio = _frac(sum(any(ch.isalpha() for ch in w) for w in words), len(words))
    return ratio if ratio < c.min_alpha_words_ratio else None


def gopher_stop_words(v: TextView, c: HeuristicsConfig) -> float | None:
    # Case-sensitive, as datatrove: "The" at a line start is not counted.
    n = len(set(c.stop_words).intersection(v.words))
    return float(n) if n < c.min_stop_words else None


# --- Gopher repetition ----------------------------------------------------------------------------

def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their characters)."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


def _paragraph_dups(v: TextView) -> tuple[float, float]:
    paras = re.split(r"\n{2,}", v.text.strip())
    n, chars = _duplicates(paras)
    return _frac(n, len(paras)), _frac(chars, len(v.text))


def _line_dups(v: TextView) -> tuple[float, float]:
    lines = re.split(r"\n+", v.text)
    n, chars = _duplicates(lines)
    return _frac(n, len(lines)), _frac(chars, len(v.text))


def gopher_dup_para_frac(v: TextView, c: HeuristicsConfig) -> float | None:
    frac = _paragraph_dups(v)[0]
    return frac if frac > c.max_dup_para_frac else None


def gopher_dup_para_char_frac(v: TextView, c: HeuristicsConfig) -> float | None:
    frac = _paragraph_dups(v)[1]
    return frac if frac > c.max_dup_para_char_frac else None


def gopher_dup_line_frac(v: TextView, c: HeuristicsConfig) -> float | None:
    frac = _line_dups(v)[0]
    return frac if frac > c.max_dup_line_frac else None


def gopher_dup_line_char_frac(v: TextView, c: HeuristicsConfig) -> float | None:
    frac = _line_dups(v)[1]
    return frac if frac > c.max_dup_line_char_frac else None


def _ngram_codes(v: TextView, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit code per word n-gram (polynomial hash of word ids) and its characters (no spaces)."""
    ids, lengths = v.word_codes
    m = len(ids) - n + 1
    codes = ids[:m].copy()
    chars = lengths[:m].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            codes = codes * np.uint64(1_000_003) + ids[k:k + m] + np.uint64(1)
            chars += lengths[k:k + m]
    return codes, chars


def top_ngram_char_frac(v: TextView, n: int) -> float:
    """Characters covered by the most frequent n-gram (ties: the first seen) / text characters.
    An n-gram seen once repeats nothing: 0 (else every one-line text of a few words would fail)."""
    if len(v.words) < n:
        return 0.0
    codes, chars = _ngram_codes(v, n)
    _, first, counts = np.unique(codes, return_index=True, return_counts=True)
    top = counts.max()
    if top < 2:
        return 0.0
    i = first[counts == top].min()
    return _frac(float((chars[i] + n - 1) * top), len(v.text))  # joined with spaces


def dup_ngram_char_frac(v: TextView, n: int) -> float:
    """Characters in repeated n-grams, scanning left to right and skipping past each repeat."""
    if len(v.words) < n:
        return 0.0
    codes, chars = _ngram_codes(v, n)
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] < np.arange(len(codes)))
    if len(repeats) == 0:
        return 0.0
    starts: list[int] = []  # the scan jumps over [start, start + n - 1) after each repeat
    total, next_free = 0, 0

    def visited(j: int) -> bool:
        k = bisect.bisect_right(starts, j) - 1
        return k < 0 or j >= starts[k] + n - 1

    for i in repeats.tolist():
        if i < next_free:
            continue
        # A repeat only counts if an earlier occurrence was itself visited (and remembered).
        code = int(inverse[i])
        if visited(int(first[code])) or any(visited(j) for j in np.flatnonzero(inverse[:i] == code).tolist()):
            total += int(chars[i])
            next_free = i + n
            starts.append(i + 1)
    return _frac(total, len(v.text))


def _top_rule(n: int) -> Callable[[TextView, HeuristicsConfig], float | None]:
    def rule(v: TextView, c: HeuristicsConfig) -> float | None:
        frac = top_ngram_char_frac(v, n)
        return frac if frac > c.max_top_ngram_char_frac[n] else None
    rule.__name__ = f"gopher_top_{n}gram"
    return rule


def _dup_rule(n: int) -> Callable[[TextView, HeuristicsConfig], float | None]:
    def rule(v: TextView, c: HeuristicsConfig) -> float | None:
        frac = dup_ngram_char_frac(v, n)
        return frac if frac > c.max_dup_ngram_char_frac[n] else None
    rule.__name__ = f"gopher_dup_{n}gram"
    return rule


# --- C4 -------------------------------------------------------------------------------------------

def c4_line_failure(line: str, c: HeuristicsConfig, disabled: set[str]) -> str | None:
    """The first C4 line rule `line` fails (after stripping), or None."""
    words = line.split()
    if "c4_long_word" not in disabled and any(len(w) > c.c4_max_word_length for w in words):
        return "c4_long_word"
    line = CITATION_RE.sub("", line)
    if "c4_terminal_punct" not in disabled and (not line.endswith(C4_TERMINAL) or line.endswith("...")):
        return "c4_terminal_punct"
    if "c4_min_words_per_line" not in disabled and len(words) < c.c4_min_words_per_line:
        return "c4_min_words_per_line"
    if "c4_javascript" not in disabled and "javascript" in line.lower():
        return "c4_javascript"
    return None


def c4_check(text: str, c: HeuristicsConfig, disabled: set[str]) -> tuple[str | None, float | None, str]:
    """Apply the C4 rules: (failing rule or None, its measured value, the text after line removal)."""
    kept: list[str] = []
    lines = [s.strip() for s in text.splitlines()]
    lines = [s for s in lines if s] if c.c4_mode == "filter" else lines
    bad: dict[str, int] = {}
    sentences = curly = 0
    for line in lines:
        failed = c4_line_failure(line, c, disabled)
        if failed is None:
            # Document rules look only at lines that survive the line rules, as in C4.
            if "c4_lorem_ipsum" not in disabled and "lorem ipsum" in line.lower():
                return "c4_lorem_ipsum", 1.0, text
            curly += "{" in line
            kept.append(line)
            sentences += max(1, len(SENTENCE_END_RE.findall(line)))
        else:
            bad[failed] = bad.get(failed, 0) + 1
    curly_frac = _frac(curly, len(lines))
    if "c4_curly_bracket" not in disabled and curly_frac > c.c4_max_curly_line_frac:
        return "c4_curly_bracket", curly_frac, text
    if c.c4_mode == "filter":
        for rule in ("c4_long_word", "c4_terminal_punct", "c4_min_words_per_line", "c4_javascript"):
            frac = _frac(bad.get(rule, 0), len(lines))
            if frac > c.c4_max_bad_line_frac:
                return rule, frac, text
    if "c4_min_sentences" not in disabled and sentences < c.c4_min_sentences:
        return "c4_min_sentences", float(sentences), text
    new_text = "\n".join(kept).strip() if c.c4_mode == "modify" else text
    if not new_text:
        return "c4_empty", 0.0, new_text
    return None, None, new_text


# --- registry and step ----------------------------------------------------------------------------

def doc_rules(c: HeuristicsConfig) -> dict[str, Callable[[TextView, HeuristicsConfig], float | None]]:
    """Document rules in evaluation order: Gopher quality, then Gopher repetition."""
    rules = [gopher_word_count, gopher_mean_word_length, gopher_symbol_ratio, gopher_bullet_lines,
             gopher_ellipsis_lines, gopher_alpha_words, gopher_stop_words, gopher_dup_para_frac,
             gopher_dup_para_char_frac, gopher_dup_line_frac, gopher_dup_line_char_frac]
    rules += [_top_rule(n) for n in sorted(c.max_top_ngram_char_frac)]
    rules += [_dup_rule(n) for n in sorted(c.max_dup_ngram_char_frac)]
    return {r.__name__: r for r in rules}


C4_RULES = ("c4_long_word", "c4_terminal_punct", "c4_min_words_per_line", "c4_javascript", "c4_lorem_ipsum",
            "c4_curly_bracket", "c4_min_sentences")


def rule_names(c: HeuristicsConfig) -> list[str]:
    """Every rule name a config can switch off (and that can appear as a `reason`)."""
    return ["empty", *doc_rules(c), *C4_RULES]


def check_text(text: str, c: HeuristicsConfig) -> tuple[str | None, float | None, str]:
    """Run the enabled rules on one text: (first failing rule or None, measured value, new text)."""
    if not text.strip():
        return ("empty", 0.0, text) if "empty" not in c.disabled_rules else (None, None, text)
    disabled = set(c.disabled_rules)
    view = TextView(text)
    short = c.min_words_for_repetition > 0 and len(view.plain_words) < c.min_words_for_repetition
    for name, rule in doc_rules(c).items():
        if name in disabled or (short and name.startswith(("gopher_dup_", "gopher_top_"))):
            continue
        value = rule(view, c)
        if value is not None:
            return name, float(value), text
    if all(r in disabled for r in C4_RULES):
        return None, None, text
    return c4_check(text, c, disabled)


def heuristic_filter(df: pl.DataFrame, cfg: HeuristicsConfig, column: str = "text") -> StepResult:
    """The filter step: reject rows whose `column` fails a rule; C4 "modify" mode rewrites it.
    Runs the batched rules (heuristics_batch.py: the same decisions and values as `check_text`).

    Rejected rows keep their original text; kept rows carry the modified one (and `n_bytes`,
    if present, is recomputed)."""
    from lmdata.filters.heuristics_batch import check_batch  # imports this module

    if not cfg.enabled or df.is_empty():
        return StepResult(df, empty_rejects(df))
    nulls = df[column].is_null()
    if nulls.any():
        row = int(nulls.arg_true()[0])
        where = f" (id {df['id'][row]!r})" if "id" in df.columns else ""
        raise ValueError(f"heuristic filter: column {column!r} is null in row {row}{where}")
    results = check_batch(df[column].to_list(), cfg)
    reasons = pl.Series("reason", [r[0] for r in results], dtype=pl.Utf8)
    values = pl.Series("reason_value", [r[1] for r in results], dtype=pl.Float64)
    fails = reasons.is_not_null()
    rejected = add_reason(df.filter(fails), reason=pl.lit(reasons.filter(fails)),
                          value=pl.lit(values.filter(fails)))
    kept = df.filter(~fails)
    new_text = pl.Series(column, [r[2] for r, f in zip(results, fails.to_list()) if not f], dtype=pl.Utf8)
    kept = kept.with_columns(new_text)
    if "n_bytes" in kept.columns:
        kept = kept.with_columns(pl.col(column).str.len_bytes().cast(kept.schema["n_bytes"]).alias("n_bytes"))
    return StepResult(kept, rejected.select(*df.columns, *REJECT_COLUMNS))


# --- per-field rules for instruction and comparison records ---------------------------------------

RECORD_FIELDS = {"instructions": ("prompt", "response"), "comparisons": ("prompt", "chosen", "rejected")}


def record_filter(df: pl.DataFrame, dataset: str) -> StepResult:
    """Reject instruction/comparison records with an empty field (`empty_<field>`, value 0) or,
    for comparisons, a chosen answer equal to the rejected one (`chosen_equals_rejected`)."""
    if dataset not in RECORD_FIELDS:
        raise ValueError(f"record_filter: dataset must be one of {sorted(RECORD_FIELDS)}, got {dataset!r}")
    missing = [f for f in RECORD_FIELDS[dataset] if f not in df.columns]
    if missing:
        raise ValueError(f"record_filter({dataset}): columns {missing} missing (have {df.columns})")
    checks: list[tuple[str, pl.Expr, pl.Expr | None]] = [
        (f"empty_{f}", pl.col(f).fill_null("").str.strip_chars().str.len_chars() == 0,
         pl.col(f).fill_null("").str.len_chars()) for f in RECORD_FIELDS[dataset]]
    if dataset == "comparisons":
        checks.append(("chosen_equals_rejected",
                       pl.col("chosen").str.strip_chars() == pl.col("rejected").str.strip_chars(), None))
    return first_failure(df, checks)
