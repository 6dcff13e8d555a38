"""A labelled mixed corpus shaped like a user's own JSONL, built only from real text found offline.

Real text: the fetched sample (Britannica 1911 article, Milton's prose Areopagitica, Shakespeare's
plays, Django .po catalogs in ~99 languages) and Python's own stdlib (docstrings, pydoc topics,
`pydoc.HTMLDoc` pages). Around it: MediaWiki markup (infoboxes, citation templates, links, refs,
tables, files, categories, entities), redirect and disambiguation pages, stubs made of templates,
HTML pages with navigation/cookie/footer boilerplate, short English texts, short and long
non-English texts, and planted exact and near duplicates. Every record has `id`, `source`,
`title`, `url`, `text`, and labels the pipeline never reads: `plant_kind`, `plant_lang`,
`plant_of` (the id a planted copy duplicates), `plant_variant`, `plant_jaccard` (word 5-gram
Jaccard of the copy's prose with the original's, normalised as dedup normalises).
Deterministic for a given seed and Python version.
"""

from __future__ import annotations

import json
import random
import re
import sys
import unicodedata
from pathlib import Path

from .markup import (
    NAME,
    disambiguation_page,
    html_page,
    pydoc_page,
    redirect_page,
    template_stub,
    wiki_article,
)
from .sources import britannica_and_milton, django_strings, play_speeches, sentences_of, stdlib_prose


def shingles(text: str, n: int = 5) -> set[str]:
    """Word 5-grams after lowercasing and turning punctuation into spaces, as dedup's MinHash does."""
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    words = text.split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def edit_words(paragraphs: list[str], rng: random.Random, target: float) -> tuple[list[str], float]:
    """Change spread-out words (swap for another word of the text, or delete; line breaks kept)
    until the word 5-gram Jaccard with the original falls to about `target`."""
    tokens = [re.split(r"(\s+)", p) for p in paragraphs]
    order = [(i, j) for i, t in enumerate(tokens) for j in range(0, len(t), 2) if t[j]]
    vocab = sorted({w for t in tokens for w in t[::2] if w.isalpha() and len(w) > 3})
    original = "\n\n".join(paragraphs)
    rng.shuffle(order)
    best: tuple[list[str], float] | None = None
    for i, j in order:
        tokens[i][j] = rng.choice(vocab) if rng.random() < 0.8 else ""
        paras = ["".join(t) for t in tokens]
        j_now = jaccard(original, "\n\n".join(paras))
        if j_now < target:
            return best if best and best[1] - target < target - j_now else (paras, j_now)
        best = (paras, j_now)
    return best or (paragraphs, 1.0)


def rewrap(paragraph: str, rng: random.Random) -> str:
    width = rng.randint(50, 90)
    lines, cur = [], ""
    for w in paragraph.split():
        if cur and len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return "\n".join(lines + [cur])


def entities(text: str) -> str:
    """Britannica's double hyphens and year ranges as the HTML entities wiki sources use."""
    text = re.sub(r"(\d{4})\s*--\s*(\d{2,4})", r"\1&ndash;\2", text)
    return text.replace(" -- ", "&nbsp;&mdash; ")


SIZES = {  # records per kind; articles: as many as the real prose allows (about one per 15 sentences)
    "full": dict(redirects=250, disambig=50, stubs=50, pages=250, pydoc=40, short_en=1200, short_foreign=1200,
                 long_foreign=300, exact=80, near=150),
    "quick": dict(redirects=60, disambig=12, stubs=12, pages=60, pydoc=8, short_en=250, short_foreign=250,
                  long_foreign=70, exact=20, near=36),
}
GLOSSES = ["a play by William Shakespeare", "a village in Warwickshire, England", "a Python standard library module",
           "an English surname", "a 17th-century pamphlet", "a character in several plays", "a ship of the line"]
WIKI_URL = "https://en.wikipedia.org/wiki/"


