"""Ingest: read sources → normalise → hash → assign the evaluation split → write shards.

Every record read is either kept (a validated row) or rejected with a reason naming file, line
and field (`malformed_json`, `missing_field`, `wrong_type`, `empty`, `too_large`, `invalid_utf8`).
The evaluation split is chosen here, once, by a stable hash of the record's group key: the
reader's group (a work, a file, a record's group or id field), else the content hash — never a
line number, so inserting or reordering records moves no other record across the split.
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from lmdata.readers import READERS, REQUIRED, BadRecord, ConfigError, RawRecord, check_source
from lmdata.schema import DATASETS, FIELD_COLUMNS, SchemaViolation
from lmdata.shards import REJECTED_DIR, ShardWriter
from lmdata.text import document_id, normalise_text, normalise_utf8, record_text

ROLES = ("system", "user", "assistant")
# json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str), without building an encoder per row
# (JSONEncoder.encode builds its C encoder on every call: `_meta_json` keeps one)
_META_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)
if json.encoder.c_make_encoder is not None:
    _C_META = json.encoder.c_make_encoder(None, _META_JSON.default, json.encoder.encode_basestring, None,
                                          _META_JSON.key_separator, _META_JSON.item_separator, True, False, True)

    def _meta_json(meta: dict) -> str:
        return "".join(_C_META(meta, 0))
else:  # pragma: no cover - CPython without the json C accelerator
    _meta_json = _META_JSON.encode


@dataclass
class IngestConfig:
    """The `ingest` section of params.yaml (one `sources` list per dataset)."""

    sources: list[dict]
    eval_fraction: float = 0.1          # share of split groups held out for evaluation
    eval_salt: str = "lmforge-eval-v1"  # changing it draws a different evaluation split
    eval_groups: list[str] = field(default_factory=list)  # groups forced into the evaluation split
    invalid_utf8: str = "repair"        # "repair" (U+FFFD, counted in meta) or "reject"
    max_doc_bytes: int = 10_000_000     # larger documents are quarantined as `too_large`
    shard_max_mb: float = 64.0          # target shard size (text bytes)

    @classmethod
    def from_params(cls, params: dict, dataset: str) -> IngestConfig:
        """Build and validate the config for `dataset`; raises ConfigError before any work."""
        if dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        section = dict(params.get("ingest", {}))
        ds = section.pop(dataset, None)
        if not isinstance(ds, dict) or not isinstance(ds.get("sources"), list) or not ds["sources"]:
            raise ConfigError(f"params: ingest.{dataset}.sources must be a non-empty list")
        for other in DATASETS:
            section.pop(other, None)
        known = {f for f in cls.__dataclass_fields__ if f != "sources"}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"params: unknown ingest setting(s) {sorted(unknown)}; known: {sorted(known)}")
        shard_mb = params.get("data", {}).get("shard_max_mb", cls.shard_max_mb)
        cfg = cls(sources=ds["sources"], shard_max_mb=shard_mb, **section)
        cfg.validate(dataset)
        return cfg

    def validate(self, dataset: str) -> None:
        if self.invalid_utf8 not in ("repair", "reject"):
            raise ConfigError(f"ingest.invalid_utf8 must be 'repair' or 'reject', got {self.invalid_utf8!r}")
        if not isinstance(self.eval_fraction, int | float) or not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"ingest.eval_fraction must be in [0, 1), got {self.eval_fraction!r}")
        if not isinstance(self.max_doc_bytes, int) or self.max_doc_bytes < 1:
            raise ConfigError(f"ingest.max_doc_bytes must be a positive integer, got {self.max_doc_bytes!r}")
        names = [s.get("source") for s in self.sources if isinstance(s, dict)]
        dupes = [n for n, c in Counter(names).items() if c > 1]
        if dupes:
            raise ConfigError(f"ingest.{dataset}: source names must be unique; repeated: {dupes}")
        for spec in self.sources:
            check_source(spec, dataset)


def is_eval(group: str, fraction: float, salt: str, forced: frozenset[str] = frozenset()) -> bool:
    """Stable assignment: the group's xxh64 (salted) as a fraction of 2^64, below `fraction`."""
    if group in forced:
        return True
    return xxhash.xxh64_intdigest(f"{salt}\x00{group}".encode()) / 2**64 < fraction


