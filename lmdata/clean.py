"""Clean: markup → text and mojibake repair, between ingest and dedup.

Per document (per text field), in order: `ftfy` repairs mojibake; a MediaWiki page that is a
redirect or a disambiguation page is rejected (`redirect`, `disambiguation`); MediaWiki markup is
rendered to plain text with `mwparserfromhell` (templates, references, tables, files and categories
dropped; links → their text; entities decoded; reference sections dropped); HTML is reduced to its
main text with `trafilatura` (FineWeb's extractor). A document left empty is rejected
(`empty_after_clean`). Which markup a document has comes from its source spec (`markup:` in
`ingest.<dataset>.sources`, recorded in `meta.markup`), else `clean.markup` (`auto` detects it).

Every changed row records what changed it in the `clean` column: a JSON map of step → bytes
removed (`{}` when untouched); `id` stays, `text`, `n_bytes` and `content_hash` follow the new text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from lmdata.errors import ConfigError
from lmdata.runner import ConservationError
from lmdata.shards import REJECTED_DIR, read_shard, write_shard
from lmdata.stage import StepResult, add_reason
from lmdata.text import hash_hex, normalise_text, record_text
from lmdata.wikitext import (
    DISAMBIGUATION_TEMPLATES,
    DROP_SECTIONS,
    REDIRECT_WORDS,
    disambiguation_template,
    redirect_target,
    wikitext_to_text,
)

MARKUPS = ("auto", "wikitext", "html", "none")
STEPS = ("mojibake", "wikitext", "html")
DEFAULT_FIELDS = {"corpus": ["text"], "instructions": ["messages"], "comparisons": ["prompt", "chosen", "rejected"]}


@dataclass
class CleanConfig:
    """The `clean` section of params.yaml (and `evalset.clean`): each step on or off."""

    enabled: bool = True
    markup: str = "auto"          # markup of documents whose source spec does not say: auto|wikitext|html|none
    mojibake: bool = True         # ftfy: repair text decoded with the wrong codec ("Ã©" → "é")
    wikitext: bool = True         # MediaWiki markup → text (mwparserfromhell)
    html: bool = True             # HTML → main text (trafilatura)
    redirects: bool = True        # reject MediaWiki redirect pages as `redirect`
    disambiguation: bool = True   # reject disambiguation pages as `disambiguation`
    redirect_words: list[str] = field(default_factory=lambda: list(REDIRECT_WORDS))
    disambiguation_templates: list[str] = field(default_factory=lambda: list(DISAMBIGUATION_TEMPLATES))
    drop_sections: list[str] = field(default_factory=lambda: list(DROP_SECTIONS))  # headings dropped with their text
    fields: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_FIELDS.items()})

    @classmethod
    def from_dict(cls, section: dict | None, where: str = "clean") -> CleanConfig:
        """Build from a params section; unknown keys and wrong types are a ConfigError before work."""
        section = dict(section or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ConfigError(f"params: unknown {where} setting(s) {unknown}; known: {sorted(known)}")
        for name, value in section.items():
            default = getattr(cls(), name)
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ConfigError(f"params: {where}.{name} must be true or false, got {value!r}")
            if isinstance(default, list) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"params: {where}.{name} must be a list of strings, got {value!r}")
            if isinstance(default, dict) and not (isinstance(value, dict) and all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values())):
                raise ConfigError(f"params: {where}.{name} must map a dataset to a list of fields, got {value!r}")
        cfg = cls(**section)
        if cfg.markup not in MARKUPS:
            raise ConfigError(f"params: {where}.markup must be one of {MARKUPS}, got {cfg.markup!r}")
        if "fields" in section:
            cfg.fields = {**DEFAULT_FIELDS, **section["fields"]}
        return cfg


# --- detection ---------------------------------------------------------------------------------

_WIKI_SIGNALS = (
    re.compile(r"\[\[[^\[\]\n|]*[^\W\d_][^\[\]\n]*\]\]"),          # [[Link]] / [[Link|text]]
    re.compile(r"\{\{\s*[^\W\d_][^{}\n|]*(\||\}\})"),              # {{Template|...}} / {{Template}}
    re.compile(r"'''[^'\n]+'''|''[^'\n]+''"),                      # bold / italic quotes
    re.compile(r"^=={1,4}[^=\n]+=={1,4}\s*$", re.M),               # == Heading ==
    re.compile(r"<ref[\s>/]|\{\|", re.I),                          # references, tables
)
_HTML_DOC = re.compile(r"<!doctype\s+html|<html[\s>]|<body[\s>]|<head[\s>]", re.I)
_HTML_BLOCK = re.compile(r"</(p|div|li|td|tr|h[1-6]|article|section|span|a|ul|table)>", re.I)


def detect_markup(text: str, redirect_words: list[str] = REDIRECT_WORDS) -> str:
    """`wikitext`, `html` or `none`: a redirect, or two kinds of wiki signal, is wikitext; a
    document with an HTML head, or a fragment that starts and ends with a tag and closes two block
    tags, is HTML (prose that quotes a few tags, such as UI translations, is not)."""
    if redirect_target(text, redirect_words) is not None:
        return "wikitext"
    head = text[:20000]
    stripped = text.strip()
    if _HTML_DOC.search(head[:2000]) or (stripped.startswith("<") and stripped.endswith(">")
                                          and len(_HTML_BLOCK.findall(head)) >= 2):
        return "html"
    if sum(1 for sig in _WIKI_SIGNALS if sig.search(head)) >= 2:
        return "wikitext"
    return "none"


# --- per-document steps -----------------------------------------------------------------------

# UTF-8 read as Latin-1 / Windows-1252 leaves a lead byte (Â..ô) before a continuation byte
# (U+0080..U+00BF, or what cp1252 maps 0x80..0x9F to): ftfy only sees lines that have one.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                            "\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030"
                            "\u2039\u203a\u20ac\u2122]")


def fix_mojibake(text: str) -> str:
    """Repair mojibake only (ftfy; no quote uncurling, width or ligature changes, no HTML
    unescaping), line by line and only on lines with a mojibake pattern (ftfy reads ~1 MB/s)."""
    if not _MOJIBAKE_HINT.search(text):
        return text
    import ftfy

    cfg = ftfy.TextFixerConfig(unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
                               fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
                               remove_control_chars=False, normalization=None, explain=False)
    return "\n".join(ftfy.fix_text(line, cfg) if _MOJIBAKE_HINT.search(line) else line
                     for line in text.split("\n"))


def html_to_text(html: str) -> str:
    """Main text of an HTML page (trafilatura with FineWeb's settings, no cross-document
    deduplication so the result does not depend on other documents); "" when none is found."""
    import trafilatura

    out = trafilatura.extract(html, favor_precision=True, include_comments=False, include_tables=False,
                              deduplicate=False, with_metadata=False)
    return out or ""


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _nbytes(s: str) -> int:
    return len(s.encode("utf-8", errors="replace"))


def clean_text(text: str, markup: str, cfg: CleanConfig, changes: dict[str, int]) -> str:
    """Clean one text field; record bytes removed per step in `changes`; raise `Rejected`."""
    if cfg.mojibake:
        fixed = fix_mojibake(text)
        if fixed != text:
            changes["mojibake"] = changes.get("mojibake", 0) + _nbytes(text) - _nbytes(fixed)
            text = fixed
    if markup == "auto":
        markup = detect_markup(text, cfg.redirect_words)
    if markup == "wikitext":
        if cfg.redirects and (target := redirect_target(text, cfg.redirect_words)) is not None:
            raise Rejected("redirect", f"redirect to [[{target}]]")
        if cfg.disambiguation and (name := disambiguation_template(text, cfg.disambiguation_templates)):
            raise Rejected("disambiguation", f"disambiguation page ({name})")
        if cfg.wikitext:
            out = normalise_text(wikitext_to_text(text, cfg.drop_sections))
            if out != text:
                changes["wikitext"] = changes.get("wikitext", 0) + _nbytes(text) - _nbytes(out)
                text = out
    elif markup == "html" and cfg.html:
        out = normalise_text(html_to_text(text))
        if out != text:
            changes["html"] = changes.get("html", 0) + _nbytes(text) - _nbytes(out)
            text = out
    if not text.strip():
        raise Rejected("empty_after_clean", f"no text left after {markup} cleaning")
    return text


def _markup_of(meta: str, default: str) -> str:
    try:
        value = json.loads(meta).get("markup") if meta else None
    except (json.JSONDecodeError, AttributeError):
        value = None
    return value if value in MARKUPS else default


def _record_text(row: dict[str, Any], dataset: str) -> str:
    if dataset == "instructions":
        return record_text(dataset, {"messages": json.loads(row["messages"])})
    return record_text(dataset, row)


def _dataset_of(df: pl.DataFrame) -> str:
    if "messages" in df.columns:
        return "instructions"
    return "comparisons" if "chosen" in df.columns else "corpus"


def clean_row(row: dict[str, Any], cfg: CleanConfig, fields_: list[str], dataset: str) -> dict[str, Any]:
    """Clean the named fields of one row (`messages`: every turn's content); return the new
    row with `clean` set; raise `Rejected`."""
    markup = _markup_of(row.get("meta", ""), cfg.markup)
    changes: dict[str, int] = {}
    out = dict(row)
    for name in fields_:
        if name == "messages":
            msgs = json.loads(row["messages"])
            msgs = [{**m, "content": clean_text(m["content"], markup, cfg, changes)} for m in msgs]
            out["messages"] = json.dumps(msgs, ensure_ascii=False)
            if "prompt" in out:
                out["prompt"] = [m["content"] for m in msgs if m["role"] == "user"][-1]
                out["response"] = msgs[-1]["content"]
        else:
            out[name] = clean_text(row[name], markup, cfg, changes)
    if changes and fields_ != ["text"]:
        out["text"] = _record_text(out, dataset)
    if changes:
        out["n_bytes"] = _nbytes(out["text"])
        out["content_hash"] = hash_hex(out["text"])
    out["clean"] = json.dumps(changes, sort_keys=True)
    return out


def clean_step(df: pl.DataFrame, cfg: CleanConfig, fields_: list[str] | None = None) -> StepResult:
    """The stage step: clean every row's `fields_` (default: the dataset's `cfg.fields`); rejected
    rows keep their original text with `reason` `redirect` / `disambiguation` / `empty_after_clean`."""
    dataset = _dataset_of(df)
    fields_ = list(fields_ or cfg.fields.get(dataset, DEFAULT_FIELDS[dataset]))
    if not cfg.enabled:
        kept = df.with_columns(pl.lit("{}").alias("clean"))
        return StepResult(kept, add_reason(df.clear(), reason=""))
    kept_rows, rej_idx, reasons, details = [], [], [], []
    for i, row in enumerate(df.iter_rows(named=True)):
        try:
            kept_rows.append(clean_row(row, cfg, fields_, dataset))
        except Rejected as e:
            rej_idx.append(i)
            reasons.append(e.reason)
            details.append(e.detail)
    schema = {**df.schema, "clean": pl.Utf8}
    kept = pl.DataFrame(kept_rows, schema=schema, orient="row") if kept_rows else df.clear().with_columns(
        pl.lit("", dtype=pl.Utf8).alias("clean"))
    rejected = df[rej_idx] if rej_idx else df.clear()
    rejected = rejected.with_columns(pl.Series("reason", reasons, dtype=pl.Utf8),
                                     pl.Series("reason_detail", details, dtype=pl.Utf8),
                                     pl.lit(None, dtype=pl.Float64).alias("reason_value"))
    return StepResult(kept, rejected)


def clean_stats(kept: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Per step: documents changed and bytes removed, from the `clean` column of kept rows."""
    out = {s: {"docs_changed": 0, "bytes_removed": 0} for s in STEPS}
    for value in kept.get_column("clean").to_list():
        for step, removed in json.loads(value).items():
            out.setdefault(step, {"docs_changed": 0, "bytes_removed": 0})
            out[step]["docs_changed"] += 1
            out[step]["bytes_removed"] += removed
    return out


