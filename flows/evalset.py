"""Stage `evalset` for one dataset: the frozen evaluation set, curated from ingest's held-out rows.

Reads only the `split == "eval"` rows of `data/ingest/<dataset>` and only the `evalset` params
section: clean → dedup within the split → record rules, language ID, heuristics (no quality
classifier). Writes `data/evalset/<dataset>` (kept shards, every dropped row in `rejected/` with
its reason), `metrics/evalset/<dataset>.json` and a Prefect table artifact. Training-side dedup
reads the result as the reference it decontaminates against (`eval_overlap`).

    python -m flows.evalset corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, dataset_main, map_shards, publish_metrics
from flows.dedup import apply_decisions, run_passes
from lmdata.atomic import atomic_dir
from lmdata.clean import clean_stats
from lmdata.evalset import EvalsetConfig, chain_metrics, curation_clean, curation_rules, eval_rows
from lmdata.runner import summarise
from lmdata.shards import REJECTED_DIR, list_shards, read_shard, write_shard


@task(name="select-eval", cache_policy=NO_CACHE)
def select_task(in_path: Path, out_path: Path, dataset: str) -> int:
    """Copy the held-out rows of one ingest shard; the number of rows copied."""
    df = eval_rows(read_shard(in_path))
    if df.height:
        write_shard(df, out_path, dataset)
    return df.height


def collect_rejects(step_dir: Path, staging: Path) -> None:
    (staging / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
    for rej in sorted((step_dir / REJECTED_DIR).glob("*.parquet")):
        shutil.copy(rej, staging / REJECTED_DIR / rej.name)


def report(dataset: str, metrics: dict) -> str:
    md = [f"# evalset / {dataset}", "", f"held-out rows in {metrics['rows_in']}, kept {metrics['rows_kept']} "
          f"({metrics['bytes_kept']:,} bytes)", "", "| step | in | kept | rejected by reason |", "|---|---:|---:|---|"]
    md += [f"| {name} | {m['rows_in']} | {m['rows_kept']} | {m['rejected_by_reason']} |"
           for name, m in metrics["steps"].items()]
    md += ["", "| source | kept documents |", "|---|---:|"]
    md += [f"| {s} | {n} |" for s, n in metrics["kept_by_source"].items()]
    return "\n".join(md)


@flow(name="evalset", log_prints=True)
def evalset(dataset: str, params: dict) -> dict:
    cfg = EvalsetConfig.from_dict(params.get("evalset"))
    cfg.dedup.passes(dataset)
    langid = cfg.langid_for(dataset)
    if langid.enabled and not Path(langid.model_path).exists():
        raise FileNotFoundError(f"evalset.langid.model_path: no model at {langid.model_path} (run the fetch stage)")
    root = data_root(params)
    shards = list_shards(root / "ingest" / dataset)
    t0 = time.perf_counter()
    steps: dict[str, dict] = {}
    explained: list = []
    with tempfile.TemporaryDirectory(prefix=".evalset-", dir=root) as work, \
            atomic_dir(root / "evalset" / dataset) as staging:
        work = Path(work)
        selected = work / "selected"
        selected.mkdir()
        counts = [f.result() for f in [select_task.submit(p, selected / p.name, dataset) for p in shards]]
        if sum(counts) == 0:
            write_shard(eval_rows(read_shard(shards[0])), staging / f"{dataset}-00000.parquet", dataset)
            (staging / REJECTED_DIR).mkdir()
            for name in ("clean", "dedup", "filter"):
                steps[name] = summarise([], 0.0)
        else:
            cleaned, deduped, filtered = work / "clean", work / "dedup", staging
            clean = functools.partial(curation_clean, cfg=cfg)
            steps["clean"] = summarise(map_shards(clean, selected, cleaned, dataset, reject_suffix="-clean"), 0.0)
            exclude, explained = run_passes(dataset, list_shards(cleaned), cfg.dedup, work, one_split=True)
            dedup_step = functools.partial(apply_decisions, decisions_path=exclude)
            steps["dedup"] = summarise(map_shards(dedup_step, cleaned, deduped, dataset, reject_suffix="-dedup"), 0.0)
            rules = functools.partial(curation_rules, dataset=dataset, cfg=cfg)
            steps["filter"] = summarise(map_shards(rules, deduped, filtered, dataset, reject_suffix="-filter"), 0.0)
            collect_rejects(cleaned, staging)
            collect_rejects(deduped, staging)
        kept = [pl.read_parquet(p, columns=["source", "n_bytes", "clean"]) for p in list_shards(staging)
                if "clean" in pl.read_parquet_schema(p)]
    kept_df = pl.concat(kept) if kept else pl.DataFrame(schema={"source": pl.Utf8, "n_bytes": pl.Int64,
                                                                "clean": pl.Utf8})
    totals = chain_metrics(steps)
    metrics = summarise([{**totals}], time.perf_counter() - t0, steps={k: {
        "rows_in": m["rows_in"], "rows_kept": m["rows_kept"], "rows_rejected": m["rows_rejected"],
        "rejected_by_reason": m["rejected_by_reason"]} for k, m in steps.items()},
        bytes_kept=int(kept_df["n_bytes"].sum()), clean_changes=clean_stats(kept_df),
        dedup_passes=[{"fields": f, **{k: v for k, v in st.items() if k not in ("docs", "largest_clusters")}}
                      for f, st in explained],
        kept_by_source={s: n for s, n in kept_df.group_by("source").len().sort("source").rows()})
    metrics["shards"] = len(list_shards(root / "evalset" / dataset))
    publish_metrics("evalset", dataset, metrics, markdown=report(dataset, metrics))
    print(f"evalset {dataset}: {metrics['rows_kept']} of {metrics['rows_in']} held-out rows kept, "
          f"rejected {metrics['rejected_by_reason']}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(evalset, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
