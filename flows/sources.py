"""Stage `sources-<dataset>@<i>`: fingerprint one configured source so that DVC reruns ingest when
any of its files changes (see `lmdata.sources`). No Prefect flow: it only hashes files.

    python -m flows.sources PATH OUT_JSON
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmdata.atomic import write_json
from lmdata.sources import fingerprint


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    fp = fingerprint(Path(args.path))
    write_json(Path(args.out), fp)
    print(f"source {args.path}: {fp['files']} files, {fp['bytes']:,} bytes, xxh3 {fp['xxh3_128'][:12]}")
    return fp


if __name__ == "__main__":
    main()
