"""The Gopher/C4 rules of `heuristics.check_text`, computed for a batch of documents at once.

Same decisions and the same measured values as the per-document reference (kept in heuristics.py,
and compared with this in tests/test_heuristics_batch.py on the sample, a generated corpus and
crafted cases), at a fraction of its CPU: each text is tokenised once by polars' regex kernels,
every count is a vectorised string kernel or a numpy `bincount` over flat token/line arrays, and
the rules run stage by stage on the documents still alive (first failure wins, as in the reference).

Exactness, where Rust and Python could differ:
- Regex classes are built from Python's own `str` predicates (`\\w` = isalnum or "_", `\\s` =
  isspace, isalpha, `\\d` = isdecimal), written as explicit code-point ranges, so Rust's Unicode
  tables never decide what a word, a space or a letter is.
- Lines split where `str.splitlines` splits; `strip` strips what `str.strip` strips.
- Every ratio is an integer count divided by an integer, as the reference divides it (IEEE
  division of exact integers < 2**53 is the same in numpy and Python).
- n-grams are compared by a 64-bit polynomial hash of word ids (a 64-bit hash of the word here,
  its first-occurrence rank in the reference): the two agree unless a hash collides for two different
  n-grams of one document (odds ~ positions² / 2**64 per document; never seen). Repeated n-grams
  are found by narrowing candidates from n to n + 1 (an n+1-gram that repeats starts where an
  n-gram repeats); the skip-ahead scan of the `gopher_dup_*` rules runs in Python over the
  repeated positions only, and only where an upper bound says the rule could fire.
- Batches of at most MAX_BATCH_CHARS characters bound the working memory (measured: +109 MB peak
  at 4M characters), whatever the shard size.
"""

from __future__ import annotations

import functools
import itertools
import re

import numpy as np
import polars as pl

from lmdata.filters.heuristics import C4_RULES, HeuristicsConfig, check_text, doc_rules

MAX_BATCH_CHARS = 4_000_000  # characters per batch: bounds the flat token arrays (~100 B per token)
_P = np.uint64(0x9E3779B97F4A7C15)  # n-gram polynomial hash base (odd)
_DOC_MIX = np.uint64(0xD6E8FEB86659FD93)  # mixes the document into a candidate key (a superset filter only)
# str.splitlines boundaries (Python docs, "str.splitlines"): \r\n first, then the single characters.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _ranges(chars: str) -> str:
    """A regex class body (no brackets) matching exactly `chars`, as \\x{...} ranges."""
    cps = np.unique(np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)).astype(np.int64)
    if len(cps) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(cps) != 1)
    lows, highs = cps[np.r_[0, breaks + 1]], cps[np.r_[breaks, len(cps) - 1]]
    return "".join(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}"
                   for lo, hi in zip(lows.tolist(), highs.tolist()))


@functools.cache
def _all_chars() -> str:
    return "".join(map(chr, itertools.chain(range(0xD800), range(0xE000, 0x110000))))


@functools.cache
def _classes() -> dict[str, str]:
    """Class bodies from Python's predicates: W (re's \\w), S (\\s, str.isspace), A (isalpha), D (\\d)."""
    every = _all_chars()
    return {
        "W": _ranges("".join(re.findall(r"\w", every))),
        "S": _ranges("".join(re.findall(r"\s", every))),
        "A": _ranges("".join(c for c in re.findall(r"[^\W\d_]", every) if c.isalpha())),  # alpha is \w, not \d
        "D": _ranges("".join(re.findall(r"\d", every))),
    }


@functools.cache
def _whitespace() -> str:
    """Every character `str.strip()` / `str.split()` treat as whitespace."""
    return "".join(re.findall(r"\s", _all_chars()))


