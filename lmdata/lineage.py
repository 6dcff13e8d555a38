"""Lineage over every stage's kept and rejected shards, as DuckDB views, and `why` in words.

Views: `<stage>_<dataset>` (kept rows), `<stage>_<dataset>_rejected`, and `lineage` — one row per
(stage, dataset, status, document) with the reason where it was dropped. "Why was X dropped?":

    SELECT stage, reason, reason_detail, reason_value FROM lineage
    WHERE id = 'X' AND status = 'rejected'

`explain` turns those rows into one line per stage with the rule, the measured value, the
threshold and the setting that decided it. Thresholds come from the params the stage ran with:
its entry in dvc.lock when there is one, else params.yaml, else the config defaults; the rule ->
setting map is `lmdata.filters.explain` (the same one the filter stage's report uses).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import yaml

# Pipeline order. `evalset` curates the held-out rows (data/evalset/<dataset>) before dedup, which
# decontaminates the training side against it; clean sits between ingest and dedup.
STAGES = ("ingest", "clean", "evalset", "dedup", "filter", "balance")
LINEAGE_COLUMNS = ("id", "content_hash", "source", "locator", "split", "n_bytes")
# Kept-row columns worth showing in `why` (where the stage has them).
DETAIL_COLUMNS = ("lang", "lang_score", "quality_score", "repeats")
# The clean stage's rejections and the switch that turns each off (lmdata.clean.CleanConfig).
CLEAN_SWITCHES = {"redirect": "redirects", "disambiguation": "disambiguation", "empty_after_clean": "enabled"}


def _has_parquet(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.parquet"))


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}


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
                have = _columns(con, view)
                reasons = ("reason, reason_detail, reason_value" if status == "rejected" else
                           "NULL::VARCHAR AS reason, NULL::VARCHAR AS reason_detail, "
                           "NULL::DOUBLE AS reason_value")
                cols = ", ".join(c if c in have else f"NULL AS {c}" for c in LINEAGE_COLUMNS)
                parts.append(f"SELECT '{stage}' AS stage, '{ds_dir.name}' AS dataset, '{status}' AS status, "
                             f"{cols}, {reasons} FROM \"{view}\"")
    if parts:
        con.execute("CREATE OR REPLACE VIEW lineage AS " + " UNION ALL BY NAME ".join(parts))
    labels = Path(data_root) / "plant" / "labels.parquet"  # the planted-noise study's labels (lmdata.plant)
    if labels.is_file():
        path = str(labels).replace("'", "''")
        con.execute(f"CREATE OR REPLACE VIEW plant_labels AS SELECT * FROM read_parquet('{path}')")
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()]


def why(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[tuple]:
    """Every stage a document (by id or id prefix) went through, in pipeline order."""
    if "lineage" not in views(con):
        return []
    order = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES))
    return con.execute(
        f"SELECT stage, dataset, status, id, reason, reason_detail, reason_value, split, source FROM lineage "
        f"WHERE id LIKE ? || '%' ORDER BY id, CASE stage {order} END, status", [doc_id]).fetchall()


def _kept_details(con: duckdb.DuckDBPyConnection, stage: str, dataset: str, doc_id: str) -> dict:
    view = f"{stage}_{dataset}"
    cols = [c for c in DETAIL_COLUMNS if c in _columns(con, view)]
    if not cols:
        return {}
    row = con.execute(f'SELECT {", ".join(cols)} FROM "{view}" WHERE id = ? LIMIT 1', [doc_id]).fetchone()
    return {c: v for c, v in zip(cols, row or ()) if v is not None}


def stage_params(stage: str, dataset: str, params: dict, lock: dict) -> dict:
    """The params a stage ran with: params.yaml's, overlaid with the sections dvc.lock recorded for
    `<stage>@<dataset>` (what produced the data, even if params.yaml changed since)."""
    entry = (lock.get("stages", {}) or {}).get(f"{stage}@{dataset}") or {}
    return {**params, **((entry.get("params", {}) or {}).get("params.yaml") or {})}


def _load_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def _fmt(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def explain_reason(stage: str, dataset: str, reason: str, detail: str | None, value: float | None,
                   params: dict) -> str:
    """`rule (measured op setting threshold)` for one rejection."""
    from lmdata.filters.explain import heuristic_setting, langid_setting
    from lmdata.filters.heuristics import HeuristicsConfig, rule_names
    from lmdata.filters.langid import LangIdConfig
    from lmdata.filters.quality import QualityConfig

    section = params.get(stage, {}) or {}
    if stage in ("filter", "evalset") and reason == "lang":
        cfg = LangIdConfig.from_dict(section.get("langid"))
        return f"lang ({langid_setting(detail, value, cfg, f'{stage}.langid').describe(value, f'{detail} ')})"
    if stage in ("filter", "evalset") and reason in rule_names(HeuristicsConfig()):
        cfg = HeuristicsConfig.from_dict(section.get("heuristics"))
        return f"{reason} ({heuristic_setting(reason, value, cfg, f'{stage}.heuristics').describe(value)})"
    if stage == "filter" and reason == "quality":
        cfg = QualityConfig.from_dict(section.get("quality"))
        cut = (detail or "").removeprefix("threshold=")
        if cfg.keep_mode == "threshold":
            return f"quality (score {_fmt(value)} < filter.quality.threshold {cfg.threshold})"
        return (f"quality (score {_fmt(value)} < {_fmt(float(cut)) if cut else '?'}, the cut that keeps the top "
                f"filter.quality.top_fraction {cfg.top_fraction} of training scores)")
    if reason in ("exact_dup", "near_dup", "eval_overlap"):
        return f"{reason} ({_dedup_words(reason, detail, value, params, stage)})"
    if stage == "balance" and reason == "downsampled":
        cfg = params.get("balance", {}).get(dataset, {}) or {}
        how = ", ".join(f"{k} {cfg[k]}" for k in ("mode", "temperature", "weights", "total_tokens") if cfg.get(k))
        return (f"downsampled (source {detail} is over its mixture share; balance.{dataset}: {how or 'defaults'}; "
                f"metrics/balance/{dataset}.json has every source's tokens before and after)")
    if stage in ("clean", "evalset") and reason in CLEAN_SWITCHES:
        prefix = "evalset.clean" if stage == "evalset" else "clean"
        key = CLEAN_SWITCHES[reason]
        on = ((section.get("clean") if stage == "evalset" else section) or {}).get(key, True)
        return f"{reason} ({detail + '; ' if detail else ''}{prefix}.{key} {str(on).lower()})"
    if stage == "ingest" and reason == "too_large":
        limit = params.get("ingest", {}).get("max_doc_bytes")
        return f"too_large ({_fmt(value) + ' bytes ' if value is not None else ''}> ingest.max_doc_bytes {limit})"
    parts = [p for p in (detail, None if value is None else _fmt(value)) if p]
    return f"{reason} ({'; '.join(parts)})" if parts else reason


def _dedup_words(reason: str, keeper: str | None, value: float | None, params: dict, stage: str) -> str:
    from lmdata.dedup import DedupConfig

    section = (params.get("evalset", {}) or {}).get("dedup") if stage == "evalset" else params.get("dedup")
    prefix = "evalset.dedup" if stage == "evalset" else "dedup"
    if reason == "exact_dup":
        return f"same normalised text as {keeper}; {prefix}.exact, {prefix}.normalize"
    mh = DedupConfig.from_dict(section).minhash
    lsh = (1 / mh.bands) ** (1 / mh.rows)
    what = "overlaps evaluation document" if reason == "eval_overlap" else "near-duplicate of"
    return (f"{what} {keeper}, estimated Jaccard {_fmt(value) if value is not None else '?'} >= "
            f"{prefix}.minhash.threshold {mh.threshold} (LSH {mh.bands} bands x {mh.rows} rows, midpoint "
            f"{lsh:.2f})" + ("; decontamination is always on" if reason == "eval_overlap" else ""))


def explain_kept(stage: str, dataset: str, split: str | None, details: dict, params: dict) -> str:
    """What a stage measured on a document it kept."""
    if stage in ("filter", "balance") and split == "eval":
        done = {"filter": "filtered", "balance": "balanced"}[stage]
        return f"passed through untouched (evaluation split: not {done} here; the evalset stage curates it)"
    words = []
    if stage in ("filter", "evalset") and "lang" in details:
        from lmdata.filters.langid import LangIdConfig

        cfg = LangIdConfig.from_dict((params.get(stage, {}) or {}).get("langid"))
        words.append(f"lang {details['lang']} {_fmt(details.get('lang_score', 0.0))} >= "
                     f"{stage}.langid.min_score {cfg.min_score}")
    if stage == "filter" and "quality_score" in details:
        words.append(f"quality score {_fmt(details['quality_score'])}")
    if stage == "balance" and "repeats" in details:
        words.append(f"emitted x{details['repeats']} (repeats)")
    if stage == "evalset":
        words.append("in the evaluation set")
    return "kept" + (f" ({'; '.join(words)})" if words else "")


def planted(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[str]:
    """A planted document's label (data/plant/labels.parquet: kind, origin, measured Jaccard, detail) and
    the step meant to catch its kind (docs/NOISE.md); nothing for any other document."""
    if "plant_labels" not in views(con):
        return []
    from lmdata.plant_recall import TARGET_STEP

    cols = _columns(con, "plant_labels")
    pick = ", ".join(c if c in cols else f"NULL AS {c}" for c in ("kind", "origin", "jaccard", "detail"))
    row = con.execute(f"SELECT {pick} FROM plant_labels WHERE id = ? LIMIT 1", [doc_id]).fetchone()
    if row is None:
        return []
    kind, origin, jaccard, detail = row
    what = [f"origin {origin}" if origin else None, f"Jaccard {_fmt(jaccard)} to it" if jaccard is not None else None,
            detail or None]
    words = "; ".join(w for w in what if w)
    return [f"  planted {kind}{f' ({words})' if words else ''}: the step meant to catch it is "
            f"{TARGET_STEP.get(kind, 'none named')} (docs/NOISE.md)"]


def explain(con: duckdb.DuckDBPyConnection, doc_id: str, params_path: Path = Path("params.yaml"),
            lock_path: Path = Path("dvc.lock")) -> list[str]:
    """One line per (document, stage): `stage dataset: kept (...)` or `... rejected rule (...)`."""
    lines, last = [], None
    base, lock = _load_yaml(Path(params_path)), _load_yaml(Path(lock_path))
    for stage, dataset, status, full_id, reason, detail, value, split, source in why(con, doc_id):
        if full_id != last:
            lines.append(f"{full_id}  (source {source}, split {split})")
            lines += planted(con, full_id)
            last = full_id
        params = stage_params(stage, dataset, base, lock)
        if status == "rejected":
            text = "rejected " + explain_reason(stage, dataset, reason, detail, value, params)
        else:
            text = explain_kept(stage, dataset, split, _kept_details(con, stage, dataset, full_id), params)
        lines.append(f"  {stage} {dataset}: {text}")
    return lines
