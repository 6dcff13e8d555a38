"""The suite's results as a table (one row per model) and as one picture of every model side by side."""

from __future__ import annotations

from pathlib import Path

from lmtrain.evaluate.suite import centred


def score_rows(results: dict[str, dict], index: dict[str, dict], core_metric: str) -> list[dict]:
    """One row per model: params, bpb, each task's acc (and acc_norm), the CORE-style aggregate."""
    rows = []
    for model, r in results.items():
        row = {"model": model, "params": r.get("params"), "eval bpb": r.get("eval_bpb")}
        for task in index:
            t = r["tasks"][task]
            row[f"{task} acc"] = t["acc"]
            if t["acc_norm"] is not None:
                row[f"{task} acc_norm"] = t["acc_norm"]
            if t.get("target_bpb") is not None:
                row[f"{task} bits/byte"] = t["target_bpb"]
        row[f"CORE ({core_metric})"] = r["core"]
        rows.append(row)
    return rows


def plot_values(results: dict[str, dict], core_metric: str) -> list[dict]:
    """{model, panel, score}: each task's centred accuracy, CORE, and bits per byte (its own panel)."""
    values = []
    for model, r in results.items():
        for task, t in r["tasks"].items():
            acc = t[core_metric] if t.get(core_metric) is not None else t["acc"]
            values.append({"model": model, "panel": task, "score": centred(acc, t["chance"])})
        values.append({"model": model, "panel": "CORE", "score": r["core"]})
        if r.get("eval_bpb") is not None:
            values.append({"model": model, "panel": "bits per byte (lower is better)", "score": r["eval_bpb"]})
    return values


def render_scores_png(results: dict[str, dict], core_metric: str, path: str | Path) -> bool:
    """Bars of every model per task (centred accuracy), CORE and bpb, rendered offline with vl-convert.
    False, writing nothing, where vl-convert is not installed."""
    try:
        import vl_convert
    except ImportError:
        print(f"vl-convert is not installed: {path} not rendered")
        return False
    values = plot_values(results, core_metric)
    order = list(results)
    panels = list(dict.fromkeys(v["panel"] for v in values))
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "title": {"text": "evaluation suite", "subtitle": "tasks and CORE: centred accuracy "
                      "(acc − chance)/(1 − chance), 0 = chance; last panel: bits per byte"},
            "facet": {"column": {"field": "panel", "type": "nominal", "sort": panels, "title": None}},
            "resolve": {"scale": {"y": "independent"}},
            "spec": {"width": 110, "height": 220, "mark": "bar",
                     "encoding": {"x": {"field": "model", "type": "nominal", "sort": order, "title": None},
                                  "y": {"field": "score", "type": "quantitative", "title": None},
                                  "color": {"field": "model", "type": "nominal", "sort": order, "legend": None},
                                  "tooltip": [{"field": "model"}, {"field": "score", "format": ".3f"}]}}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    return True
