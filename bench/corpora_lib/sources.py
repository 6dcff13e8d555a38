"""Real text found offline, as sentences and passages: the Britannica 1911 article and Milton's
Areopagitica, stdlib docstrings and pydoc topics (running prose only), Shakespeare's speeches,
Django's translated strings per locale."""

from __future__ import annotations

import io
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lmdata.samples import parse_po
from lmdata.text import decode_utf8, normalise_text

from .markup import NAME

BAD_PROSE = re.compile(r"[{}\[\]|=*#_\\`~^]|''|>>>|\(\)|<[A-Za-z/!]|&\w+;")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")


def read_text(path: Path) -> str:
    return normalise_text(decode_utf8(path.read_bytes(), "repair").text)


def sentences_of(paragraph: str) -> list[str]:
    return [s for s in SENTENCE_SPLIT.split(" ".join(paragraph.split())) if s]


STOP = {"the", "be", "to", "of", "and", "that", "have", "with", "is", "was", "a", "in", "it"}


def prose_ok(sentence: str) -> bool:
    """A running-prose sentence: no markup-like characters, mostly words, English function words,
    few digits (the Britannica's OCR'd bibliography of editions is lists, not prose)."""
    words = sentence.split()
    if not 6 <= len(words) <= 90 or BAD_PROSE.search(sentence) or sentence[-1] not in ".!?\"":
        return False
    alpha = sum(any(c.isalpha() for c in w) for w in words) / len(words)
    stops = len({w.lower().strip(",.;:") for w in words} & STOP)
    return alpha >= 0.9 and stops >= 2 and sum(c.isdigit() for c in sentence) < 0.05 * len(sentence)


def unique(sents: list[str]) -> list[str]:
    """Sentences in order, each once (docstrings of sibling functions repeat themselves)."""
    seen: set[str] = set()
    out = []
    for s in sents:
        key = " ".join(s.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def paragraphs_of(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def group_sentences(sents: list[str], rng: random.Random, lo: int, hi: int) -> list[list[str]]:
    """Consecutive sentences cut into articles of lo..hi sentences."""
    out, i = [], 0
    while i + lo <= len(sents):
        n = rng.randint(lo, hi)
        out.append(sents[i:i + n])
        i += n
    return out


def to_paragraphs(sents: list[str], rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(sents):
        n = rng.randint(3, 5)
        out.append(" ".join(sents[i:i + n]))
        i += n
    return out


@dataclass
class Prose:
    """One article's worth of real prose: a title, paragraphs and where it came from."""

    title: str
    paragraphs: list[str]
    origin: str


def britannica_and_milton(raw: Path, rng: random.Random) -> list[Prose]:
    out: list[Prose] = []
    brit = read_text(raw / "shakespeare/shksprdata/ancillary/britannica-11th.txt")
    brit = "\n".join(ln for ln in brit.splitlines() if not re.match(r"^(#|p\.\d+:\d+\s*$)", ln.strip()))
    milton = read_text(raw / "shakespeare/miltondata/texts/areopagitica_gut.txt")
    m = re.search(r"\*\*\* ?START.*?\n(.*?)\*\*\* ?END", milton, re.S)
    milton = m.group(1) if m else milton
    for origin, text in (("britannica", brit), ("areopagitica", milton)):
        sents = [s.replace("--", " -- ") for p in paragraphs_of(text) for s in sentences_of(p)]
        sents = unique([" ".join(s.split()) for s in sents if prose_ok(s)])
        for k, chunk in enumerate(group_sentences(sents, rng, 12, 20)):
            names = [n for s in chunk for n in NAME.findall(s) if n not in ("Shakespeare", "Lords")]
            title = max(sorted(set(names)), key=names.count) if names else f"{origin.title()} {k}"
            out.append(Prose(title, to_paragraphs(chunk, rng), f"{origin}:{k}"))
    return out


def stdlib_prose(raw: Path, rng: random.Random) -> list[Prose]:
    """Docstring prose of stdlib modules and prose paragraphs of pydoc topics, one article each."""
    import importlib
    import inspect
    import pkgutil
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    out: list[Prose] = []
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
            "pydoc_data", "ensurepip", "venv", "__main__"}
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names
                   and m.name not in skip and not m.name.startswith("_"))
    for name in names:
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - some stdlib modules refuse to import on this platform
            continue
        objs = [mod] + [o for _, o in inspect.getmembers(mod) if (inspect.isclass(o) or inspect.isfunction(o))
                        and getattr(o, "__module__", None) == name]
        sents = [s for o in objs for p in paragraphs_of(inspect.getdoc(o) or "") for s in sentences_of(p)]
        sents = unique([s for s in sents if prose_ok(s)])
        if len(sents) >= 8:
            out.append(Prose(f"{name} (Python module)", to_paragraphs(sents[:20], rng), f"docstrings:{name}"))
    for line in (raw / "pydoc_topics.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sents = unique([s for p in paragraphs_of(row["text"]) for s in sentences_of(p) if prose_ok(s)])
        if len(sents) >= 8:
            out.append(Prose(f"{row['topic']} (Python)", to_paragraphs(sents[:20], rng), f"topics:{row['topic']}"))
    return out


def play_speeches(raw: Path) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(play title, [(speaker, lines)]) for the modern-spelling plays."""
    plays = []
    for path in sorted((raw / "shakespeare/shksprdata/texts").glob("*_gut.txt")):
        text = read_text(path)
        title = re.sub(r"\b(I[IV]I*|VI+)\b", lambda m: m.group(1).upper(),
                       text.strip().splitlines()[0].strip().title(), flags=re.I)
        speeches = []
        for block in re.split(r"\n\s*\n", text):
            lines = [ln.strip() for ln in block.strip().splitlines()]
            if len(lines) >= 2 and re.fullmatch(r"[A-Z][A-Za-z. ]{1,24}\.", lines[0]) and \
                    not BAD_PROSE.search(" ".join(lines[1:])):
                speeches.append((lines[0], lines[1:]))
        if len(speeches) > 40:
            plays.append((title, speeches))
    return plays


def django_strings(raw: Path) -> dict[str, list[tuple[str, str]]]:
    """(msgid, msgstr) per locale, translated strings only (placeholders and markup left out)."""
    by_locale: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((raw / "django").rglob("LC_MESSAGES/*.po")):
        locale = path.parent.parent.name
        if locale.startswith("en"):
            continue
        for msgid, msgstr in parse_po(read_text(path)):
            msgstr = " ".join(msgstr.split())
            if msgstr and msgstr != msgid and not re.search(r"[%{}<>&_\\]", msgstr + msgid):
                by_locale.setdefault(locale, []).append((msgid, msgstr))
    return by_locale