class BadField(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _clean_str(value: Any, name: str, normalised: str | None = None) -> str:
    if value is None:
        raise BadField("missing_field", f"field {name!r} is null")
    if not isinstance(value, str):
        raise BadField("wrong_type", f"field {name!r} is {type(value).__name__}, expected a string")
    text = normalise_text(value) if normalised is None else normalised
    if not text or text.isspace():  # == not text.strip(), without copying the text
        raise BadField("empty", f"field {name!r} is empty")
    return text


def clean_fields(dataset: str, fields: dict[str, Any], normalised: str | None = None) -> dict[str, Any]:
    """Check and normalise the fields `dataset` needs; raise BadField naming the field. `normalised`:
    the corpus text already normalised (`normalise_utf8`)."""
    for name in REQUIRED[dataset]:
        if name not in fields:
            raise BadField("missing_field", f"field {name!r} missing")
    if dataset == "corpus":
        return {"text": _clean_str(fields["text"], "text", normalised)}
    if dataset != "instructions":
        return {name: _clean_str(fields[name], name) for name in REQUIRED[dataset]}
    msgs = fields["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise BadField("wrong_type", "field 'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadField("missing_field", f"messages[{i}] needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise BadField("wrong_type", f"messages[{i}].role is {m['role']!r}; expected one of {ROLES}")
        out.append({"role": m["role"], "content": _clean_str(m["content"], f"messages[{i}].content")})
    if out[-1]["role"] != "assistant":
        raise BadField("missing_field", "the last message must be the assistant's response")
    users = [m["content"] for m in out if m["role"] == "user"]
    if not users:
        raise BadField("missing_field", "no user message in 'messages'")
    return {"messages": out, "prompt": users[-1], "response": out[-1]["content"]}


def to_row(rec: RawRecord, dataset: str, cfg: IngestConfig, fraction: float, forced: frozenset[str],
           markup: str | None = None, normalised: tuple[str, bytes] | None = None) -> tuple[tuple, int]:
    """Turn a raw record into a row of `dataset`: a tuple in the order of `columns_for(dataset)`,
    with the text as its UTF-8 bytes (what `BuiltRowWriter` takes); raise BadField if it must be
    rejected. `markup` (the source spec's) is recorded in `meta.markup` for the clean stage.
    `normalised`: a corpus record's text already normalised, with its bytes (`normalise_utf8`)."""
    fields = clean_fields(dataset, rec.fields, normalised[0] if normalised is not None else None)
    text = record_text(dataset, fields)
    n_bytes = len(data := normalised[1] if normalised is not None else text.encode("utf-8"))
    if n_bytes > cfg.max_doc_bytes:
        raise BadField("too_large", f"{n_bytes} bytes > ingest.max_doc_bytes={cfg.max_doc_bytes}")
    chash = xxhash.xxh3_128_hexdigest(data)  # == hash_hex(text), without encoding it again
    group = rec.group or chash
    meta = rec.meta
    if rec.repaired_bytes or markup:
        meta = dict(meta)
        if rec.repaired_bytes:
            meta["repaired_bytes"] = rec.repaired_bytes
        if markup:
            meta["markup"] = markup
    row = (_document_id(rec.source, rec.locator, data), chash, rec.source, rec.locator, group,
           "eval" if is_eval(group, fraction, cfg.eval_salt, forced) else "train",
           data, n_bytes, _meta_json(meta))
    if FIELD_COLUMNS[dataset]:
        row += tuple(json.dumps(fields[c], ensure_ascii=False) if c == "messages" else fields[c]
                     for c in FIELD_COLUMNS[dataset])
    return row, n_bytes


class BuiltRowWriter(ShardWriter):
    """`ShardWriter` for the rows `to_row` builds (tuples in column order, the text as UTF-8 bytes).

    A row group becomes an Arrow table column by column — the text column straight from the joined
    bytes and their offsets, never decoded or re-encoded — and is written without pandera, because
    its checks hold by construction: `id` and `content_hash` are xxh3 hex digests (32 characters),
    `split` is train or eval, `text` is a non-blank string (`clean_fields`), so `n_bytes` ≥ 1, `source`
    a checked non-empty name, `group` and `meta` strings. Only `id`'s uniqueness depends on the data;
    it is checked here per row group, as pandera did. (Rejected rows, whose content is whatever the
    input held, keep the pandera check: `ShardWriter(..., rejected=True)`.) Dictionary encoding and
    statistics are kept for the short columns only: on unique texts, ids and hashes they cost CPU
    and bytes and serve no reader."""

    _UNIQUE = frozenset({"id", "content_hash", "locator", "text", "meta", *(c for cols in FIELD_COLUMNS.values()
                                                                          for c in cols)})

    def _write_row_group(self) -> None:
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.parquet"
        columns = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(self.schema)
        ids = columns[0]
        if len(set(ids)) != len(ids):
            first = next(i for i, seen in enumerate(_seen_before(ids)) if seen)
            raise SchemaViolation(f"{path}: schema {self.dataset} violated:\n  column 'id', row {first}: "
                                  f"value {ids[first]!r} fails field_uniqueness")
        table = pa.Table.from_arrays([_utf8_column(values) if name == "text" else
                                      pa.array(values, pa.int64() if name == "n_bytes" else pa.large_string())
                                      for name, values in zip(self.schema, columns, strict=True)],
                                     names=list(self.schema))
        if self._writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            short = [c for c in self.schema if c not in self._UNIQUE]
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd", compression_level=3,
                                            use_dictionary=short, write_statistics=short)
        self._wait()
        self._pending = self._pool.submit(self._writer.write_table, table)
        self.shard_bytes += self.buffered
        self.rows, self.buffered = [], 0


def _seen_before(values: tuple) -> Iterator[bool]:
    seen: set = set()
    for v in values:
        yield v in seen
        seen.add(v)


def _utf8_column(blobs: tuple[bytes, ...]):
    """A large_string Arrow array over UTF-8 byte strings (valid by construction: encoded from str)."""
    offsets = array("q", accumulate(map(len, blobs), initial=0))
    return pa.LargeStringArray.from_buffers(len(blobs), pa.py_buffer(offsets), pa.py_buffer(b"".join(blobs)))


def _document_id(source: str, locator: str, data: bytes) -> str:
    """`document_id(source, locator, text)` from the text's UTF-8 bytes, without joining and encoding
    the text again (xxh3 streamed over the parts gives the one-shot digest)."""
    h = xxhash.xxh3_128(f"{source}\x00{locator}\x00".encode("utf-8", errors="surrogatepass"))
    h.update(data)
    return h.hexdigest()


def reject_row(source: str, locator: str, reason: str, detail: str, raw: str | None,
               meta: dict | None = None, value: float | None = None) -> dict:
    return {
        "id": document_id(source, locator, raw or ""), "content_hash": None, "source": source,
        "locator": locator, "group": None, "split": None, "text": raw,
        "n_bytes": len(raw.encode("utf-8", errors="replace")) if raw is not None else None,
        "meta": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False, default=str),
        "reason": reason, "reason_detail": detail, "reason_value": value,
    }


