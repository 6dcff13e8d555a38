"""Parquet shards: few, large, zstd, validated on write, written to a temporary path then renamed."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Stream rows into `<prefix>-NNNNN.parquet` shards of about `max_bytes` of text each.

    Rows are buffered only up to one row group (`row_group_bytes`), validated, and appended to the
    open shard (a temporary file renamed into place when the shard closes): memory stays at one row
    group whatever the shard size. Always writes at least one (possibly empty) shard."""

    def __init__(self, folder: Path, prefix: str, dataset: str, max_bytes: int, rejected: bool = False,
                 row_group_bytes: int = 8_000_000):
        self.folder, self.prefix, self.dataset = Path(folder), prefix, dataset
        self.max_bytes, self.rejected = max_bytes, rejected
        self.row_group_bytes = min(row_group_bytes, max_bytes)
        self.rows: list[dict] = []
        self.buffered = 0
        self.shard_bytes = 0
        self.paths: list[Path] = []
        self.schema = dict(columns_for(dataset))
        if rejected:
            self.schema.update(REJECT_COLUMNS)
        self._writer = None
        self._tmp: Path | None = None
        # Parquet encoding and zstd release the GIL: one row group is written in the background
        # while the caller builds the next (memory: two row groups at most).
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def add(self, row: dict, nbytes: int) -> None:
        self.rows.append(row)
        self.buffered += nbytes
        if self.buffered >= self.row_group_bytes:
            self._write_row_group()
        if self.shard_bytes >= self.max_bytes:
            self._close_shard()

    def _write_row_group(self) -> None:
        import pyarrow.parquet as pq

        df = pl.DataFrame(self.rows, schema=self.schema) if self.rows else pl.DataFrame(schema=self.schema)
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.parquet"
        validate(df, self.dataset, where=str(path), rejected=self.rejected)
        table = df.to_arrow()
        if self._writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd", compression_level=3)
        self._wait()
        self._pending = self._pool.submit(self._writer.write_table, table)
        self.shard_bytes += self.buffered
        self.rows, self.buffered = [], 0

    def _close_shard(self) -> None:
        if self.rows or self._writer is None:
            self._write_row_group()
        self._wait()
        self._writer.close()
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.parquet"
        os.replace(self._tmp, path)
        self.paths.append(path)
        self._writer, self._tmp, self.shard_bytes = None, None, 0

    def close(self) -> list[Path]:
        if self.rows or self._writer is not None or not self.paths:
            self._close_shard()
        self._pool.shutdown()
        return self.paths
