"""Source fingerprints: the files of one configured source, hashed, so that DVC sees a source change.

DVC cannot template a variable-length list of paths into a stage's deps, so each configured source
gets a small stage of its own (`sources-<dataset>@<i>`, a `foreach` over `ingest.<dataset>.sources`)
whose dep is the source's path — inside `data/raw` or anywhere else — and whose output is this
fingerprint; `ingest@<dataset>` depends on the folder of its fingerprints. Changing, adding or
removing a file under a source's path changes its fingerprint, and so reruns ingest; DVC hashes
the path itself only when a file's mtime or size changed, and the fingerprint is read only then.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

CHUNK = 1 << 20


def source_files(path: Path) -> list[Path]:
    """Every file under `path` (or `path` itself), sorted — whatever a reader's glob would pick."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"source path does not exist: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file())


def fingerprint(path: Path) -> dict:
    """Files, bytes and one xxh3-128 over every file's relative name and contents."""
    path = Path(path)
    h = xxhash.xxh3_128()
    files = source_files(path)
    total = 0
    for f in files:
        rel = f.name if f == path else str(f.relative_to(path))
        h.update(rel.encode("utf-8", errors="surrogateescape") + b"\x00")
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                total += len(chunk)
        h.update(b"\x00")
    return {"path": str(path), "files": len(files), "bytes": total, "xxh3_128": h.hexdigest()}
