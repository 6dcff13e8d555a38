"""Per-step recall and precision of the data steps on planted noise, before any training.

Inputs: the label table the `plant` stage writes (`data/plant/labels.parquet`) and what each data
stage did to the corpus — its reject files (`data/<stage>/corpus/rejected/`, reason per row) and, for
clean, the rows it rewrote (the `clean` column: step → bytes removed). Each reject reason or rewrite
belongs to one *step* (`STEP_OF_REASON`; heuristic rules are one step, `heuristics`).

- recall(step, kind) = planted documents of `kind` the step removed (or rewrote, for clean's markup
  and mojibake repair) / those that reached it (not removed by an earlier step). Near copies are
  split by their measured Jaccard bin.
- precision(step) = removals attributable to planting / all the step's removals (for a step that only
  rewrites, such as clean's HTML extraction: planted rewrites / all its rewrites).

A duplicate pair can be resolved either way: dedup keeps the longer document, then the smaller id,
so it may drop the base document and keep its planted copy. Such a removal (reason_detail = the kept
copy, whose label names the removed row as its origin) counts for that copy: the copy is caught and
the removal is a true positive.

    python -m flows.plant report [--root data] [--out reports/noise]
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from lmdata.plant import KINDS
from lmdata.shards import REJECTED_DIR, list_shards

STAGES = ("clean", "dedup", "filter", "balance")
STEP_OF_REASON = {"exact_dup": "exact dedup", "near_dup": "minhash", "eval_overlap": "eval overlap",
                  "lang": "langid", "quality": "quality", "downsampled": "balance"}
CLEAN_REWRITES = ("mojibake", "wikitext", "html")
STEP_ORDER = ("clean: mojibake", "clean: wikitext", "clean: html", "clean: redirect", "clean: disambiguation",
              "clean: empty_after_clean", "exact dedup", "minhash", "eval overlap", "langid", "heuristics",
              "quality", "balance")
TARGET_STEP = {"exact_copy": "exact dedup", "near_copy": "minhash", "non_english": "langid",
               "boilerplate": "heuristics", "markup": "clean: html", "code_table": "heuristics",
               "fragment": "heuristics"}
AIM = 0.9  # issue 16: recall and precision at least this on the kind a step targets
EVENT_SCHEMA = {"id": pl.Utf8, "step": pl.Utf8, "removes": pl.Boolean, "reason": pl.Utf8, "detail": pl.Utf8}


def step_of(stage: str, reason: str) -> str:
    """The step a stage's reject reason belongs to (heuristic rules are one step)."""
    if stage == "clean":
        return f"clean: {reason}"
    if reason in STEP_OF_REASON:
        return STEP_OF_REASON[reason]
    if stage == "filter" and (reason.startswith(("gopher_", "c4_")) or reason == "empty"):
        return "heuristics"
    return f"{stage}: {reason}"


def _read(paths: list[Path], columns: list[str]) -> pl.DataFrame:
    frames = [pl.read_parquet(p, columns=columns) for p in paths]
    frames = [f for f in frames if f.height]
    return pl.concat(frames) if frames else pl.DataFrame(schema={c: pl.Utf8 for c in columns})


