"""Markup around real prose for the mixed corpus: MediaWiki pages (articles, redirects,
disambiguation pages, template stubs) and HTML pages with site boilerplate. The prose is passed
in; nothing here invents sentences, only markup, titles, citations and navigation."""

from __future__ import annotations

import html
import random
import re

NAME = re.compile(r"(?<=[a-z,;]\s)([A-Z][a-z]{3,}(?: [A-Z][a-z]{3,})?)\b")
YEAR = re.compile(r"\b(1[0-9]{3})\b")
SECTIONS = ["Early history", "Background", "Life", "Career", "Works", "Reception", "Legacy", "Overview",
            "Details", "Criticism", "Later years", "Description", "Usage", "Design"]
BOOKS = [("Lee", "Sidney", "A Life of William Shakespeare", "Smith, Elder &amp; Co.", 1898),
         ("Chambers", "E. K.", "William Shakespeare: A Study of Facts and Problems", "Clarendon Press", 1930),
         ("Masson", "David", "The Life of John Milton", "Macmillan", 1881),
         ("Halliwell-Phillipps", "J. O.", "Outlines of the Life of Shakespeare", "Longmans, Green", 1887),
         ("van Rossum", "Guido", "The Python Language Reference", "Python Software Foundation", 2023)]
SITES = [("The Globe Reader", "globe-reader.example"), ("Open Stage Texts", "openstage.example"),
         ("Bardic Library", "bardic-library.example")]


def link_names(text: str, seed: str, rate: float = 0.35) -> str:
    """Wrap some proper names in [[links]] (a few piped) the way editors link first mentions. Each
    name's choice depends on the name only, so a copy with other words changed links alike."""
    seen: set[str] = set()

    def sub(m: re.Match) -> str:
        name = m.group(1)
        r = random.Random(f"{seed}:{name}").random()
        if name in seen or r > rate:
            return name
        seen.add(name)
        if r < 0.07:
            return f"[[{name} (disambiguation)|{name}]]"
        if r < 0.12:
            return f"[[{name} family|{name}]]"
        return f"[[{name}]]"

    return NAME.sub(sub, text)


def cite(rng: random.Random, title: str) -> str:
    r = rng.random()
    if r < 0.35:
        last, first, book, pub, year = rng.choice(BOOKS)
        return (f"<ref>{{{{cite book |last={last} |first={first} |title={book} |publisher={pub} "
                f"|year={year} |page={rng.randint(3, 480)}}}}}</ref>")
    if r < 0.55:
        return '<ref name="eb1911" />' if rng.random() < 0.5 else \
            '<ref name="eb1911">{{cite EB1911 |wstitle=Shakespeare, William |volume=24 |pages=772&ndash;797}}</ref>'
    if r < 0.8:
        slug = re.sub(r"\W+", "-", title.lower()).strip("-")
        return (f"<ref>{{{{cite web |url=https://www.example.org/archive/{slug}/{rng.randint(10, 999)} "
                f"|title={title} &amp; its sources |website=Example Archive |access-date=2019-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}}}}}</ref>")
    if r < 0.92:
        last, _, _, _, year = rng.choice(BOOKS)
        return f"{{{{sfn|{last}|{year}|p={rng.randint(3, 480)}}}}}"
    return "{{citation needed|date=March 2021}}"


def add_refs(paragraph: str, seed: str, title: str) -> str:
    """Citations after some sentences; sentence k's choice depends on k only (copies cite alike)."""
    parts = re.split(r"(?<=[.!?])(\s)", paragraph)
    out = []
    for k, part in enumerate(parts):
        out.append(part)
        if k % 2 == 0 and part.strip():
            rng = random.Random(f"{seed}:{k}")
            if rng.random() < 0.4:
                out.append(cite(rng, title))
    return "".join(out)


def infobox(title: str, origin: str, rng: random.Random) -> str:
    if origin.startswith(("docstrings", "topics")):
        return ("{{Infobox software\n| name = " + title + "\n| developer = [[Python Software Foundation]]\n"
                "| programming language = [[Python (programming language)|Python]]\n"
                f"| released = {{{{Start date|{rng.randint(1994, 2012)}}}}}\n"
                "| license = [[Python Software Foundation License|PSF License]]\n}}")
    return ("{{Infobox person\n| name = " + title + f"\n| image = {title.replace(' ', '_')}.jpg\n"
            f"| birth_date = {{{{birth date|{rng.randint(1520, 1620)}|{rng.randint(1, 12)}|{rng.randint(1, 28)}}}}}\n"
            "| birth_place = [[Stratford-upon-Avon]], [[Warwickshire]], England\n"
            "| occupation = {{hlist|Playwright|poet|actor}}\n| spouse = \n}}")