def _raw_text(rec: RawRecord) -> str:
    try:
        return json.dumps(rec.fields, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(rec.fields)


def ingest_source(spec: dict, dataset: str, cfg: IngestConfig, out_dir: Path) -> dict:
    """Read one source and write its kept and rejected shards under `out_dir`; return stats."""
    max_bytes = max(1, int(cfg.shard_max_mb * 1_000_000))
    prefix = spec["source"]
    kept = BuiltRowWriter(out_dir, prefix, dataset, max_bytes)
    rejected = ShardWriter(out_dir / REJECTED_DIR, prefix, dataset, max_bytes, rejected=True)
    fraction = spec.get("eval_fraction", cfg.eval_fraction)
    forced = frozenset(cfg.eval_groups)
    by_reason: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    kept_by_source: Counter[str] = Counter()  # by the row's source (a record's own, where mapped)
    rows_in = kept_bytes = repaired = 0
    def split_of(group: str) -> str:  # lets derived-data readers keep pairs within one split
        return "eval" if is_eval(group, fraction, cfg.eval_salt, forced) else "train"

    records = READERS[spec["type"]]({**spec, "_split_of": split_of}, dataset, cfg.invalid_utf8)
    corpus, markup = dataset == "corpus", spec.get("markup")
    for rec in records:
        rows_in += 1
        repaired += getattr(rec, "repaired_bytes", 0)
        if isinstance(rec, BadRecord):
            rejected.add(reject_row(rec.source, rec.locator, rec.reason, rec.detail, rec.raw),
                         len(rec.raw or ""))
            by_reason[rec.reason] += 1
            continue
        text = rec.fields.get("text") if corpus else None
        try:
            row, nbytes = to_row(rec, dataset, cfg, fraction, forced, markup,
                                 normalise_utf8(text) if isinstance(text, str) else None)
        except BadField as e:
            raw = rec.fields.get("text") if dataset == "corpus" and isinstance(rec.fields.get("text"), str) \
                else _raw_text(rec)
            value = float(len(raw.encode("utf-8", errors="replace"))) if e.reason == "too_large" else None
            rejected.add(reject_row(rec.source, rec.locator, e.reason, f"{rec.locator}: {e}", raw,
                                    rec.meta, value), len(raw))
            by_reason[e.reason] += 1
            continue
        kept.add(row, nbytes)
        kept_bytes += nbytes
        splits[row[5]] += 1
        kept_by_source[row[2]] += 1
    kept.close()
    rejected.close()
    rows_kept = sum(splits.values())
    return {"source": spec["source"], "rows_in": rows_in, "rows_kept": rows_kept,
            "rows_rejected": sum(by_reason.values()), "rejected_by_reason": dict(by_reason),
            "kept_bytes": kept_bytes, "splits": dict(splits), "shards": len(kept.paths),
            "repaired_bytes": repaired, "kept_by_source": dict(kept_by_source)}
