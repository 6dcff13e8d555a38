"""MediaWiki markup → plain text with `mwparserfromhell`, and redirect / disambiguation detection.

Kept: prose, link texts, headings (as lines), list items (without their markers), the contents of
inline tags (bold, italic, span, code, ...). Dropped: templates (infoboxes, citations, navboxes —
except a few inline ones whose text is prose, such as `{{lang|fr|mot}}`), references, tables,
files/images, categories, interlanguage links, comments, magic words, and whole sections whose
heading names a list of references (`drop_sections`). HTML entities are decoded.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

import mwparserfromhell
from mwparserfromhell.nodes import (
    Argument,
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)

# `#REDIRECT [[X]]` in the languages of the larger wikis (case-insensitive).
REDIRECT_WORDS = ["REDIRECT", "REDIRECTION", "WEITERLEITUNG", "REDIRECCIÓN", "REDIRECIONAMENTO", "RINVIA",
                  "RIMANDO", "DOORVERWIJZING", "PRZEKIERUJ", "PATRZ", "ПЕРЕНАПРАВЛЕНИЕ", "ПЕРЕНАПР",
                  "ПЕРЕНАПРАВЛЕННЯ", "OMDIRIGERING", "UUDELLEENOHJAUS", "ÁTIRÁNYÍTÁS", "PŘESMĚRUJ",
                  "YÖNLENDİRME", "ALIH", "重定向", "転送", "リダイレクト", "넘겨주기", "تحويل", "הפניה"]
DISAMBIGUATION_TEMPLATES = ["disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "set index article",
                            "begriffsklärung", "homonymie", "desambiguación", "desambiguação", "disambigua",
                            "неоднозначность", "многозначность", "ujednoznacznienie", "doorverwijspagina",
                            "消歧义", "曖昧さ回避", "aimai"]
DROP_SECTIONS = ["references", "notes", "footnotes", "citations", "sources", "bibliography", "external links",
                 "further reading", "see also", "einzelnachweise", "literatur", "weblinks", "siehe auch",
                 "références", "notes et références", "liens externes", "voir aussi", "bibliographie",
                 "referencias", "enlaces externos", "véase también", "примечания", "литература", "ссылки"]
# Link namespaces whose targets are not prose (files, categories), in the larger wikis' languages.
_DROP_NAMESPACES = {"file", "image", "media", "category", "datei", "bild", "kategorie", "fichier", "catégorie",
                    "archivo", "imagen", "categoría", "ficheiro", "imagem", "categoria", "immagine",
                    "файл", "изображение", "категория", "plik", "grafika", "kategoria", "bestand", "categorie",
                    "afbeelding", "ファイル", "画像", "カテゴリ", "文件", "图像", "分类", "template", "wikipedia", "wp"}
_INTERLANG = re.compile(r"^:?[a-z]{2,3}(-[a-z]{2,8})*:", re.I)
# Inline templates whose last positional parameter is prose.
_INLINE_TEMPLATES = {"lang", "nowrap", "small", "nobr", "noitalic", "transl", "lang-en", "smallcaps", "sic", "abbr"}
# Tags whose contents are not prose.
_DROP_TAGS = {"ref", "references", "table", "gallery", "math", "chem", "ce", "score", "timeline", "graph",
              "imagemap", "templatedata", "includeonly", "mapframe", "maplink", "noinclude", "hiero", "syntaxhighlight",
              "source", "style", "script"}
_MAGIC = re.compile(r"__[A-Z]{3,}__")
_LEFTOVER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LEFTOVER_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACES = re.compile(r"[ \t]{2,}")
_SPACE_PUNCT = re.compile(r" +([,.;:!?])")
_BLANKS = re.compile(r"\n{3,}")
_TEMPLATE_NAME = re.compile(r"\{\{\s*(?:template:)?\s*([^{}|\n]+?)\s*(?:\||\}\})", re.I)


@lru_cache(maxsize=8)
def _redirect_re(words: tuple[str, ...]) -> re.Pattern:
    alt = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"^\s*#\s*(?:{alt})\s*:?\s*\[\[([^\]|\n]*)", re.I)


def redirect_target(text: str, words: list[str] = REDIRECT_WORDS) -> str | None:
    """The target title of a `#REDIRECT [[X]]` page (localized forms too), else None."""
    m = _redirect_re(tuple(words)).match(text[:1000])
    return m.group(1).strip() if m else None


def disambiguation_template(text: str, templates: list[str] = DISAMBIGUATION_TEMPLATES) -> str | None:
    """The template (or magic word) that marks a disambiguation page, else None."""
    if "__DISAMBIG__" in text:
        return "__DISAMBIG__"
    names = {t.casefold() for t in templates}
    for m in _TEMPLATE_NAME.finditer(text):
        name = m.group(1).replace("_", " ").strip().casefold()
        if name in names or name.endswith(" disambiguation"):
            return m.group(1).strip()
    return None


def _link_target_dropped(title: str) -> bool:
    title = title.strip()
    if ":" in title:
        ns = title.lstrip(":").split(":", 1)[0].strip().casefold()
        if ns in _DROP_NAMESPACES or (_INTERLANG.match(title) and not title.startswith(":")):
            return True
    return False


def _render(code) -> str:
    return "".join(_render_node(n) for n in code.nodes)


def _render_node(node) -> str:
    if isinstance(node, Text):
        return node.value
    if isinstance(node, HTMLEntity):
        return node.normalize()
    if isinstance(node, Wikilink):
        title = str(node.title)
        if _link_target_dropped(title):
            return ""
        if node.text is not None:
            return _render(node.text)
        return title.lstrip(":").split("#", 1)[0].strip() or title.strip()
    if isinstance(node, ExternalLink):
        return _render(node.title) if node.title is not None and node.brackets else (
            "" if node.brackets else str(node.url))
    if isinstance(node, Template):
        name = str(node.name).strip().casefold()
        positional = [p for p in node.params if not p.showkey]
        if (name in _INLINE_TEMPLATES or name.startswith("lang-")) and positional:
            return _render(positional[-1].value)
        return ""
    if isinstance(node, Tag):
        tag = str(node.tag).strip().casefold()
        if tag in _DROP_TAGS:
            return ""
        if tag == "br":
            return "\n"
        if node.wiki_markup and tag in ("li", "dt", "dd", "hr"):
            return ""  # list markers and rules: the item's text follows as plain text
        return _render(node.contents) if node.contents is not None else ""
    if isinstance(node, Heading):
        return "\n" + _render(node.title).strip() + "\n"
    if isinstance(node, Comment | Argument):
        return ""
    return str(node)


def _tidy(text: str) -> str:
    text = html.unescape(_MAGIC.sub("", text))
    for _ in range(5):  # unbalanced markup the parser left as text
        text, n = _LEFTOVER_TEMPLATE.subn("", text)
        if not n:
            break
    text = _LEFTOVER_LINK.sub(r"\1", text).replace("'''", "").replace("''", "")
    text = _EMPTY_PARENS.sub("", text)
    lines = [_SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", line)).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def wikitext_to_text(text: str, drop_sections: list[str] = DROP_SECTIONS) -> str:
    """Render a MediaWiki page as plain text; sections whose heading is in `drop_sections`
    (case-insensitive) are dropped with everything up to the next heading of the same level."""
    drop = {s.casefold() for s in drop_sections}
    out: list[str] = []
    skip_level: int | None = None
    for node in mwparserfromhell.parse(text).nodes:
        if isinstance(node, Heading):
            if skip_level is not None and node.level <= skip_level:
                skip_level = None
            if skip_level is None and _render(node.title).strip().casefold() in drop:
                skip_level = node.level
        if skip_level is None:
            out.append(_render_node(node))
    return _tidy("".join(out))