@functools.cache
def _patterns() -> dict[str, str]:
    c = _classes()
    w, s, a, d = c["W"], c["S"], c["A"], c["D"]
    s_inline = _ranges("".join(ch for ch in _whitespace() if ch != "\n"))  # line-internal space
    return {
        # heuristics.WORD_RE: r"\w+(?:['’]\w+)*|\.{2,}|-{2,}|[^\w\s]"
        "word": f"[{w}]+(?:['’][{w}]+)*|\\.{{2,}}|-{{2,}}|[^{w}{s}]",
        "word_start": f"^[{w}]",
        "alpha": f"[{a}]",
        "spaced_word": f"[^{s}]+",
        "spaced_alpha_word": f"[^{s}]*[{a}][^{s}]*",
        "line_break": "\r\n|[" + _ranges(_LINE_BREAKS[1:]) + "]",
        "bullet_line": f"(?m)^[{s_inline}]*[•-]",
        "ellipsis_line": f"(?m)(?:\\.\\.\\.|…)[{s_inline}]*$",
        "paragraph": "[^\n]+(?:\n[^\n]+)*",  # re.split(r"\n{2,}", stripped text)
        # heuristics.SENTENCE_END_RE r"[.!?…]+[\"')\]]*(?=\s|$)": consuming the space instead of a
        # lookahead finds the same matches (no match starts with a space).
        "sentence_end": f"[.!?…]+[\"')\\]]*(?:[{s}]|$)",
        "citation": f"\\[[{d}]*\\]|\\[edit\\]|\\[citation needed\\]",
        # `"javascript" in line.lower()`: only A-Z lower to these ASCII letters ("İ" lowers to i + U+0307).
        "javascript": "".join(f"[{ch}{ch.upper()}]" for ch in "javascript"),
        "lorem": "".join(f"[{ch}{ch.upper()}]" if ch != " " else " " for ch in "lorem ipsum"),
    }


