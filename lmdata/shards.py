"""Parquet shards: few, large, zstd, validated on write, written to a temporary path then renamed."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lmdata.atomic import atomic_file
from lmdata.schema import columns_for, validate
from lmdata.stage import REJECT_COLUMNS

REJECTED_DIR = "rejected"


def list_shards(folder: Path) -> list[Path]:
    """Kept shards of a stage output folder (`*.parquet`, not `rejected/`), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no shard folder at {folder}")
    return sorted(p for p in folder.glob("*.parquet") if p.is_file())


def read_shard(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path)


def write_shard(df: pl.DataFrame, path: Path, dataset: str | None, rejected: bool = False) -> Path:
    """Validate `df` against its schema, then write it atomically as zstd Parquet."""
    validate(df, dataset, where=str(path), rejected=rejected)
    with atomic_file(Path(path)) as tmp:
        df.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True)
    return Path(path)


def empty_frame(dataset: str, rejected: bool = False) -> pl.DataFrame:
    """A zero-row frame with the dataset's columns (plus the reason columns for rejects)."""
    cols = dict(columns_for(dataset))
    if rejected:
        cols.update(REJECT_COLUMNS)
    return pl.DataFrame(schema=cols)


class ShardWriter:
    """Buffer rows and write `<prefix>-NNNNN.parquet` whenever the buffered text reaches
    `max_bytes`; always writes at least one (possibly empty) shard so every output has a schema."""

    def __init__(self, folder: Path, prefix: str, dataset: str, max_bytes: int, rejected: bool = False):
        self.folder, self.prefix, self.dataset = Path(folder), prefix, dataset
        self.max_bytes, self.rejected = max_bytes, rejected
        self.rows: list[dict] = []
        self.buffered = 0
        self.paths: list[Path] = []
        self.schema = dict(columns_for(dataset))
        if rejected:
            self.schema.update(REJECT_COLUMNS)

    def add(self, row: dict, nbytes: int) -> None:
        self.rows.append(row)
        self.buffered += nbytes
        if self.buffered >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows and self.paths:
            return
        df = pl.DataFrame(self.rows, schema=self.schema) if self.rows else \
            pl.DataFrame(schema=self.schema)
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.parquet"
        write_shard(df, path, self.dataset, rejected=self.rejected)
        self.paths.append(path)
        self.rows, self.buffered = [], 0

    def close(self) -> list[Path]:
        self.flush()
        return self.paths
