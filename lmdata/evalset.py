"""The frozen evaluation set: the held-out rows of ingest, curated once with fixed reference settings.

The split is decided at ingest; then the DAG forks. Training rows go ingest → clean → dedup →
filter → balance with the settings an ablation varies; held-out rows go ingest → evalset with the
params section `evalset:` only, which an ablation may not set (`lmdata.ablation` refuses it), so
every model and every variant is judged on the same bytes. Curation, in order, each dropped row
kept in `rejected/` with its reason:

1. clean: markup and mojibake repair with the clean stage's library step (`lmdata.clean`),
2. dedup within the split (`lmdata.dedup`, every document competing alike: `exact_dup`, `near_dup`),
3. record rules (instructions, comparisons), language ID and (corpus) the heuristic rules
   (`lmdata.filters`). Not the quality classifier: it would judge the set by what it trains on.

The training side is decontaminated against the result (`lmdata.decontaminate`, in dedup).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lmdata.clean import CleanConfig, clean_step
from lmdata.dedup import DedupConfig
from lmdata.errors import ConfigError
from lmdata.filters.heuristics import HeuristicsConfig, heuristic_filter, record_filter
from lmdata.filters.langid import LangIdConfig, langid_filter
from lmdata.stage import StepResult, empty_rejects

DEFAULT_LANGID_FIELDS = {"corpus": ["text"], "instructions": ["prompt", "response"],
                         "comparisons": ["prompt", "chosen", "rejected"]}


def _section(build, value: Any, name: str):
    """Build one sub-config, naming the setting as `evalset.<name>` in any error."""
    try:
        return build(value)
    except (ValueError, TypeError) as e:
        msg = str(e).replace("params.yaml dedup", "dedup").replace("filter.", "")
        raise ConfigError(f"params.yaml evalset.{name}: {msg}") from None


@dataclass
class EvalsetConfig:
    """params.yaml `evalset`, field for field; defaults equal the training side's reference settings."""

    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    langid_fields: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_LANGID_FIELDS))
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> EvalsetConfig:
        """Build and check every setting before any work; unknown keys are errors."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"params.yaml evalset: unknown key(s) {unknown}; known: {sorted(known)}")
        fields_ = d.get("langid_fields") or {}
        if not isinstance(fields_, dict) or not all(
                isinstance(v, list) and v and all(isinstance(f, str) for f in v) for v in fields_.values()):
            raise ConfigError(f"params.yaml evalset.langid_fields: expected {{dataset: [field, ...]}}, got {fields_!r}")
        clean = d.get("clean") or {}
        if not isinstance(clean, dict):
            raise ConfigError(f"params.yaml evalset.clean: expected a mapping, got {clean!r}")
        return cls(clean=CleanConfig.from_dict(clean, where="evalset.clean"),
                   dedup=_section(DedupConfig.from_dict, d.get("dedup"), "dedup"),
                   langid=_section(LangIdConfig.from_dict, d.get("langid"), "langid"),
                   langid_fields={**DEFAULT_LANGID_FIELDS, **fields_},
                   heuristics=_section(HeuristicsConfig.from_dict, d.get("heuristics"), "heuristics"))

    def langid_for(self, dataset: str) -> LangIdConfig:
        return dataclasses.replace(self.langid, fields=list(self.langid_fields[dataset]))


def eval_rows(df: pl.DataFrame) -> pl.DataFrame:
    """The held-out rows of an ingest shard (the only rows the evaluation set reads)."""
    return df.filter(pl.col("split") == "eval")


def curation_clean(df: pl.DataFrame, cfg: EvalsetConfig) -> StepResult:
    """The clean stage's step with the evaluation set's own settings (`evalset.clean`)."""
    return clean_step(df, cfg.clean)


def curation_rules(df: pl.DataFrame, dataset: str, cfg: EvalsetConfig) -> StepResult:
    """First failing rule wins: record rules (instructions, comparisons), language ID, then
    (corpus) the heuristic rules. Kept rows gain `lang` and `lang_score`."""
    df = df.with_row_index("_order")
    results = []
    kept = df
    if dataset != "corpus":
        results.append(record_filter(kept, dataset))
        kept = results[-1].kept
    langid = cfg.langid_for(dataset)
    if langid.enabled:
        results.append(langid_filter(kept, langid))
        kept = results[-1].kept
    if dataset == "corpus" and cfg.heuristics.enabled:
        results.append(heuristic_filter(kept, cfg.heuristics))
        kept = results[-1].kept
    kept = kept.sort("_order").drop("_order")
    rejected = [r.rejected for r in results if r.rejected.height]
    if not rejected:
        return StepResult(kept, empty_rejects(kept))
    return StepResult(kept, pl.concat(rejected, how="diagonal_relaxed").sort("_order").drop("_order"))


def chain_metrics(steps: dict[str, dict]) -> dict:
    """Stage totals of curation steps run one after the other (each step's `rows_in` is the
    previous one's `rows_kept`): rows in of the first, kept of the last, rejects of all."""
    names = list(steps)
    for prev, nxt in zip(names, names[1:]):
        if steps[prev]["rows_kept"] != steps[nxt]["rows_in"]:
            raise AssertionError(f"evalset: {prev} kept {steps[prev]['rows_kept']} rows but {nxt} read "
                                 f"{steps[nxt]['rows_in']}")
    by_reason: dict[str, int] = {}
    for m in steps.values():
        for r, n in m["rejected_by_reason"].items():
            by_reason[r] = by_reason.get(r, 0) + n
    return {"rows_in": steps[names[0]]["rows_in"], "rows_kept": steps[names[-1]]["rows_kept"],
            "rows_rejected": sum(m["rows_rejected"] for m in steps.values()),
            "rejected_by_reason": dict(sorted(by_reason.items()))}
