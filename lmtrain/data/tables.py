"""The tables of the alignment data: conversations (instructions) and preference pairs (comparisons),
from Parquet shards (pyarrow, imported when first needed) or JSONL files, checked field by field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def read_table(folder: str | Path, columns: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
    """All rows of `folder/*.parquet` (or, where there is none, `folder/*.jsonl`): only `columns`, and
    `optional` ones where a file has them, with the file and row each came from; sorted by id."""
    files = sorted(Path(folder).glob("*.parquet")) or sorted(Path(folder).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.parquet (or *.jsonl) shards in {folder}")
    rows: list[dict] = []
    for f in files:
        if f.suffix == ".jsonl":
            records = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
            names = sorted({k for r in records for k in r})
        else:
            import pyarrow.parquet as pq  # imported here: reading JSONL needs no pyarrow (bare GPU images)

            names = pq.read_schema(f).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing} (has {names})")
        read = [*columns, *(c for c in optional if c in names and c not in columns)]
        if f.suffix != ".jsonl":
            records = pq.read_table(f, columns=read).to_pylist()
        for i, r in enumerate(records):
            rows.append({**{c: r.get(c) for c in read}, "_file": f"{f}:{i}"})
    rows.sort(key=lambda r: r["id"])  # stable, independent of shard layout
    return rows


def read_conversations(folder: str | Path, split: str | None = None) -> list[list[dict]]:
    """Conversations (lists of {"role","content"}) of an instructions folder; `split` keeps one split."""
    out = []
    for r in read_table(folder, ["id", "split", "prompt", "response", "messages"]):
        if split is not None and r["split"] != split:
            continue
        if r["messages"] and not isinstance(r["messages"], str):  # JSONL may hold the list itself
            msgs = list(r["messages"])
        elif r["messages"]:
            try:
                msgs = json.loads(r["messages"])
            except json.JSONDecodeError as e:
                raise ValueError(f"{r['_file']} (id {r['id']}): field 'messages' is not JSON: {e}") from e
        elif r["prompt"] is not None and r["response"] is not None:
            msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        else:
            raise ValueError(f"{r['_file']} (id {r['id']}): neither 'messages' nor 'prompt'+'response' set")
        if not any(m.get("role") == "assistant" for m in msgs):
            raise ValueError(f"{r['_file']} (id {r['id']}): field 'messages' has no assistant turn")
        out.append(msgs)
    return out


def read_comparisons(folder: str | Path, split: str | None = None) -> list[dict]:
    """Preference pairs {"id","prompt","chosen","rejected","source"} of a comparisons folder, sorted by id
    (`source` is "" where the shards have no source column)."""
    out = []
    for r in read_table(folder, ["id", "split", "prompt", "chosen", "rejected"], optional=["source"]):
        if split is not None and r["split"] != split:
            continue
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(r[field], str) or not r[field]:
                raise ValueError(f"{r['_file']} (id {r['id']}): field {field!r} is empty or missing")
        out.append({k: r[k] for k in ("id", "prompt", "chosen", "rejected")} | {"source": r.get("source") or ""})
    return out