def _frac(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """heuristics._frac elementwise: num / den, 0.0 where den is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _counts(doc: np.ndarray, n_docs: int, weights: np.ndarray | None = None) -> np.ndarray:
    out = np.bincount(doc, weights=weights, minlength=n_docs)
    return out.astype(np.int64) if weights is None or weights.dtype.kind in "iub" else out


class _Batch:
    """The documents of one batch and the decisions taken so far."""

    def __init__(self, texts: list[str], cfg: HeuristicsConfig):
        self.cfg = cfg
        self.texts = pl.Series("t", texts, dtype=pl.Utf8)
        self.n = len(texts)
        self.reason: list[str | None] = [None] * self.n
        self.value: list[float | None] = [None] * self.n
        self.new_text: list[str] | None = None  # C4 modify mode
        self.alive = np.ones(self.n, dtype=bool)
        self.disabled = set(cfg.disabled_rules)
        self.p = _patterns()

    def fail(self, rule: str, mask: np.ndarray, values: np.ndarray) -> None:
        """Reject the alive documents in `mask` with `rule` and their measured `values`."""
        hit = np.flatnonzero(mask & self.alive)
        for i in hit.tolist():
            self.reason[i] = rule
            self.value[i] = float(values[i])
        self.alive[hit] = False

    def keep(self, mask: np.ndarray) -> None:
        """Documents decided as kept (no further rule applies)."""
        self.alive[mask] = False


def _words(b: _Batch, idx: np.ndarray) -> dict:
    """Flat WORD_RE tokens of documents `idx`: document (0..len(idx)), token, char length, plain flag."""
    toks = b.texts.gather(idx).str.extract_all(b.p["word"])
    counts = toks.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = toks.explode().drop_nulls()
    doc = np.repeat(np.arange(len(idx), dtype=np.int64), counts)
    return {"tok": flat, "doc": doc, "count": counts, "len": flat.str.len_chars().to_numpy().astype(np.int64)}


def _needs_words(b: _Batch) -> bool:
    """Whether any enabled rule reads the WORD_RE tokens."""
    c, d = b.cfg, b.disabled
    word_rules = {"gopher_word_count", "gopher_mean_word_length", "gopher_stop_words"}
    if c.count_punctuation_as_words:
        word_rules |= {"gopher_symbol_ratio", "gopher_alpha_words"}
    repetition = [r for r in doc_rules(c) if r.startswith(("gopher_dup_", "gopher_top_"))]
    return bool(word_rules - d) or any(r not in d for r in repetition)


def _quality(b: _Batch) -> dict | None:
    """Gopher quality rules on every alive document; returns the token arrays for later rules
    (None when no enabled rule reads words)."""
    c, p = b.cfg, b.p
    idx = np.flatnonzero(b.alive)
    if len(idx) == 0:
        return None
    w = _words(b, idx) if _needs_words(b) else None
    m = len(idx)
    if w is not None:
        plain = w["tok"].str.contains(p["word_start"]).to_numpy()
        n_plain = _counts(w["doc"][plain], m)
        plain_chars = _counts(w["doc"][plain], m, w["len"][plain])
        w.update(idx=idx, n_plain=n_plain)
    texts = b.texts.gather(idx)
    full = lambda v: _scatter(b.n, idx, v)  # noqa: E731

    def rule(name: str, fails, values) -> None:
        if name not in b.disabled:
            b.fail(name, full(fails), full(values))

    if w is None:
        n_plain = plain_chars = np.zeros(m, dtype=np.int64)  # read by no enabled rule
    rule("gopher_word_count", (n_plain < c.min_doc_words) | (n_plain > c.max_doc_words), n_plain.astype(float))
    if "gopher_mean_word_length" not in b.disabled:
        mean = _frac(plain_chars, n_plain)  # 0.0 without plain words, as the reference
        rule("gopher_mean_word_length", (n_plain == 0) | (mean < c.min_mean_word_length)
             | (mean > c.max_mean_word_length), mean)
    need_alpha = "gopher_alpha_words" not in b.disabled
    if not need_alpha and "gopher_symbol_ratio" in b.disabled:
        n_den = n_alpha = None  # no enabled rule reads the denominator words
    elif c.count_punctuation_as_words:
        n_den = w["count"]
        n_alpha = (_counts(w["doc"], m, w["tok"].str.contains(p["alpha"]).to_numpy().astype(np.int64))
                   if need_alpha else None)
    else:
        n_den = texts.str.count_matches(p["spaced_word"]).to_numpy().astype(np.int64)
        n_alpha = texts.str.count_matches(p["spaced_alpha_word"]).to_numpy().astype(np.int64) if need_alpha else None
    if "gopher_symbol_ratio" not in b.disabled:
        hashes = texts.str.count_matches("#", literal=True).to_numpy().astype(np.int64)
        dots = (texts.str.count_matches("...", literal=True).to_numpy().astype(np.int64)
                + texts.str.count_matches("…", literal=True).to_numpy().astype(np.int64))
        ratio = np.maximum(_frac(hashes, n_den), _frac(dots, n_den))
        rule("gopher_symbol_ratio", ratio > c.max_symbol_word_ratio, ratio)
    if not {"gopher_bullet_lines", "gopher_ellipsis_lines"} <= b.disabled:
        norm = texts.str.replace_all(p["line_break"], "\n")
        n_lines = (norm.str.count_matches("\n", literal=True).to_numpy().astype(np.int64) + 1
                   - norm.str.ends_with("\n").to_numpy().astype(np.int64))
        if "gopher_bullet_lines" not in b.disabled:
            r = _frac(norm.str.count_matches(p["bullet_line"]).to_numpy().astype(np.int64), n_lines)
            rule("gopher_bullet_lines", r > c.max_bullet_lines_ratio, r)
        if "gopher_ellipsis_lines" not in b.disabled:
            r = _frac(norm.str.count_matches(p["ellipsis_line"]).to_numpy().astype(np.int64), n_lines)
            rule("gopher_ellipsis_lines", r > c.max_ellipsis_lines_ratio, r)
    if need_alpha:
        r = _frac(n_alpha, n_den)
        rule("gopher_alpha_words", r < c.min_alpha_words_ratio, r)
    if "gopher_stop_words" not in b.disabled:
        stop = w["tok"].is_in(list(c.stop_words)).to_numpy()
        distinct = (pl.DataFrame({"d": w["doc"][stop], "t": w["tok"].filter(pl.Series(stop))})
                    .unique().get_column("d").to_numpy())
        n_stop = _counts(distinct, m)
        rule("gopher_stop_words", n_stop < c.min_stop_words, n_stop.astype(float))
    return w


def _scatter(n: int, idx: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=np.asarray(v).dtype)
    out[idx] = v
    return out


def _dup_items(items: pl.Series, doc: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """heuristics._duplicates per document: (items seen before in their document, their characters)."""
    df = pl.DataFrame({"d": doc, "x": items})
    dup = (~df.select(pl.struct("d", "x").is_first_distinct()).to_series()).to_numpy()
    chars = items.str.len_chars().to_numpy().astype(np.int64)
    return _counts(doc[dup], m), _counts(doc[dup], m, chars[dup])


def _short(b: _Batch, w: dict | None) -> np.ndarray:
    """Documents (all of the batch) too short for the repetition rules (`min_words_for_repetition`)."""
    c = b.cfg
    if w is None:  # no repetition rule is enabled
        return np.zeros(b.n, dtype=bool)
    return _scatter(b.n, w["idx"], (c.min_words_for_repetition > 0) & (w["n_plain"] < c.min_words_for_repetition))


def _repetition_lines(b: _Batch, w: dict | None) -> None:
    """Gopher paragraph and line duplication rules (their names start with gopher_dup_: a short
    document skips them too, as in the reference)."""
    c, p = b.cfg, b.p
    rules = ["gopher_dup_para_frac", "gopher_dup_para_char_frac", "gopher_dup_line_frac", "gopher_dup_line_char_frac"]
    idx = np.flatnonzero(b.alive & ~_short(b, w))
    if len(idx) == 0 or set(rules) <= b.disabled:
        return
    texts = b.texts.gather(idx)
    m = len(idx)
    n_chars = texts.str.len_chars().to_numpy().astype(np.int64)
    full = lambda v: _scatter(b.n, idx, v)  # noqa: E731
    para = texts.str.strip_chars(_whitespace()).str.extract_all(p["paragraph"])
    n_para = para.list.len().to_numpy().astype(np.int64)
    pd, pc = _dup_items(para.explode().drop_nulls(), np.repeat(np.arange(m), n_para), m)
    # re.split(r"\n+", text): split at "\n", dropping the empty pieces between two newlines.
    pieces = texts.str.split("\n")
    n_pieces = pieces.list.len().to_numpy().astype(np.int64)
    flat = pieces.explode()
    doc = np.repeat(np.arange(m), n_pieces)
    starts = np.concatenate([[0], np.cumsum(n_pieces)[:-1]])
    pos = np.arange(len(flat)) - np.repeat(starts, n_pieces)
    keep = (flat.str.len_bytes().to_numpy() > 0) | (pos == 0) | (pos == np.repeat(n_pieces, n_pieces) - 1)
    ld, lc = _dup_items(flat.filter(pl.Series(keep)), doc[keep], m)
    n_lines = _counts(doc[keep], m)
    for name, num, den, thr in [("gopher_dup_para_frac", pd, n_para, c.max_dup_para_frac),
                                ("gopher_dup_para_char_frac", pc, n_chars, c.max_dup_para_char_frac),
                                ("gopher_dup_line_frac", ld, n_lines, c.max_dup_line_frac),
                                ("gopher_dup_line_char_frac", lc, n_chars, c.max_dup_line_char_frac)]:
        if name not in b.disabled:
            r = _frac(num, den)
            b.fail(name, full(r > thr), full(r))


def _repeat_counts(key: np.ndarray) -> np.ndarray:
    """For each element, how many elements share its key (one sort)."""
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(key)
    sk = key[order]
    new = np.empty(len(sk), dtype=bool)
    new[0] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    out = np.empty(len(sk), dtype=np.int64)
    out[order] = np.bincount(group)[group]
    return out


def _per_doc(doc: np.ndarray, values: np.ndarray, m: int, how: str) -> np.ndarray:
    """Per-document max or sum of `values` (`doc` sorted ascending); 0 for documents without any."""
    out = np.zeros(m, dtype=np.int64)
    if len(doc) == 0:
        return out
    bounds = np.searchsorted(doc, np.arange(m + 1))
    has = np.flatnonzero(np.diff(bounds) > 0)
    fn = np.maximum if how == "max" else np.add
    out[has] = fn.reduceat(values, bounds[has])
    return out


def _dup_scan(pos: list[int], codes: list[int], chars: list[int], n: int) -> int:
    """heuristics.dup_ngram_char_frac's numerator on one document's candidate positions (every
    position of an n-gram that occurs twice or more, and maybe others): datatrove's left-to-right
    scan, which jumps n words past each repeat of an n-gram it has visited. Positions left out
    hold n-grams seen once: never counted, never a reason to jump."""
    seen: set[int] = set()
    total = next_free = 0
    for i, code, ch in zip(pos, codes, chars):
        if i < next_free:
            continue
        if code in seen:
            total += ch
            next_free = i + n
        else:
            seen.add(code)
    return total


def _top_exact(doc: np.ndarray, code: np.ndarray, pos: np.ndarray, chars: np.ndarray, docs: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For documents `docs`: (document, count of the most frequent n-gram, characters of its first
    occurrence); ties go to the n-gram seen first, as in the reference."""
    sel = np.isin(doc, docs)
    g = (pl.DataFrame({"d": doc[sel], "c": code[sel], "i": pos[sel], "ch": chars[sel]})
         .group_by("d", "c").agg(pl.len().alias("cnt"), pl.col("i").min(),
                                          pl.col("ch").get(pl.col("i").arg_min()))
         .filter(pl.col("cnt") >= 2)
         .sort("d", "cnt", "i", descending=[False, True, False])
         .unique("d", keep="first", maintain_order=True))
    return g["d"].to_numpy(), g["cnt"].to_numpy().astype(np.int64), g["ch"].to_numpy().astype(np.int64)


def _repetition_ngrams(b: _Batch, w: dict) -> None:
    """gopher_top_{n}gram and gopher_dup_{n}gram, in the reference's order.

    One pass over n = 2, 3, ...: a code per n-gram (a polynomial hash over 64-bit word hashes),
    and the start positions whose n-gram occurs twice or more in its document, found by one sort;
    only those can start a repeated n+1-gram. A document is measured exactly (grouping, or the
    skip-ahead scan) only when an upper bound from these counts could break its threshold; the
    others cannot fail the rule, so their value is never reported.
    """
    c = b.cfg
    tops = [n for n in sorted(c.max_top_ngram_char_frac) if f"gopher_top_{n}gram" not in b.disabled]
    dups = [n for n in sorted(c.max_dup_ngram_char_frac) if f"gopher_dup_{n}gram" not in b.disabled]
    if not tops and not dups:
        return
    docs = np.flatnonzero((b.alive & ~_short(b, w))[w["idx"]])  # positions in w's document numbering
    if len(docs) == 0:
        return
    chosen = np.zeros(len(w["count"]), dtype=bool)
    chosen[docs] = True
    sel = chosen[w["doc"]]
    counts = w["count"][docs]
    m = len(docs)
    doc = np.repeat(np.arange(m), counts)
    ids = w["tok"].filter(pl.Series(sel)).hash().to_numpy()  # equal words, equal ids (64-bit)
    lens = w["len"][sel]
    ends = np.cumsum(counts)  # flat end of each document's tokens
    n_chars = b.texts.gather(w["idx"][docs]).str.len_chars().to_numpy().astype(np.int64)
    full_idx = w["idx"][docs]
    deferred: list[tuple[int, np.ndarray]] = []  # dup rules that must wait for a later top rule
    last_top = max(tops, default=0)

    def apply(kind: str, n: int, val: np.ndarray) -> None:
        v = _scatter(b.n, full_idx, val)
        limit = (c.max_top_ngram_char_frac if kind == "top" else c.max_dup_ngram_char_frac)[n]
        b.fail(f"gopher_{kind}_{n}gram", v > limit, v)

    cand = np.arange(len(ids))  # flat start positions whose n-gram may repeat in its document
    code, chars = ids.copy(), lens.copy()
    for n in range(2, max([*tops, *dups]) + 1):
        live = b.alive[full_idx]  # documents that failed an earlier rule need no more work
        valid = (cand + n - 1 < ends[doc[cand]]) & live[doc[cand]]
        cand, code, chars = cand[valid], code[valid], chars[valid]
        with np.errstate(over="ignore"):
            code = code * _P + ids[cand + n - 1] + np.uint64(1)
            key = code + doc[cand].astype(np.uint64) * _DOC_MIX
        chars = chars + lens[cand + n - 1]
        reps = _repeat_counts(key)  # >= the n-gram's count in its document
        rep = reps >= 2
        cand, code, chars, reps = cand[rep], code[rep], chars[rep], reps[rep]
        dc = doc[cand]
        if n in tops:  # the reference runs every top rule (n ascending) before any dup rule
            bound = (_per_doc(dc, chars, m, "max") + n - 1) * _per_doc(dc, reps, m, "max")
            val = np.zeros(m)
            maybe = np.flatnonzero(_frac(bound, n_chars) > c.max_top_ngram_char_frac[n])
            if len(maybe):
                d, top, first_chars = _top_exact(dc, code, cand, chars, maybe)
                val[d] = _frac((first_chars + n - 1) * top, n_chars[d])
            apply("top", n, val)
        if n in dups:
            total = np.zeros(m, dtype=np.int64)
            bound = _per_doc(dc, chars, m, "sum")
            bounds = np.searchsorted(dc, np.arange(m + 1))
            for j in np.flatnonzero(_frac(bound, n_chars) > c.max_dup_ngram_char_frac[n]).tolist():
                lo, hi = bounds[j], bounds[j + 1]
                total[j] = _dup_scan(cand[lo:hi].tolist(), code[lo:hi].tolist(), chars[lo:hi].tolist(), n)
            deferred.append((n, _frac(total, n_chars)))
        if n >= last_top:  # every top rule has run: the dup rules so far, in order
            for dn, val in deferred:
                apply("dup", dn, val)
            deferred = []


def _c4(b: _Batch) -> None:
    """heuristics.c4_check on every alive document."""
    c, p = b.cfg, b.p
    idx = np.flatnonzero(b.alive)
    if len(idx) == 0:
        return
    if all(r in b.disabled for r in C4_RULES):
        b.keep(b.alive.copy())
        return
    m = len(idx)
    texts = b.texts.gather(idx)
    norm = texts.str.replace_all(p["line_break"], "\n")
    ends_nl = norm.str.ends_with("\n").to_numpy()
    pieces = norm.str.split("\n")
    n_pieces = pieces.list.len().to_numpy().astype(np.int64)
    # str.splitlines: no piece after a final line break
    last = np.cumsum(n_pieces) - 1
    drop = np.zeros(int(n_pieces.sum()), dtype=bool)
    drop[last[ends_nl]] = True
    lines = pieces.explode().filter(pl.Series(~drop)).str.strip_chars(_whitespace())
    doc = np.repeat(np.arange(m), n_pieces)[~drop]
    if c.c4_mode == "filter":
        nonempty = (lines.str.len_bytes() > 0).to_numpy()
        lines, doc = lines.filter(pl.Series(nonempty)), doc[nonempty]
    n_lines = _counts(doc, m)
    d = b.disabled
    failed = np.zeros(len(lines), dtype=bool)
    bad: dict[str, np.ndarray] = {}

    def line_rule(name: str, mask: np.ndarray) -> None:
        nonlocal failed
        if name in d:
            return
        new = mask & ~failed
        bad[name] = _counts(doc[new], m)
        failed |= new

    if "c4_long_word" not in d:
        long_line = (lines.str.len_chars() > c.c4_max_word_length).to_numpy()
        mask = np.zeros(len(lines), dtype=bool)
        for i in np.flatnonzero(long_line).tolist():
            mask[i] = any(len(x) > c.c4_max_word_length for x in lines[i].split())
        line_rule("c4_long_word", mask)
    cited = lines.str.replace_all(p["citation"], "")
    if "c4_terminal_punct" not in d:
        ends_ok = np.zeros(len(lines), dtype=bool)
        for t in ('.', '?', '!', '"', "'"):
            ends_ok |= cited.str.ends_with(t).to_numpy()
        line_rule("c4_terminal_punct", ~ends_ok | cited.str.ends_with("...").to_numpy())
    if "c4_min_words_per_line" not in d:
        line_rule("c4_min_words_per_line",
                  lines.str.count_matches(p["spaced_word"]).to_numpy() < c.c4_min_words_per_line)
    if "c4_javascript" not in d:
        line_rule("c4_javascript", cited.str.contains(p["javascript"]).to_numpy())
    kept = ~failed
    full = lambda v: _scatter(b.n, idx, v)  # noqa: E731
    if "c4_lorem_ipsum" not in d:
        lorem = _counts(doc[kept & lines.str.contains(p["lorem"]).to_numpy()], m) > 0
        b.fail("c4_lorem_ipsum", full(lorem), np.ones(b.n))
    if "c4_curly_bracket" not in d:
        curly = _frac(_counts(doc[kept & lines.str.contains("{", literal=True).to_numpy()], m), n_lines)
        b.fail("c4_curly_bracket", full(curly > c.c4_max_curly_line_frac), full(curly))
    if c.c4_mode == "filter":
        for rule in ("c4_long_word", "c4_terminal_punct", "c4_min_words_per_line", "c4_javascript"):
            if rule in bad:
                frac = _frac(bad[rule], n_lines)
                b.fail(rule, full(frac > c.c4_max_bad_line_frac), full(frac))
    if "c4_min_sentences" not in d:
        per_line = np.maximum(1, lines.str.count_matches(p["sentence_end"]).to_numpy().astype(np.int64))
        sentences = _counts(doc[kept], m, per_line[kept])
        b.fail("c4_min_sentences", full(sentences < c.c4_min_sentences), full(sentences.astype(float)))
    if c.c4_mode == "modify":
        joined = (pl.DataFrame({"d": doc[kept], "x": lines.filter(pl.Series(kept))})
                  .group_by("d", maintain_order=True).agg(pl.col("x").str.join("\n")))
        new = [""] * m
        for j, s in zip(joined["d"].to_list(), joined["x"].str.strip_chars(_whitespace()).to_list()):
            new[j] = s
        alive = b.alive[idx]
        b.new_text = b.new_text or [None] * b.n
        for j in np.flatnonzero(alive).tolist():
            b.new_text[idx[j]] = new[j]
        empty = np.array([not s for s in new])
        b.fail("c4_empty", full(empty), np.zeros(b.n))
    b.keep(b.alive.copy())


def check_batch(texts: list[str], cfg: HeuristicsConfig) -> list[tuple[str | None, float | None, str]]:
    """`check_text` for every text: (first failing rule or None, measured value, new text)."""
    out: list[tuple[str | None, float | None, str]] = []
    start = 0
    while start < len(texts):
        size, end = 0, start
        while end < len(texts) and (end == start or size + len(texts[end]) <= MAX_BATCH_CHARS):
            size += len(texts[end])
            end += 1
        out += _check(texts[start:end], cfg)
        start = end
    return out


def _check(texts: list[str], cfg: HeuristicsConfig) -> list[tuple[str | None, float | None, str]]:
    b = _Batch(texts, cfg)
    empty = (b.texts.str.strip_chars(_whitespace()).str.len_bytes() == 0).to_numpy()
    if "empty" in b.disabled:
        b.keep(empty)
    else:
        b.fail("empty", empty, np.zeros(b.n))
    w = _quality(b)
    _repetition_lines(b, w)
    if w is not None:
        _repetition_ngrams(b, w)
    _c4(b)
    new = b.new_text
    return [(r, v, t if new is None or new[i] is None or r not in (None, "c4_empty") else new[i])
            for i, (r, v, t) in enumerate(zip(b.reason, b.value, texts))]


def check_texts(texts: list[str], cfg: HeuristicsConfig, batched: bool = True
                ) -> list[tuple[str | None, float | None, str]]:
    """Every text's (rule, value, new text); `batched=False` runs the per-document reference."""
    return check_batch(texts, cfg) if batched else [check_text(t, cfg) for t in texts]


__all__ = ["check_batch", "check_texts", "doc_rules"]