def table(paragraphs: list[str], rng: random.Random) -> str | None:
    rows = []
    for p in paragraphs:
        for s in re.split(r"(?<=[.!?]) ", p):
            m = YEAR.search(s)
            if m and len(rows) < 6:
                words = s.split()[:8]
                rows.append((m.group(1), " ".join(words).rstrip(",;:")))
    if len(rows) < 2:
        return None
    body = "".join(f"|-\n| {y} || {e}\n" for y, e in rows)
    return f'{{| class="wikitable sortable"\n|+ Timeline\n! Year !! Event\n{body}|}}'


def wiki_article(title: str, paragraphs: list[str], origin: str, rng: random.Random) -> str:
    """A MediaWiki article: infobox, bold lead, linked names, refs, sections, maybe a table and a file."""
    paras = [add_refs(link_names(html.escape(p, quote=False), title), f"{title}:{k}", title)
             for k, p in enumerate(paragraphs)]  # & < > written as entities, as editors must
    first = paras[0].split(" ", 2)
    paras[0] = f"'''{first[0]} {first[1]}''' {first[2]}" if len(first) == 3 else paras[0]
    out = []
    if rng.random() < 0.6:
        out.append(f"{{{{Short description|{title}}}}}")
    out.append(infobox(title, origin, rng))
    out.append(paras[0])
    rest = paras[1:]
    n_sec = min(len(rest), rng.randint(2, 3))
    heads = rng.sample(SECTIONS, n_sec) if n_sec else []
    per = max(1, len(rest) // max(1, n_sec))
    for k, head in enumerate(heads):
        chunk = rest[k * per:(k + 1) * per] if k < n_sec - 1 else rest[k * per:]
        out.append(f"== {head} ==")
        if k == 0 and rng.random() < 0.5:
            caption = " ".join(re.sub(r"<ref.*?(</ref>|/>)|\{\{.*?\}\}|\[\[|\]\]", "", chunk[0]).split()[:6])
            out.append(f"[[File:{title.replace(' ', '_')}_{rng.randint(1, 99)}.jpg|thumb|right|220px|{caption}]]")
        out.extend(chunk)
        if k == 1 and rng.random() < 0.4:
            t = table(paragraphs, rng)
            if t:
                out.append(t)
    names = sorted(set(NAME.findall(" ".join(paragraphs))))[:4]
    if names and rng.random() < 0.6:
        out.append("== See also ==\n" + "\n".join(f"* [[{n}]]" for n in names[:rng.randint(2, 4)]))
    out.append("== References ==\n{{Reflist}}")
    if rng.random() < 0.4:
        slug = url_slug(title)
        out.append(f"== External links ==\n* [https://www.example.org/{slug} {title} at Example Archive]\n"
                   f"* {{{{Commons category|{title}}}}}")
    out.append(f"{{{{Authority control}}}}\n{{{{DEFAULTSORT:{title}}}}}")
    cats = ["English dramatists and playwrights", "16th-century English writers", "People from Stratford-upon-Avon",
            "Python (programming language)", "Articles containing Latin-language text", "1911 Britannica"]
    out.append("\n".join(f"[[Category:{c}]]" for c in rng.sample(cats, rng.randint(2, 4))))
    return "\n\n".join(out) + "\n"


def url_slug(title: str) -> str:
    return re.sub(r"\s+", "_", title.strip())


def redirect_page(target: str, rng: random.Random) -> str:
    word = rng.choice(["#REDIRECT", "#REDIRECT", "#redirect", "#Redirect"])
    sep = rng.choice([" ", " ", ""])
    anchor = f"#{rng.choice(SECTIONS)}" if rng.random() < 0.15 else ""
    text = f"{word}{sep}[[{target}{anchor}]]"
    r = rng.random()
    if r < 0.3:
        text += "\n\n{{R from alternative name}}"
    elif r < 0.5:
        text += "\n\n{{Redirect category shell|\n{{R from move}}\n{{R from other capitalisation}}\n}}"
    if rng.random() < 0.2:
        text += "\n\n[[Category:Redirects from short names]]"
    return text + "\n"


def disambiguation_page(name: str, entries: list[tuple[str, str]], rng: random.Random) -> str:
    lines = [f"'''{name}''' may refer to:", ""]
    lines += [f"* [[{t}]], {d}" for t, d in entries]
    if rng.random() < 0.5:
        lines += ["", "== See also ==", f"* {{{{lookfrom|{name}}}}}", f"* {{{{intitle|{name}}}}}"]
    lines += ["", rng.choice(["{{disambiguation}}", "{{Disambiguation}}", "{{disambig}}", "{{dab}}",
                              f"{{{{hndis|{name}}}}}"])]
    return "\n".join(lines) + "\n"


def template_stub(title: str, sentence: str, rng: random.Random) -> str:
    """A stub: infobox, one real sentence, stub and navbox templates, categories."""
    return (f"{{{{Infobox settlement\n| name = {title}\n| settlement_type = Village\n"
            f"| subdivision_name = [[England]]\n| population_total = {rng.randint(200, 9000)}\n}}}}\n\n"
            f"'''{title}''' {sentence}{cite(rng, title)}\n\n"
            "{{Warwickshire-geo-stub}}\n{{Navbox\n| name = Warwickshire\n| title = Places in [[Warwickshire]]\n"
            "| list1 = [[Stratford-upon-Avon]] &middot; [[Snitterfield]] &middot; [[Wilmcote]]\n}}\n"
            f"{{{{Authority control}}}}\n\n[[Category:Villages in Warwickshire]]\n")


def html_page(title: str, play: str, speeches: list[tuple[str, list[str]]], rng: random.Random) -> str:
    """A reading-site page: head scripts and styles, navigation, cookie banner, the scene, footer."""
    site, domain = rng.choice(SITES)
    esc = html.escape
    body = "\n".join(f'<p class="speech"><b class="speaker">{esc(who)}</b><br>\n' +
                     "<br>\n".join(esc(ln) for ln in lines) + "</p>" for who, lines in speeches)
    nav = "".join(f'<li><a href="/{s.lower()}">{s}</a></li>' for s in
                  ["Home", "Plays", "Poems", "Sonnets", "Search", "About us", "Donate"])
    related = "".join(f'<li><a href="/related/{k}">More from {esc(play)} &raquo; part {k}</a></li>'
                      for k in rng.sample(range(1, 40), 4))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} | {site}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/site.css?v={rng.randint(100, 999)}">
