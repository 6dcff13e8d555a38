"""The planted noise kinds: one small generator each, from a seeded `random.Random` and host documents.

Each generator returns `(text, detail)`: the planted document and a short note for the label table
(the template used, the fragment's word count). What each kind imitates, and the step meant to catch
it, is in docs/NOISE.md. The generators never look at a filter's thresholds: their shapes follow what
web crawls hold (mirrored pages, edited re-posts, link farms, navigation-heavy pages, code dumps).
"""

from __future__ import annotations

import random
import re

import numpy as np

from lmdata.minhash import MinHashConfig, shingle_sets

WORD = re.compile(r"\S+")
ALPHA_WORD = re.compile(r"[A-Za-z]{3,12}")


def vocabulary(text: str, limit: int = 2000) -> list[str]:
    """Distinct alphabetic words of a host text (lowercased, first `limit` in order of appearance)."""
    seen: dict[str, None] = {}
    for w in ALPHA_WORD.findall(text):
        seen.setdefault(w.lower(), None)
        if len(seen) >= limit:
            break
    return list(seen) or ["data", "page", "item", "value", "record"]


def jaccard(a: str, b: str, config: MinHashConfig | None = None) -> float:
    """True Jaccard of two texts' shingle sets, shingled as dedup's MinHash shingles them."""
    sa, sb = shingle_sets([a, b], config or MinHashConfig())
    union = np.union1d(sa, sb).size
    return float(np.intersect1d(sa, sb, assume_unique=True).size / union) if union else 1.0


def edit_rate(target: float, ngram: int = 5) -> float:
    """Share of words to change so that word n-gram Jaccard lands near `target`: a shingle survives
    when none of its n words changed, s = (1 - p)^n, and J = s / (2 - s)."""
    survive = 2 * target / (1 + target)
    return 1 - survive ** (1 / ngram)


