"""Stage `dedup` for one dataset: exact + MinHash LSH near-duplicates + eval decontamination.

Per pass (corpus: whole text; instructions/comparisons: by prompt, then by whole record):
signatures per shard in parallel tasks → one global task over ids and signatures only →
decisions. Then one task per shard splits it into kept and rejected rows.

    python -m flows.dedup corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, dataset_main, map_shards, publish_metrics
from lmdata.atomic import atomic_dir
from lmdata.dedup import DedupConfig, find_duplicates, load_index, members_needed, sign_shard, with_snippets
from lmdata.runner import summarise
from lmdata.shards import list_shards, read_shard
from lmdata.stage import StepResult, split_by_decisions


def without(df: pl.DataFrame, decisions_path: Path | None) -> pl.DataFrame:
    if decisions_path is None:
        return df
    return df.join(pl.read_parquet(decisions_path, columns=["id"]), on="id", how="anti", maintain_order="left")


@task(name="signatures", cache_policy=NO_CACHE)
def signatures_task(in_path: Path, fields: list[str], cfg: DedupConfig, stem: Path,
                    exclude: Path | None) -> dict:
    df = without(read_shard(in_path), exclude)
    return sign_shard(df, fields, cfg, stem, shard=str(in_path))


def fetch_rows(needed: dict[str, list[str]], fields: list[str]) -> pl.DataFrame:
    """Only the candidate documents' fields, shard by shard (never all texts at once)."""
    frames = [pl.read_parquet(shard, columns=["id", *fields]).filter(pl.col("id").is_in(ids))
              for shard, ids in needed.items()]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.Utf8, **{f: pl.Utf8 for f in fields}})


@task(name="cluster", cache_policy=NO_CACHE)
def cluster_task(stems: list[Path], fields: list[str], cfg: DedupConfig, out: Path) -> dict:
    """Global phase: banding, union-find and keep rules over signatures; writes the decisions."""
    index = load_index(stems, cfg)
    decisions, stats = find_duplicates(index, fields, cfg, fetch=lambda need: fetch_rows(need, fields))
    decisions.write_parquet(out)
    return with_snippets(stats, fetch_rows(members_needed(stats, index), fields), fields)


def apply_decisions(df: pl.DataFrame, decisions_path: Path) -> StepResult:
    return split_by_decisions(df, pl.read_parquet(decisions_path))


def explain_markdown(dataset: str, passes: list[tuple[list[str], dict]], metrics: dict) -> str:
    lines = [f"# dedup / {dataset}", "", f"in {metrics['rows_in']}, kept {metrics['rows_kept']}, "
             f"rejected {metrics['rows_rejected']}: {metrics['rejected_by_reason']}", ""]
    for fields, st in passes:
        lines += [f"## pass by {' + '.join(fields)}", "",
                  f"candidate pairs {st['candidate_pairs']}, clusters {st['clusters']}", "",
                  "| cluster size | clusters |", "|---:|---:|"]
        lines += [f"| {k} | {v} |" for k, v in st["cluster_size_histogram"].items()]
        lines += ["", "### largest clusters (kept document first)", ""]
        for c in st["largest_clusters"]:
            lines.append(f"- **{c['size']} documents**, kept `{c['kept'][:12]}`")
            lines += [f"  - `{m['id'][:12]}` {m['snippet'][:100]}" for m in c["members"][:5]]
        lines.append("")
    return "\n".join(lines)


@flow(name="dedup", log_prints=True)
def dedup(dataset: str, params: dict) -> dict:
    cfg = DedupConfig.from_dict(params.get("dedup"))
    passes = cfg.passes(dataset)
    in_dir = data_root(params) / "ingest" / dataset
    shards = list_shards(in_dir)
    t0 = time.perf_counter()
    explained = []
    with tempfile.TemporaryDirectory(prefix=".dedup-", dir=data_root(params)) as work:
        work = Path(work)
        exclude: Path | None = None
        decision_files = []
        for k, fields in enumerate(passes):
            pass_cfg = cfg.pass_config(dataset, k)
            stems = [work / f"pass{k}-{p.stem}" for p in shards]
            futures = [signatures_task.with_options(task_run_name=f"signatures-{p.stem}").submit(
                p, fields, pass_cfg, stem, exclude) for p, stem in zip(shards, stems)]
            [f.result() for f in futures]
            out = work / f"decisions-{k}.parquet"
            explained.append((fields, cluster_task(stems, fields, pass_cfg, out)))
            decision_files.append(out)
            exclude = work / f"excluded-{k}.parquet"
            pl.concat([pl.read_parquet(f) for f in decision_files]).write_parquet(exclude)
        step = functools.partial(apply_decisions, decisions_path=exclude)
        with atomic_dir(data_root(params) / "dedup" / dataset) as staging:
            stats = map_shards(step, in_dir, staging, dataset)
    metrics = summarise(stats, time.perf_counter() - t0,
                        passes=[{"fields": f, **{k: v for k, v in st.items() if k != "docs"}}
                                for f, st in explained])
    publish_metrics("dedup", dataset, metrics, markdown=explain_markdown(dataset, explained, metrics))
    print(f"dedup {dataset}: {metrics['rows_kept']} kept, rejected {metrics['rejected_by_reason']}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(dedup, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