<script>window.dataLayer = window.dataLayer || []; function gtag(){{dataLayer.push(arguments);}}
gtag('js', new Date()); gtag('config', 'G-{rng.randint(10**6, 10**7)}');</script>
<style>.speech {{ margin: 0 0 1em 0 }} .speaker {{ font-variant: small-caps }}</style>
</head><body>
<header><div class="logo"><a href="/">{site}</a></div><nav><ul>{nav}</ul></nav></header>
<div class="cookie-banner">We use cookies to improve your experience on our site. By continuing to browse you
agree to our use of cookies. <a href="/privacy">Learn more</a> <button>Accept</button></div>
<div class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/plays">Plays</a> &rsaquo; {esc(play)}</div>
<main><article>
<h1>{esc(title)}</h1>
<p class="byline">From <i>{esc(play)}</i> by William Shakespeare. Public domain text.</p>
{body}
</article>
<aside><h3>Related pages</h3><ul>{related}</ul></aside></main>
<footer><p>&copy; {rng.randint(2015, 2024)} {site} &middot; <a href="https://{domain}/privacy">Privacy policy</a>
&middot; <a href="https://{domain}/terms">Terms of use</a> &middot; <a href="/contact">Contact</a></p>
<p>Share: <a href="#">Facebook</a> | <a href="#">Twitter</a> | <a href="#">Email</a></p></footer>
<script src="/static/app.js" async></script></body></html>
"""


def pydoc_page(name: str) -> str | None:
    """The stdlib's own HTML rendering of a module's documentation (pydoc.HTMLDoc), with a navbar."""
    import importlib
    import pydoc

    try:
        mod = importlib.import_module(name)
        doc = pydoc.HTMLDoc()
        contents = doc.docmodule(mod)
    except Exception:  # noqa: BLE001 - a module that cannot be documented here is skipped
        return None
    nav = ('<div style="float:left">Python 3 &nbsp;[<a href="index.html">Module Index</a> : '
           '<a href="topics.html">Topics</a> : <a href="keywords.html">Keywords</a>]</div>'
           '<div style="float:right"><form action="search" method="get"><input type="text" name="key" size="15">'
           '<input type="submit" value="Search"></form></div><div style="clear:both"></div><hr>')
    return doc.page(f"module {name}", nav + contents)
