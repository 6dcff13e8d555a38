"""Stage `dedup` for one dataset: eval decontamination, then exact + MinHash LSH near-duplicates.

Decontamination first, always (even with `dedup.exact` and `dedup.near` off): training documents
that match a document of the frozen evaluation set (`data/evalset/<dataset>`, a reference that is
never written here) are rejected as `eval_overlap`, with the evaluation set's own dedup settings
(`evalset.dedup`). Then per pass (corpus: whole text; instructions/comparisons: by prompt, then by
whole record): signatures per shard in parallel tasks → bucket tasks in parallel, one per LSH band
range and key-hash partition (`dedup.band_ranges`, `dedup.hash_partitions`; each reads only its own
keys and writes its buckets' pairs by partition) → a pairs task per partition (verification) → one
components task (an integer union-find over the candidate rows) → a keeper task per cluster
partition → decisions (see `lmdata.dedup_global`; every step a task on the runner, none inline).
Then one task per shard splits it into kept and rejected rows.

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
from lmdata.decontaminate import decontamination_config
from lmdata.dedup import DedupConfig, sign_shard, with_snippets
from lmdata.dedup_global import (
    BucketSpec,
    bucket_pairs,
    bucket_specs,
    cluster_partitions,
    connected_rows,
    fetch_rows,
    keep_partition,
    merge_decisions,
    merge_overlaps,
    merge_stats,
    overlap_partition,
    partition_pairs,
    shard_sizes,
    split_counts,
    write_buckets,
)
from lmdata.runner import summarise
from lmdata.shards import list_shards, read_shard
from lmdata.stage import StepResult, split_by_decisions


def without(df: pl.DataFrame, decisions_path: Path | None, split: str | None = None) -> pl.DataFrame:
    """`df` less the ids already decided in `decisions_path`, restricted to one `split` if given."""
    if split is not None:
        df = df.filter(pl.col("split") == split)
    if decisions_path is None:
        return df
    return df.join(pl.read_parquet(decisions_path, columns=["id"]), on="id", how="anti", maintain_order="left")


@task(name="signatures", cache_policy=NO_CACHE)
def signatures_task(in_path: Path, fields: list[str], cfg: DedupConfig, stem: Path,
                    exclude: Path | None, split: str | None = None) -> dict:
    df = without(read_shard(in_path), exclude, split)
    return sign_shard(df, fields, cfg, stem, shard=str(in_path))


@task(name="buckets", cache_policy=NO_CACHE)
def bucket_task(stems: list[Path], spec: BucketSpec, out: Path, parts: int) -> list[Path]:
    """Its buckets, then their pairs in `parts` files (by first row)."""
    write_buckets(stems, spec, out)
    return bucket_pairs(stems, out, parts, out.with_suffix(""))


def all_buckets(stems: list[Path], cfg: DedupConfig, prefix: Path) -> list[list[Path]]:
    """Global phase, part 1: every bucket task of `cfg` in parallel; pair files per partition."""
    parts = cluster_partitions(cfg)
    futures = [bucket_task.with_options(task_run_name=f"buckets-{spec.name}").submit(
        stems, spec, prefix.with_name(f"{prefix.name}-{spec.name}.parquet"), parts) for spec in bucket_specs(cfg)]
    found = [f.result() for f in futures]
    return [[files[q] for files in found] for q in range(parts)]


@task(name="pairs", cache_policy=NO_CACHE)
def pairs_task(stems: list[Path], pair_files: list[Path], fields: list[str], cfg: DedupConfig, out: Path) -> dict:
    return partition_pairs(stems, pair_files, fields, cfg, out, fetch=lambda need: fetch_rows(need, fields))


def all_pairs(stems: list[Path], partitions: list[list[Path]], fields: list[str], cfg: DedupConfig,
              prefix: Path) -> tuple[list[Path], list[dict]]:
    """Global phase, part 2: a pairs task per partition (each pair once, verified); files and counts."""
    files = [prefix.with_name(f"{prefix.name}-pairs{q}.parquet") for q in range(len(partitions))]
    futures = [pairs_task.with_options(task_run_name=f"pairs-{prefix.name}-{q}").submit(
        stems, found, fields, cfg, out) for q, (found, out) in enumerate(zip(partitions, files))]
    return files, [f.result() for f in futures]


@task(name="components", cache_policy=NO_CACHE)
def components_task(pair_files: list[Path], parts: int, prefix: Path) -> list[Path]:
    files, stats = connected_rows(pair_files, parts, prefix)
    print(f"components {prefix.name}: {stats['candidates']} candidate documents, {stats['pairs']} pairs, "
          f"{stats['clusters']} clusters")
    return files


@task(name="keep", cache_policy=NO_CACHE)
def keep_task(stems: list[Path], cluster_file: Path, cfg: DedupConfig, out: Path, one_split: bool) -> dict:
    return keep_partition(stems, cluster_file, cfg, out, one_split)


@task(name="decisions", cache_policy=NO_CACHE)
def decisions_task(stems: list[Path], pair_stats: list[dict], keeper_stats: list[dict], files: list[Path],
                   fields: list[str], cfg: DedupConfig, out: Path) -> dict:
    merge_decisions(files, out)
    stats, needed = merge_stats(pair_stats, keeper_stats, int(shard_sizes(stems).sum()), cfg.top_clusters)
    return with_snippets(stats, fetch_rows(needed, fields), fields)


def cluster(stems: list[Path], partitions: list[list[Path]], fields: list[str], cfg: DedupConfig, work: Path,
            name: str, out: Path, one_split: bool = False) -> dict:
    """Global phase, parts 2-4, each a task: pairs, components, keepers; writes the decisions to
    `out` and returns the explain-stats. `one_split`: every document competes alike (the
    evaluation set deduplicating itself)."""
    pair_files, pair_stats = all_pairs(stems, partitions, fields, cfg, work / name)
    cluster_files = components_task.with_options(task_run_name=f"components-{name}").submit(
        pair_files, len(partitions), work / f"{name}-c").result()
    decision_files = [work / f"{name}-decisions{q}.parquet" for q in range(len(cluster_files))]
    futures = [keep_task.with_options(task_run_name=f"keep-{name}-{q}").submit(stems, f, cfg, d, one_split)
               for q, (f, d) in enumerate(zip(cluster_files, decision_files))]
    keeper_stats = [f.result() for f in futures]
    return decisions_task.with_options(task_run_name=f"decisions-{name}").submit(
        stems, pair_stats, keeper_stats, decision_files, fields, cfg, out).result()


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


@task(name="eval-overlap", cache_policy=NO_CACHE)
def overlap_task(stems: list[Path], pair_files: list[Path], fields: list[str], cfg: DedupConfig, pairs_out: Path,
                 out: Path) -> int:
    """Decontamination over one pair partition (its pairs, verified): training documents that pair
    with an evaluation document."""
    partition_pairs(stems, pair_files, fields, cfg, pairs_out, fetch=lambda need: fetch_rows(need, fields))
    return overlap_partition(stems, pairs_out, out)


@task(name="eval-overlap-merge", cache_policy=NO_CACHE)
def overlap_merge_task(stems: list[Path], files: list[Path], fields: list[str], out: Path) -> dict:
    n = merge_overlaps(files, out)
    counts = split_counts(stems)
    return {"fields": list(fields), "train_docs": counts["train"], "eval_docs": counts["eval"], "eval_overlap": n}


def overlaps(stems: list[Path], partitions: list[list[Path]], fields: list[str], cfg: DedupConfig, work: Path,
             name: str, out: Path) -> dict:
    """Global phase of decontamination, each step a task: pairs and overlaps per partition, then the merge."""
    found = [work / f"{name}-overlap{q}.parquet" for q in range(len(partitions))]
    futures = [overlap_task.with_options(task_run_name=f"eval-overlap-{name}-{q}").submit(
        stems, files, fields, cfg, work / f"{name}-pairs{q}.parquet", o)
        for q, (files, o) in enumerate(zip(partitions, found))]
    [f.result() for f in futures]
    return overlap_merge_task.with_options(task_run_name=f"eval-overlap-merge-{name}").submit(
        stems, found, fields, out).result()


def sign_all(shards: list[Path], stems: list[Path], fields: list[str], cfg: DedupConfig, exclude: Path | None,
             split: str | None = None) -> None:
    futures = [signatures_task.with_options(task_run_name=f"signatures-{p.stem}").submit(
        p, fields, cfg, stem, exclude, split) for p, stem in zip(shards, stems)]
    [f.result() for f in futures]


def merged(files: list[Path], out: Path) -> Path:
    pl.concat([pl.read_parquet(f) for f in files]).write_parquet(out)
    return out


def decontaminate(dataset: str, shards: list[Path], reference: list[Path], cfg: DedupConfig, work: Path
                  ) -> tuple[Path, list[dict]]:
    """Decontamination passes (the evaluation set's dedup fields) over the training rows of `shards`
    against the `reference` shards; returns the decisions file and per-pass stats."""
    files, stats = [], []
    exclude: Path | None = None
    for k, fields in enumerate(cfg.passes(dataset)):
        pass_cfg = cfg.pass_config(dataset, k)
        train_stems = [work / f"overlap{k}-train-{p.stem}" for p in shards]
        ref_stems = [work / f"overlap{k}-eval-{p.stem}" for p in reference]
        sign_all(shards, train_stems, fields, pass_cfg, exclude, split="train")
        sign_all(reference, ref_stems, fields, pass_cfg, None, split="eval")
        out = work / f"overlap-{k}.parquet"
        partitions = all_buckets(train_stems + ref_stems, pass_cfg, work / f"overlap{k}-buckets")
        stats.append(overlaps(train_stems + ref_stems, partitions, fields, pass_cfg, work, f"overlap{k}", out))
        files.append(out)
        exclude = merged(files, work / f"overlap-excluded-{k}.parquet")
    return exclude, stats


def run_passes(dataset: str, shards: list[Path], cfg: DedupConfig, work: Path, exclude: Path | None = None,
               one_split: bool = False) -> tuple[Path | None, list[tuple[list[str], dict]]]:
    """Every dedup pass of `dataset`, each on what the previous kept (rows in `exclude` are already
    decided); returns the file of all decisions (with `exclude`'s) and each pass's explain-stats."""
    explained = []
    decision_files = [exclude] if exclude is not None else []
    for k, fields in enumerate(cfg.passes(dataset)):
        pass_cfg = cfg.pass_config(dataset, k)
        stems = [work / f"pass{k}-{p.stem}" for p in shards]
        sign_all(shards, stems, fields, pass_cfg, exclude)
        out = work / f"decisions-{k}.parquet"
        partitions = all_buckets(stems, pass_cfg, work / f"pass{k}-buckets")
        explained.append((fields, cluster(stems, partitions, fields, pass_cfg, work, f"pass{k}", out, one_split)))
        decision_files.append(out)
        exclude = merged(decision_files, work / f"excluded-{k}.parquet")
    return exclude, explained


def evalset_reference(params: dict, dataset: str) -> list[Path]:
    folder = data_root(params) / "evalset" / dataset
    if not folder.is_dir():
        raise FileNotFoundError(f"dedup {dataset}: no evaluation set at {folder} to decontaminate against "
                                f"(run the evalset stage first: dvc repro evalset@{dataset})")
    return list_shards(folder)


@flow(name="dedup", log_prints=True)
def dedup(dataset: str, params: dict) -> dict:
    cfg = DedupConfig.from_dict(params.get("dedup"))
    overlap_cfg = decontamination_config(DedupConfig.from_dict((params.get("evalset") or {}).get("dedup")))
    cfg.passes(dataset), overlap_cfg.passes(dataset)  # both checked before any work
    in_dir = data_root(params) / "clean" / dataset  # the cleaned training rows
    shards = list_shards(in_dir)
    reference = evalset_reference(params, dataset)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".dedup-", dir=data_root(params)) as work:
        work = Path(work)
        exclude, overlap = decontaminate(dataset, shards, reference, overlap_cfg, work)
        exclude, explained = run_passes(dataset, shards, cfg, work, exclude)
        step = functools.partial(apply_decisions, decisions_path=exclude)
        with atomic_dir(data_root(params) / "dedup" / dataset) as staging:
            stats = map_shards(step, in_dir, staging, dataset)
    metrics = summarise(stats, time.perf_counter() - t0, decontamination=overlap,
                        passes=[{"fields": f, **{k: v for k, v in st.items() if k != "docs"}}
                                for f, st in explained])
    publish_metrics("dedup", dataset, metrics, markdown=explain_markdown(dataset, explained, metrics))
    print(f"dedup {dataset}: {metrics['rows_kept']} kept, rejected {metrics['rejected_by_reason']}")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(dedup, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