def clean_shard(in_path: Path, out_dir: Path, dataset: str, cfg: CleanConfig) -> dict:
    """The `clean` stage on one ingest shard: its training rows only (held-out rows are the
    evaluation set's), kept to `out_dir/<name>`, rejected to `out_dir/rejected/<name>`; stats."""
    in_path, out_dir = Path(in_path), Path(out_dir)
    df = read_shard(in_path)
    train = df.filter(pl.col("split") == "train")
    res = clean_step(train, cfg)
    if train.height != res.kept.height + res.rejected.height:
        raise ConservationError(f"{in_path.name}: rows_in={train.height} != kept={res.kept.height} "
                                f"+ rejected={res.rejected.height}")
    write_shard(res.kept, out_dir / in_path.name, dataset)
    write_shard(res.rejected, out_dir / REJECTED_DIR / in_path.name, dataset, rejected=True)
    kept_sources = Counter(res.kept["source"].to_list())
    return {"shard": in_path.name, "rows_in": train.height, "rows_kept": res.kept.height,
            "rows_rejected": res.rejected.height, "eval_rows_skipped": df.height - train.height,
            "rejected_by_reason": dict(Counter(res.rejected.get_column("reason").to_list())),
            "bytes_in": int(train["n_bytes"].sum()), "bytes_out": int(res.kept["n_bytes"].sum()),
            "steps": clean_stats(res.kept),
            "by_source": {s: {"rows_in": n, "rows_kept": kept_sources.get(s, 0)}
                          for s, n in sorted(Counter(train["source"].to_list()).items())}}
