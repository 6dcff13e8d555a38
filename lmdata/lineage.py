"""Lineage over every stage's kept and rejected shards, as DuckDB views.

Views: `<stage>_<dataset>` (kept rows), `<stage>_<dataset>_rejected`, and `lineage` — one row per
(stage, dataset, status, document) with the reason where it was dropped. "Why was X dropped?":

    SELECT stage, reason, reason_detail, reason_value FROM lineage
    WHERE id = 'X' AND status = 'rejected'
"""

from __future__ import annotations

from pathlib import Path

import duckdb

STAGES = ("ingest", "evalset", "dedup", "filter", "balance")  # evalset: the held-out rows
LINEAGE_COLUMNS = ("id", "content_hash", "source", "locator", "split", "n_bytes")


def _has_parquet(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.parquet"))


def connect(data_root: Path = Path("data"), con: duckdb.DuckDBPyConnection | None = None
            ) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per stage output found under `data_root`."""
    con = con or duckdb.connect()
    parts = []
    for stage in STAGES:
        stage_dir = Path(data_root) / stage
        if not stage_dir.is_dir():
            continue
        for ds_dir in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            for status, folder in (("kept", ds_dir), ("rejected", ds_dir / "rejected")):
                if not _has_parquet(folder):
                    continue
                view = f"{stage}_{ds_dir.name}" + ("_rejected" if status == "rejected" else "")
                glob = str(folder / "*.parquet").replace("'", "''")
                con.execute(f"CREATE OR REPLACE VIEW \"{view}\" AS "
                            f"SELECT * FROM read_parquet('{glob}', union_by_name = true)")
                reasons = ("reason, reason_detail, reason_value" if status == "rejected" else
                           "NULL::VARCHAR AS reason, NULL::VARCHAR AS reason_detail, "
                           "NULL::DOUBLE AS reason_value")
                cols = ", ".join(LINEAGE_COLUMNS)
                parts.append(f"SELECT '{stage}' AS stage, '{ds_dir.name}' AS dataset, '{status}' AS status, "
                             f"{cols}, {reasons} FROM \"{view}\"")
    if parts:
        con.execute("CREATE OR REPLACE VIEW lineage AS " + " UNION ALL ".join(parts))
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()]


def why(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[tuple]:
    """Every stage a document (by id or id prefix) went through, in pipeline order."""
    order = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES))
    return con.execute(
        f"SELECT stage, dataset, status, id, reason, reason_detail, reason_value FROM lineage "
        f"WHERE id LIKE ? || '%' ORDER BY CASE stage {order} END, status", [doc_id]).fetchall()