class CorpusBuilder:
    """Collects records with unique ids and the labels the bench joins back after the run."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.seed = seed
        self.records: list[dict] = []
        self.ids: set[str] = set()
        self.texts: set[str] = set()

    def add(self, source: str, kind: str, title: str, url: str, text: str, lang: str = "en",
            of: str | None = None, variant: str | None = None, jac: float | None = None) -> dict:
        while True:
            rid = f"{source}-{self.rng.randrange(16 ** 10):010x}"
            if rid not in self.ids:
                break
        self.ids.add(rid)
        rec = {"id": rid, "source": source, "title": title, "url": url, "text": text, "plant_kind": kind,
               "plant_lang": lang, "plant_of": of, "plant_variant": variant,
               "plant_jaccard": None if jac is None else round(jac, 4)}
        self.records.append(rec)
        return rec


def build_corpus(raw: Path, seed: int = 0, quick: bool = False) -> list[dict]:
    """Every record of the mixed corpus, shuffled (deterministic for a seed)."""
    b = CorpusBuilder(seed)
    rng = b.rng
    n = SIZES["quick" if quick else "full"]
    prose = britannica_and_milton(raw, random.Random(seed)) + stdlib_prose(raw, random.Random(seed + 1))
    prose = prose[::3] if quick else prose
    originals: list[tuple[dict, list[str], object]] = []  # (record, prose units, renderer)
    seen_titles: set[str] = set()
    for k, p in enumerate(prose):
        title = p.title if p.title not in seen_titles else f"{p.title} ({p.origin.split(':')[0]} {k})"
        seen_titles.add(title)

        def render(units: list[str], p=p, title=title) -> str:
            return entities(wiki_article(title, units, p.origin, random.Random(f"{seed}:{p.origin}")))

        rec = b.add("wiki", "article", title, WIKI_URL + title.replace(" ", "_"), render(p.paragraphs))
        originals.append((rec, p.paragraphs, render))
    titles = sorted(seen_titles)
    for _ in range(n["redirects"]):
        target = rng.choice(titles)
        alias = rng.choice([target.lower(), target.upper(), target.replace(" ", "-"), f"{target}s",
                            " ".join(reversed(target.split()))])
        b.add("wiki", "redirect", alias, WIKI_URL + alias.replace(" ", "_"), redirect_page(target, rng))
    words = sorted({w for p in prose for para in p.paragraphs for w in NAME.findall(para) if " " not in w})
    for _ in range(n["disambig"]):
        name = rng.choice(words)
        entries = [(t, rng.choice(GLOSSES)) for t in rng.sample(titles, rng.randint(3, 6))]
        b.add("wiki", "disambiguation", name, WIKI_URL + name, disambiguation_page(name, entries, rng))
    all_sents = [s for p in prose for para in p.paragraphs for s in sentences_of(para)]
    for _ in range(n["stubs"]):
        name = rng.choice(words)
        b.add("wiki", "template_page", name, WIKI_URL + name, template_stub(name, rng.choice(all_sents), rng))
    plays = play_speeches(raw)
    per_play = -(-n["pages"] // len(plays))
    for title, speeches in plays:
        step = max(1, len(speeches) // per_play)
        for k in range(per_play):
            chunk, size, i = [], 0, k * step
            while i < len(speeches) and size < rng.randint(1200, 3000):
                chunk.append(speeches[i])
                size += sum(len(ln) for ln in speeches[i][1])
                i += 1
            if len(chunk) < 3 or sum(r["plant_kind"] == "html_page" for r in b.records) >= n["pages"]:
                continue
            page_title = f"{title}, part {k + 1}"

            def render(units: list[str], chunk=chunk, page_title=page_title, title=title) -> str:
                sp = [(who, u.split("\n")) for (who, _), u in zip(chunk, units)]
                return html_page(page_title, title, sp, random.Random(f"{seed}:{page_title}"))

            units = ["\n".join(lines) for _, lines in chunk]
            rec = b.add("web", "html_page", page_title, f"https://reader.example/{title.replace(' ', '-')}/{k + 1}",
                        render(units))
            originals.append((rec, units, render))
    candidates = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in
                        {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"})
    pages = 0
    for name in random.Random(seed).sample(candidates, len(candidates)):
        if pages >= n["pydoc"]:
            break
        page = pydoc_page(name)
        if page and 4_000 <= len(page) <= 60_000 and not re.search(r"\{\{|\[\[|'''|\{\|", page):
            b.add("web", "html_pydoc", f"Python: module {name}", f"https://docs.example/py/{name}.html", page)
            pages += 1
    add_short_texts(b, raw, plays, n)
    add_planted(b, originals, n)
    rng.shuffle(b.records)
    return b.records


def add_short_texts(b: CorpusBuilder, raw: Path, plays: list, n: dict) -> None:
    rng = b.rng
    strings = django_strings(raw)
    english = sorted({i for pairs in strings.values() for i, _ in pairs if len(i.split()) >= 3})
    made = 0
    while made < n["short_en"]:
        if rng.random() < 0.7:
            play, speeches = rng.choice(plays)
            who, lines = rng.choice(speeches)
            j = rng.randrange(len(lines))
            q = " ".join(lines[j:j + rng.randint(1, 2)])
            if len(q.split()) < 4:
                continue
            text = rng.choice([f"\u201c{q}\u201d \u2014 {play}", q, f"{q} ({who.rstrip('.')}, {play})"])
        else:
            text = rng.choice(english)
        if text in b.texts:
            continue
        b.texts.add(text)
        b.add("quotes", "short_en", text[:40], f"https://quotes.example/{len(b.records)}", text)
        made += 1
    locales = sorted(loc for loc, pairs in strings.items() if len(pairs) >= 40)
    made = 0
    while made < n["short_foreign"]:
        loc = rng.choice(locales)
        text = rng.choice(strings[loc])[1]
        if len(text.split()) < 3 or text in b.texts:
            continue
        b.texts.add(text)
        b.add("intl", "short_foreign", text[:40], f"https://intl.example/{loc}/{made}", text, lang=loc)
        made += 1
    offsets = dict.fromkeys(locales, 0)
    made = 0
    while made < n["long_foreign"] and locales:
        loc = rng.choice(locales)
        pool = [s for _, s in strings[loc] if len(s.split()) >= 3]
        take = rng.randint(25, 60)
        chunk = pool[offsets[loc]:offsets[loc] + take]
        offsets[loc] += take
        if len(chunk) < 25:
            locales.remove(loc)
            continue
        sents = [s if s[-1] in ".!?\u3002" else s + "." for s in chunk]
        paras = [" ".join(sents[i:i + 5]) for i in range(0, len(sents), 5)]
        b.add("intl", "long_foreign", f"{loc} text {made}", f"https://intl.example/{loc}/long/{made}",
              "\n\n".join(paras) + "\n", lang=loc)
        made += 1


def add_planted(b: CorpusBuilder, originals: list, n: dict) -> None:
    """Exact copies and near copies (re-wrapped; a few words changed; many words changed) of
    articles and pages, each labelled with the id it copies and its measured prose Jaccard."""
    rng = b.rng
    picks = rng.sample(originals, min(len(originals), n["exact"] + n["near"]))
    for k, (rec, units, render) in enumerate(picks):
        if k < n["exact"]:
            url = rec["url"].replace("https://en.", "https://en.m.") if rec["source"] == "wiki" else rec["url"] + "?ref=feed"
            b.add(rec["source"], "dup_exact", rec["title"], url, rec["text"], of=rec["id"], variant="exact", jac=1.0)
            continue
        variant = ("rewrap", "light_edit", "heavy_edit")[k % 3]
        crng = random.Random(f"{b.seed}:plant:{rec['id']}")
        if variant == "rewrap":
            new_units, jac = [rewrap(u, crng) for u in units], 1.0
        else:
            target = crng.uniform(0.85, 0.97) if variant == "light_edit" else crng.uniform(0.75, 0.85)
            new_units, jac = edit_words(units, crng, target)
        b.add(rec["source"], "dup_near", rec["title"], rec["url"] + "#copy", render(new_units), of=rec["id"],
              variant=variant, jac=jaccard("\n\n".join(units), "\n\n".join(new_units)) if variant != "rewrap" else jac)


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
