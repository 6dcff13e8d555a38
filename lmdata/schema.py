"""Pandera schemas of the three datasets and of rejected rows, validated on every shard write.

Common columns (every dataset): `id` (unique per row: hash of source, locator and text),
`content_hash` (hash of the normalised text), `source`, `locator` (file, file:line or
file#member), `group` (split group key), `split` (`train`/`eval`), `text` (what text-level steps
read: the document, or the record's fields joined — see `lmdata.text.record_text`), `n_bytes`
(UTF-8 bytes of `text`), `meta` (JSON object as a string: work, edition, locale, derived, ...).
`meta` also holds what a record carried besides its text (`title`, `url`, `lang`, other fields
under `fields`), `repaired_bytes` and the source's `markup`. Later stages add columns (`clean`: a
JSON map of clean step → bytes removed, `lang`, `quality_score`, `repeats`, ...); schemas are not strict.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

DATASETS = ("corpus", "instructions", "comparisons")


class Document(pa.DataFrameModel):
    id: str = pa.Field(unique=True, nullable=False)
    content_hash: str = pa.Field(nullable=False, str_length={"min_value": 32, "max_value": 32})
    source: str = pa.Field(nullable=False, str_length={"min_value": 1})
    locator: str = pa.Field(nullable=False)
    group: str = pa.Field(nullable=False)
    split: str = pa.Field(isin=["train", "eval"], nullable=False)
    text: str = pa.Field(nullable=False, str_length={"min_value": 1})
    n_bytes: int = pa.Field(ge=1, nullable=False)
    meta: str = pa.Field(nullable=False)

    class Config:
        strict = False
        coerce = False


class Corpus(Document):
    """One row per document."""


class Instructions(Document):
    """One row per conversation; `messages` is the JSON list of {role, content}."""

    prompt: str = pa.Field(nullable=False, str_length={"min_value": 1})
    response: str = pa.Field(nullable=False, str_length={"min_value": 1})
    messages: str = pa.Field(nullable=False)


class Comparisons(Document):
    """One row per preference pair: `chosen` is preferred over `rejected` for `prompt`."""

    prompt: str = pa.Field(nullable=False, str_length={"min_value": 1})
    chosen: str = pa.Field(nullable=False, str_length={"min_value": 1})
    rejected: str = pa.Field(nullable=False, str_length={"min_value": 1})


class Rejected(pa.DataFrameModel):
    """Dropped rows keep their columns (nullable: a malformed line has no text) plus a reason."""

    id: str = pa.Field(nullable=False)
    source: str = pa.Field(nullable=True)
    locator: str = pa.Field(nullable=True)
    reason: str = pa.Field(nullable=False, str_length={"min_value": 1})
    reason_detail: str = pa.Field(nullable=True)
    reason_value: float = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = False


SCHEMAS: dict[str, type[pa.DataFrameModel]] = {
    "corpus": Corpus,
    "instructions": Instructions,
    "comparisons": Comparisons,
}

# Polars dtypes of the columns every dataset has, in order (used to build empty frames).
BASE_COLUMNS: dict[str, pl.DataType] = {
    "id": pl.Utf8, "content_hash": pl.Utf8, "source": pl.Utf8, "locator": pl.Utf8,
    "group": pl.Utf8, "split": pl.Utf8, "text": pl.Utf8, "n_bytes": pl.Int64, "meta": pl.Utf8,
}
FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "corpus": (),
    "instructions": ("prompt", "response", "messages"),
    "comparisons": ("prompt", "chosen", "rejected"),
}


def columns_for(dataset: str) -> dict[str, pl.DataType]:
    """The ordered column → dtype map of `dataset`'s documents."""
    if dataset not in SCHEMAS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return {**BASE_COLUMNS, **{c: pl.Utf8 for c in FIELD_COLUMNS[dataset]}}


class SchemaViolation(ValueError):
    """A shard that does not match its schema, naming the file, the column and a failing row."""


def validate(df: pl.DataFrame, dataset: str | None, where: str, rejected: bool = False) -> None:
    """Validate `df` against the dataset's schema (or the rejected-row schema); raise
    `SchemaViolation` naming `where` (the file), the column, the check and example rows."""
    model = Rejected if rejected else SCHEMAS[dataset] if dataset else Document
    try:
        model.validate(df, lazy=True)
    except (pa.errors.SchemaErrors, pa.errors.SchemaError) as e:
        cases = getattr(e, "failure_cases", None)
        if cases is not None and hasattr(cases, "head"):
            lines = [f"  column {r.get('column')!r}, row {r.get('index')}: value {str(r.get('failure_case'))[:60]!r} "
                     f"fails {r.get('check')}" for r in cases.head(5).to_dicts()]
            summary = "\n".join(lines)
        else:
            summary = str(e)
        raise SchemaViolation(f"{where}: schema {model.__name__} violated:\n{summary}") from None