def rewrap(text: str, width: int) -> str:
    """Re-flow each paragraph (blank-line separated) to lines of about `width` characters."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        words, line, lines = para.split(), [], []
        for w in words:
            if line and sum(len(x) + 1 for x in line) + len(w) > width:
                lines.append(" ".join(line))
                line = []
            line.append(w)
        if line:
            lines.append(" ".join(line))
        out.append("\n".join(lines))
    return "\n\n".join(p for p in out if p)


def near_copy(text: str, target: float, rng: random.Random) -> tuple[str, str]:
    """An edited re-post: words replaced by other words of the document at the rate that aims at
    Jaccard `target`, lines re-wrapped to a random width."""
    vocab = vocabulary(text)
    p = edit_rate(target)
    changed = [0]

    def swap(m: re.Match) -> str:
        if rng.random() < p:
            changed[0] += 1
            return rng.choice(vocab)
        return m.group(0)

    width = rng.randint(60, 100)
    edited = rewrap(WORD.sub(swap, text), width)
    return edited, f"target {target:.2f}, {changed[0]} words changed, wrapped at {width}"


def fragment(text: str, rng: random.Random, words: tuple[int, int]) -> tuple[str, str]:
    """A truncated fragment: `words` (a range) consecutive words from a random place, cut mid-sentence."""
    toks = text.split()
    n = rng.randint(*words)
    start = rng.randrange(max(1, len(toks) - n))
    return " ".join(toks[start:start + n]), f"{min(n, len(toks))} words from word {start}"


def _domain(rng: random.Random, vocab: list[str]) -> str:
    return f"www.{rng.choice(vocab)}{rng.choice(vocab)}.{rng.choice(['com', 'net', 'org', 'info', 'biz'])}"


def boilerplate(rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    """Spam and boilerplate: keyword-stuffed ads, link lists, or templated listing pages."""
    style = rng.choice(["keyword_spam", "link_list", "templated_listing"])
    lines: list[str] = []
    if style == "keyword_spam":
        product = f"{rng.choice(vocab)} {rng.choice(vocab)}"
        templates = ["Buy cheap {p} online now!", "Best {p} deals, free shipping on every {p} order.",
                     "{p} {p} {p} - lowest price guaranteed.", "Click here for discount {p} today.",
                     "Top rated {p}. Order {p} now and save 50%!", "Looking for {p}? We have the best {p}."]
        for _ in range(rng.randint(15, 40)):
            lines.append(rng.choice(templates).format(p=product))
    elif style == "link_list":
        lines.append(f"Links for {rng.choice(vocab)} | Home | About | Contact | Sitemap")
        for _ in range(rng.randint(25, 60)):
            d = _domain(rng, vocab)
            lines.append(f"* http://{d}/{rng.choice(vocab)}/{rng.choice(vocab)}.html - {rng.choice(vocab).title()}")
    else:
        site = rng.choice(vocab).title()
        for _ in range(rng.randint(8, 20)):
            title = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 5))).title()
            lines += [f"{title}", f"Posted by admin on {rng.randint(1, 28)}/{rng.randint(1, 12)}/20{rng.randint(10, 24)}"
                      f" | {rng.randint(0, 99)} comments | Share on Facebook | Tweet this",
                      f"Read more... Copyright {site} 20{rng.randint(10, 24)}. All rights reserved.", ""]
    return "\n".join(lines).strip(), style


def markup_page(rng: random.Random, vocab: list[str], host_text: str) -> tuple[str, str]:
    """A markup-heavy HTML page: head, scripts, styles, navigation and footer around a short passage
    of a host document (what a crawler stores before text extraction)."""
    toks = host_text.split()
    n = rng.randint(40, 200)
    start = rng.randrange(max(1, len(toks) - n))
    passage = " ".join(toks[start:start + n])
    nav = "".join(f'<li><a href="/{w}/">{w.title()}</a></li>' for w in rng.sample(vocab, min(len(vocab), 12)))
    script = (f"var _gaq=_gaq||[];_gaq.push(['_setAccount','UA-{rng.randint(100000, 999999)}-1']);"
              "(function(){var ga=document.createElement('script');ga.async=true;})();")
    style = "body{margin:0;font-family:Arial}.nav li{display:inline;padding:4px}#footer{color:#999}"
    html = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{rng.choice(vocab).title()} - "
            f"{rng.choice(vocab).title()}</title><style>{style}</style><script>{script}</script></head>\n"
            f"<body><div class=\"nav\"><ul>{nav}</ul></div>\n<div id=\"content\"><article><h1>"
            f"{rng.choice(vocab).title()}</h1><p>{passage}</p></article></div>\n"
            f"<div id=\"footer\"><p>&copy; 20{rng.randint(10, 24)} {rng.choice(vocab).title()} | "
            f"<a href=\"/privacy\">Privacy</a> | <a href=\"/terms\">Terms</a></p></div></body></html>")
    return html, f"{n}-word passage"


def code_or_table(rng: random.Random, vocab: list[str]) -> tuple[str, str]:
    """Source code (Python or JavaScript-like) or a data table (CSV or pipe table)."""
    style = rng.choice(["python", "javascript", "csv", "pipe_table"])
    ident = lambda: "_".join(rng.sample(vocab, 2))  # noqa: E731
    lines: list[str] = []
    if style == "python":
        lines += ["import os", "import sys", ""]
        for _ in range(rng.randint(3, 8)):
            f, a, b = ident(), rng.choice(vocab), rng.choice(vocab)
            lines += [f"def {f}({a}, {b}=None):", f"    if {b} is None:", f"        {b} = {{}}",
                      f"    for i in range(len({a})):", f"        {b}[{a}[i]] = i * {rng.randint(2, 9)}",
                      f"    return {b}", ""]
    elif style == "javascript":
        for _ in range(rng.randint(3, 8)):
            f, a = ident(), rng.choice(vocab)
            lines += [f"function {f}({a}) {{", f"  var x = {a}.length;", f"  if (x > {rng.randint(1, 99)}) {{",
                      f"    return {a}.slice(0, {rng.randint(1, 9)});", "  }", f"  return {a};", "}", ""]
    else:
        cols = rng.sample(vocab, min(len(vocab), rng.randint(3, 6)))
        sep = "," if style == "csv" else " | "
        lines.append(sep.join(cols))
        if style == "pipe_table":
            lines.append(sep.join("---" for _ in cols))
        for r in range(rng.randint(20, 60)):
            lines.append(sep.join(str(r + 1) if k == 0 else f"{rng.uniform(0, 1000):.2f}" if k % 2 else
                                  rng.choice(vocab) for k in range(len(cols))))
    return "\n".join(lines).strip(), style
