"""Stage `filter` for one dataset.

corpus: per shard, language ID then the heuristic rules (Gopher quality + repetition, C4 lines);
then a fastText quality classifier is trained once (positives: `filter.quality.positive_source`,
negatives: the rest of the pool after language ID), every shard is scored, and training documents
below the dataset-wide cut are rejected (`quality`). The evaluation split passes every rule
untouched (it is scored, never filtered), so all models and ablations are judged on the same split.
instructions / comparisons: per-field record rules and language ID on the named fields.

Every config error (and a `positive_source` that no training row has) is reported before any work;
a classifier with too little data fails, or is skipped with `on_insufficient: skip`. The metrics and
the artifact list, per source, every rule that dropped most of it, with the setting to change.

    python -m flows.filter corpus|instructions|comparisons [--params params.yaml]
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows._stage import data_root, dataset_main, map_shards, publish_metrics
from lmdata.atomic import atomic_dir, write_json
from lmdata.errors import ConfigError
from lmdata.filters.explain import rules_dropping_most, source_rule_counts
from lmdata.filters.heuristics import HeuristicsConfig, heuristic_filter, record_filter
from lmdata.filters.langid import LangIdConfig, langid_filter
from lmdata.filters.quality import (
    InsufficientQualityData,
    QualityConfig,
    check_positive_source,
    keep_threshold,
    load_quality_model,
    quality_filter,
    score_histogram,
    score_texts,
    train_quality_classifier,
    training_pool,
)
from lmdata.runner import summarise
from lmdata.shards import REJECTED_DIR, list_shards
from lmdata.stage import StepResult, empty_rejects

DEFAULT_LANGID_FIELDS = {"corpus": ["text"], "instructions": ["prompt", "response"],
                         "comparisons": ["prompt", "chosen", "rejected"]}
SECTION_KEYS = ("model_dir", "langid", "langid_fields", "heuristics", "quality")
DOMINANT_RULE_SHARE = 0.5  # a rule dropping more than this share of a source's documents is reported


def configs(params: dict, dataset: str) -> tuple[LangIdConfig, HeuristicsConfig, QualityConfig]:
    """Build and validate every filter config before any work starts."""
    section = params.get("filter", {}) or {}
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise ConfigError(f"filter: unknown setting(s) {unknown}; known: {list(SECTION_KEYS)}")
    langid = LangIdConfig.from_dict(section.get("langid"))
    fields = (section.get("langid_fields") or {}).get(dataset, DEFAULT_LANGID_FIELDS[dataset])
    if not isinstance(fields, list):
        raise ConfigError(f"filter.langid_fields.{dataset}: expected a list of field names, got {fields!r}")
    return (dataclasses.replace(langid, fields=list(fields)), HeuristicsConfig.from_dict(section.get("heuristics")),
            QualityConfig.from_dict(section.get("quality")))


def check(dataset: str, params: dict) -> None:
    """Every config error before any work: settings, the language-ID model, and `positive_source`
    against the `source` values of the training rows this stage reads (only that column is read)."""
    langid, _, quality = configs(params, dataset)
    if langid.enabled and not Path(langid.model_path).exists():
        raise ConfigError(f"filter.langid.model_path: no model at {langid.model_path} (run the fetch stage)")
    in_dir = data_root(params) / "dedup" / dataset
    if dataset == "corpus" and quality.enabled:
        shards = list_shards(in_dir)
        if shards:
            sources = pl.concat([pl.read_parquet(s, columns=["source", "split"]) for s in shards])
            check_positive_source(quality, sources.filter(pl.col("split") == "train")["source"].unique().to_list(),
                                  where=f"the training rows in {in_dir}")


def rules_step(df: pl.DataFrame, dataset: str, langid: LangIdConfig, heur: HeuristicsConfig) -> StepResult:
    """First failing rule wins: record rules, then language ID, then (corpus) heuristics. Only the
    training split is filtered: every model and ablation is judged on the same evaluation split."""
    df = df.with_row_index("_order")
    train, held = df.filter(pl.col("split") == "train"), df.filter(pl.col("split") != "train")
    results = []
    if dataset != "corpus":
        results.append(record_filter(train, dataset))
        train = results[-1].kept
    if langid.enabled:
        results.append(langid_filter(train, langid))
        train = results[-1].kept
    if dataset == "corpus" and heur.enabled:
        results.append(heuristic_filter(train, heur))
        train = results[-1].kept
    kept = pl.concat([train, held], how="diagonal_relaxed").sort("_order").drop("_order")
    rejected = [r.rejected for r in results if r.rejected.height]
    if not rejected:
        return StepResult(kept, empty_rejects(kept))
    return StepResult(kept, pl.concat(rejected, how="diagonal_relaxed").sort("_order").drop("_order"))


@task(name="train-quality-classifier", cache_policy=NO_CACHE)
def train_classifier(shards: list[Path], cfg: QualityConfig, model_path: Path) -> dict:
    """Train, or report why not: `trained: false` with `skipped_reason` (skip) or `failed` (fail)."""
    try:
        return train_quality_classifier(training_pool(shards, cfg), cfg, model_path)
    except InsufficientQualityData as e:  # returned, not raised: the flow fails without a traceback
        return {"trained": False, "failed": str(e)}


@task(name="score-shard", cache_policy=NO_CACHE)
def score_shard(shard: Path, model_path: Path) -> list[float]:
    df = pl.read_parquet(shard, columns=["text", "split"]).filter(pl.col("split") == "train")
    return score_texts(load_quality_model(model_path), df["text"].to_list()).tolist()


def quality_step(df: pl.DataFrame, cfg: QualityConfig, model_path: str, threshold: float) -> StepResult:
    return quality_filter(df, cfg, model_path, threshold=threshold)


def combine(first: list[dict], second: list[dict]) -> list[dict]:
    """Per-shard stats of two passes: rows in from the first, kept from the second, rejects from both."""
    out = []
    for a, b in zip(first, second):
        reasons = dict(a["rejected_by_reason"])
        for r, n in b["rejected_by_reason"].items():
            reasons[r] = reasons.get(r, 0) + n
        out.append({"shard": a["shard"], "rows_in": a["rows_in"], "rows_kept": b["rows_kept"],
                    "rows_rejected": a["rows_rejected"] + b["rows_rejected"], "rejected_by_reason": reasons})
    return out


def filter_shards(dataset: str, in_dir: Path, root: Path, model_dir: Path, step, quality: QualityConfig
                  ) -> tuple[list[dict], dict]:
    """The rules pass, then (corpus) the classifier and the quality pass, into the output folders
    atomically; raises InsufficientQualityData (nothing written) when the classifier must not be used."""
    extra: dict = {}
    with atomic_dir(model_dir) as model_staging, atomic_dir(root / "filter" / dataset) as staging:
        if dataset != "corpus" or not quality.enabled:
            stats = map_shards(step, in_dir, staging, dataset)
            write_json(model_staging / "classifier.json", {"trained": False, "dataset": dataset})
        else:
            with tempfile.TemporaryDirectory(prefix=".filter-", dir=root) as tmp:
                first = map_shards(step, in_dir, Path(tmp), dataset)
                shards = list_shards(Path(tmp))
                model_path = model_staging / "quality.bin"
                extra["quality_classifier"] = train_classifier(shards, quality, model_path)
                (staging / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
                for rej in sorted((Path(tmp) / REJECTED_DIR).glob("*.parquet")):
                    shutil.copy(rej, staging / REJECTED_DIR / rej.name)
                if "failed" in extra["quality_classifier"]:
                    raise InsufficientQualityData(extra["quality_classifier"]["failed"])
                if not extra["quality_classifier"]["trained"]:  # on_insufficient: skip
                    for shard in shards:
                        shutil.copy(shard, staging / shard.name)
                    stats = first
                else:
                    scores = np.concatenate([np.asarray(f.result(), dtype=float) for f in
                                             [score_shard.submit(s, model_path) for s in shards]] or [np.zeros(0)])
                    threshold = keep_threshold(scores, quality)
                    extra["quality_threshold"] = threshold
                    extra["quality_score_histogram"] = score_histogram(scores)
                    qstep = functools.partial(quality_step, cfg=quality, model_path=str(model_path),
                                              threshold=threshold)
                    second = map_shards(qstep, Path(tmp), staging, dataset, reject_suffix="-quality")
                    stats = combine(first, second)
                write_json(model_staging / "classifier.json", {"dataset": dataset, **extra["quality_classifier"]})
    return stats, extra


@flow(name="filter", log_prints=True)
def filter_stage(dataset: str, params: dict) -> dict:
    check(dataset, params)
    langid, heur, quality = configs(params, dataset)
    root = data_root(params)
    in_dir = root / "dedup" / dataset
    model_dir = Path(params.get("filter", {}).get("model_dir", "models/quality")) / dataset
    t0 = time.perf_counter()
    step = functools.partial(rules_step, dataset=dataset, langid=langid, heur=heur)
    try:
        stats, extra = filter_shards(dataset, in_dir, root, model_dir, step, quality)
    except InsufficientQualityData as e:  # nothing written; one line, no traceback
        return Failed(message=f"filter {dataset}: {e}")
    by_source, by_rule = source_rule_counts(in_dir, root / "filter" / dataset)
    extra["rules_dropping_most"] = rules_dropping_most(by_source, by_rule, heur, DOMINANT_RULE_SHARE)
    metrics = summarise(stats, time.perf_counter() - t0, **extra)
    publish_metrics("filter", dataset, metrics, markdown="\n".join(report(dataset, metrics)))
    print(f"filter {dataset}: {metrics['rows_kept']} kept, rejected {metrics['rejected_by_reason']}")
    for row in extra["rules_dropping_most"]:
        print(f"filter {dataset}: rule {row['rule']} dropped {row['dropped']} of {row['of']} training documents "
              f"of source {row['source']!r}; setting: {row['setting']}" + (f"; {row['hint']}" if "hint" in row else ""))
    if extra.get("quality_classifier", {}).get("skipped_reason"):
        print(f"filter {dataset}: quality classifier skipped: {extra['quality_classifier']['skipped_reason']}")
    return metrics


def report(dataset: str, metrics: dict) -> list[str]:
    """The markdown artifact: rejects by rule, rules dropping most of a source, the classifier."""
    md = [f"# filter / {dataset}", "", f"kept {metrics['rows_kept']} of {metrics['rows_in']}", "",
          "| rule | rejected |", "|---|---:|"] + [f"| {r} | {n} |" for r, n in metrics["rejected_by_reason"].items()]
    if metrics.get("rules_dropping_most"):
        md += ["", f"## Rules dropping more than {DOMINANT_RULE_SHARE:.0%} of a source", "",
               "| source | rule | dropped | of | setting to change |", "|---|---|---:|---:|---|"]
        md += [f"| {r['source']} | {r['rule']} | {r['dropped']} | {r['of']} | {r['setting']}"
               f"{'; ' + r['hint'] if 'hint' in r else ''} |" for r in metrics["rules_dropping_most"]]
    clf = metrics.get("quality_classifier", {})
    if clf.get("skipped_reason"):
        md += ["", f"**quality classifier skipped**: {clf['skipped_reason']}"]
    hist = metrics.get("quality_score_histogram")
    if hist:
        md += ["", f"quality threshold {metrics['quality_threshold']:.4f}; held-out balanced accuracy "
               f"{clf.get('holdout_balanced_accuracy', float('nan')):.3f}, by source: "
               f"{clf.get('holdout_accuracy_by_source')}", "",
               "| score bin | train docs |", "|---|---:|"] + [f"| {b} | {n} |" for b, n in hist.items()]
    return md


def main(argv: list[str] | None = None) -> dict:
    return dataset_main(filter_stage, __doc__.splitlines()[0], argv, check=check)


if __name__ == "__main__":
    main()
