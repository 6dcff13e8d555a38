"""The work of each data stage without Prefect: the library steps the flows call, timed in CPU seconds
on the same documents, so the pipeline figures (work + per-task orchestration) can be split.

    python -m bench.scale_lib.library PARAMS.yaml INGEST_SHARD.parquet [MAX_ROWS]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import yaml


def timed(fn, *args) -> tuple[object, float]:
    c0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - c0


def library_speeds(params: dict, shard: Path, max_rows: int = 5000) -> dict:
    """MB and documents per CPU-second of ingest's shard writing aside: clean, MinHash signatures +
    exact keys (dedup phase 1), language ID, heuristics and quality scoring on `max_rows` rows."""
    from lmdata.clean import CleanConfig, clean_step
    from lmdata.dedup import DedupConfig, shard_signatures
    from lmdata.filters.heuristics import HeuristicsConfig, heuristic_filter
    from lmdata.filters.langid import LangIdConfig, langid_filter
    from lmdata.filters.quality import (
        QualityConfig,
        quality_filter,
        train_quality_classifier,
    )

    df = pl.read_parquet(shard).filter(pl.col("split") == "train").head(max_rows)
    mb = df["text"].str.len_bytes().sum() / 1e6
    out = {"docs": df.height, "mb": mb}
    clean = CleanConfig.from_dict({k: v for k, v in (params.get("clean") or {}).items() if k != "input"})  # flow's
    res, out["clean_s"] = timed(clean_step, df, clean)
    df = res.kept
    _, out["dedup_signatures_s"] = timed(shard_signatures, df, ["text"], DedupConfig.from_dict(params["dedup"]), "s")
    fparams = params["filter"]
    res, out["langid_s"] = timed(langid_filter, df, LangIdConfig.from_dict(fparams["langid"]))
    _, out["heuristics_s"] = timed(heuristic_filter, res.kept, HeuristicsConfig.from_dict(fparams["heuristics"]))
    qcfg = QualityConfig.from_dict(fparams["quality"])
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "q.bin"
        _, out["quality_train_s"] = timed(train_quality_classifier, df, qcfg, model)
        _, out["quality_score_s"] = timed(quality_filter, df, qcfg, model, 0.5)
    for k in [k for k in out if k.endswith("_s")]:
        out[k.removesuffix("_s") + "_mb_per_cpu_s"] = mb / max(out[k], 1e-9)
    return out


def main() -> None:
    params = yaml.safe_load(Path(sys.argv[1]).read_text())
    res = library_speeds(params, Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 5000)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