def step_events(root: Path, dataset: str = "corpus", stages: tuple[str, ...] = STAGES) -> pl.DataFrame:
    """Every removal (and clean rewrite) of the stages' outputs under `root`: id, step, removes, reason, detail."""
    root = Path(root)
    parts = []
    for stage in stages:
        folder = root / stage / dataset
        if not folder.is_dir():
            continue
        rej = _read(sorted((folder / REJECTED_DIR).glob("*.parquet")), ["id", "reason", "reason_detail"])
        if rej.height:
            steps = [step_of(stage, r) for r in rej["reason"].to_list()]
            parts.append(rej.select(pl.col("id"), pl.Series("step", steps, dtype=pl.Utf8),
                                    pl.lit(True).alias("removes"), pl.col("reason"),
                                    pl.col("reason_detail").alias("detail")))
        if stage == "clean":
            shards = [p for p in list_shards(folder) if "clean" in pl.read_parquet_schema(p)]
            kept = _read(shards, ["id", "clean"])
            rows = [(i, f"clean: {k}", False, k, None) for i, c in zip(kept["id"], kept["clean"], strict=True)
                    for k, v in (json.loads(c) if c else {}).items() if k in CLEAN_REWRITES and v]
            if rows:
                parts.append(pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row"))
    return pl.concat(parts) if parts else pl.DataFrame(schema=EVENT_SCHEMA)


def kind_column(kind: str, jbin: str | None) -> str:
    return f"near_copy {jbin}" if kind == "near_copy" and jbin else kind


def column_order(column: str) -> tuple:
    """Kinds in `KINDS` order (unknown kinds last), near-copy bins by Jaccard ascending."""
    kind, _, jbin = column.partition(" ")
    rank = KINDS.index(kind) if kind in KINDS else len(KINDS)
    return rank, jbin.replace("<", " "), column


def ordered_steps(steps) -> list[str]:
    known = [s for s in STEP_ORDER if s in steps]
    return known + sorted(s for s in steps if s not in STEP_ORDER)


def recall_precision(labels: pl.DataFrame, events: pl.DataFrame) -> dict:
    """The measured table: per step, per kind column, planted documents reached / caught / recall, and
    per step removals / attributable / precision (see the module docstring). Plain dicts, JSON-ready."""
    label_of = {r["id"]: r for r in labels.to_dicts()}
    origin_of = {r["id"]: r["origin"] for r in labels.to_dicts() if r["origin"]}  # copies; pages built on a host
    columns = sorted({kind_column(r["kind"], r["jaccard_bin"]) for r in label_of.values()}, key=column_order)
    caught: dict[str, dict[str, set]] = {}   # step -> column -> planted ids caught
    precision: dict[str, dict[str, int]] = {}
    for ev in events.to_dicts():
        step, rid = ev["step"], ev["id"]
        p = precision.setdefault(step, {"removed": 0, "attributable": 0, "rewritten": 0, "planted_rewritten": 0})
        p["removed" if ev["removes"] else "rewritten"] += 1
        target = rid if rid in label_of else None
        keeper = ev["detail"]
        if target is None and keeper in origin_of and origin_of[keeper] == rid:
            target = keeper  # the base document went, its planted copy stayed: the pair is resolved
        if target is not None:
            p["attributable" if ev["removes"] else "planted_rewritten"] += 1
            lab = label_of[target]
            caught.setdefault(step, {}).setdefault(kind_column(lab["kind"], lab["jaccard_bin"]), set()).add(target)
    steps = ordered_steps(set(precision))
    totals = {c: {i for i, r in label_of.items() if kind_column(r["kind"], r["jaccard_bin"]) == c} for c in columns}
    removed_before: set[str] = set()
    table = []
    for step in steps:
        row = {"step": step, **precision[step], "kinds": {}}
        hits, total = (row["attributable"], row["removed"]) if row["removed"] else (row["planted_rewritten"], row["rewritten"])
        row["precision"] = round(hits / total, 4) if total else None  # a rewrite-only step: planted share of rewrites
        for c in columns:
            reached = totals[c] - removed_before
            got = caught.get(step, {}).get(c, set()) & reached
            row["kinds"][c] = {"planted": len(totals[c]), "reached": len(reached), "caught": len(got),
                               "recall": round(len(got) / len(reached), 4) if reached else None}
        table.append(row)
        if precision[step]["removed"]:
            removed_before |= {i for c in columns for i in caught.get(step, {}).get(c, set())}
    kept = {c: len(totals[c] - removed_before) for c in columns}
    return {"columns": columns, "steps": table, "planted": {c: len(totals[c]) for c in columns},
            "survived": kept, "aims": aims(table)}


def aims(table: list[dict]) -> list[dict]:
    """Each kind's target step, its recall on that kind and the step's precision. Near copies are
    scored twice: every bin, and the bins at or above 0.8 (MinHash's 14 x 8 bands put the middle of
    their S-curve at 0.72: below it, missing a pair is the setting, not a fault)."""
    out = []
    by_step = {r["step"]: r for r in table}
    targets = [(kind, kind, step, None) for kind, step in TARGET_STEP.items()]
    targets.insert(2, ("near_copy J>=0.8", "near_copy", "minhash", ("0.8-0.9", "0.9-1.0")))
    for name, kind, step, bins in targets:
        row = by_step.get(step)
        cells = [v for c, v in (row["kinds"].items() if row else [])
                 if c.split(" ")[0] == kind and (bins is None or c.partition(" ")[2] in bins)]
        reached, got = sum(v["reached"] for v in cells), sum(v["caught"] for v in cells)
        recall = round(got / reached, 4) if reached else None
        prec = row["precision"] if row else None
        out.append({"kind": name, "step": step, "reached": reached, "caught": got, "recall": recall,
                    "precision": prec, "met": recall is not None and prec is not None and recall >= AIM and prec >= AIM})
    return out


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def markdown(result: dict) -> str:
    """The recall table (steps × kinds, caught/reached), the precision column and the aims."""
    cols = result["columns"]
    lines = ["| step | removed | precision | " + " | ".join(cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    for r in result["steps"]:
        cells = [f"{_fmt(v['recall'])} ({v['caught']}/{v['reached']})" if v["caught"] else
                 ("0" if v["reached"] else "–") for v in r["kinds"].values()]
        removed = f"{r['removed']}" + (f" (+{r['rewritten']} rewritten)" if r["rewritten"] else "")
        lines.append(f"| {r['step']} | {removed} | {_fmt(r['precision'])} | " + " | ".join(cells) + " |")
    lines.append("| *kept by every step* | | | " + " | ".join(str(result["survived"][c]) for c in cols) + " |")
    lines += ["", "| kind | target step | recall | precision | aim (≥ 0.9 both) |", "|---|---|---:|---:|---|"]
    for a in result["aims"]:
        lines.append(f"| {a['kind']} | {a['step']} | {_fmt(a['recall'])} ({a['caught']}/{a['reached']}) | "
                     f"{_fmt(a['precision'])} | {'met' if a['met'] else 'missed'} |")
    return "\n".join(lines)


def heatmap(result: dict, path: Path) -> Path:
    """Recall per step × kind as a heat map (precision as the last column), rendered to PNG with
    vl-convert (offline; the same renderer as `lmforge plots`)."""
    import vl_convert as vlc

    cols = [*result["columns"], "precision"]
    values = []
    for r in result["steps"]:
        for c in result["columns"]:
            v = r["kinds"][c]["recall"]
            if v is not None:
                values.append({"step": r["step"], "kind": c, "value": v, "label": f"{v:.2f}"})
        if r["precision"] is not None:
            values.append({"step": r["step"], "kind": "precision", "value": r["precision"],
                           "label": f"{r['precision']:.2f}"})
    enc = {"x": {"field": "kind", "type": "nominal", "sort": cols, "title": "planted kind (recall) | precision"},
           "y": {"field": "step", "type": "nominal", "sort": [r["step"] for r in result["steps"]], "title": None}}
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "title": "recall of each data step on each planted kind; last column: the step's precision",
            "width": 46 * len(cols), "height": 24 * len(result["steps"]), "encoding": enc,
            "layer": [{"mark": "rect", "encoding": {"color": {"field": "value", "type": "quantitative",
                                                              "scale": {"domain": [0, 1], "scheme": "viridis"},
                                                              "title": "share"}}},
                      {"mark": {"type": "text", "fontSize": 9}, "encoding": {
                          "text": {"field": "label"},
                          "color": {"condition": {"test": "datum.value > 0.5", "value": "black"}, "value": "white"}}}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vlc.vegalite_to_png(spec, scale=2))
    return path


def plant_report(root: Path, out: Path, dataset: str = "corpus") -> dict:
    """Measure recall/precision from the stage outputs under `root` and the labels in
    `root/plant/labels.parquet`; write `out/recall.{md,json,png}`; return the result."""
    root, out = Path(root), Path(out)
    labels_path = root / "plant" / "labels.parquet"
    if not labels_path.exists():
        raise FileNotFoundError(f"no plant labels at {labels_path}: run the plant stage with plant.enabled: true")
    labels = pl.read_parquet(labels_path)
    if labels.is_empty():
        raise ValueError(f"{labels_path} is empty: plant.enabled was false when the stage ran")
    result = recall_precision(labels, step_events(root, dataset))
    out.mkdir(parents=True, exist_ok=True)
    (out / "recall.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "recall.md").write_text(markdown(result) + "\n")
    heatmap(result, out / "recall.png")
    return result
