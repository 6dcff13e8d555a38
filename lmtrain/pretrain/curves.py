"""Loss curves: CSV per split (DVC plots) and a PNG rendered offline with vl-convert (skipped, with a
note, where vl-convert is not installed)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_curves(history: dict, out_dir: Path) -> None:
    """curves/train.csv and curves/val.csv (DVC plots, x = step) and loss.png rendered offline."""
    curves = out_dir / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    for split, rows in history.items():
        if not rows:
            continue
        with open(curves / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    series = {"train": [(r["step"], r["train_loss"]) for r in history["train"]],
              "val": [(r["step"], r["val_loss"]) for r in history["val"]]}
    render_loss_png(series, out_dir / "loss.png")


def render_loss_png(series: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "loss") -> bool:
    """Line chart of named (step, loss) series to PNG with vl-convert (no browser, no network).

    Returns False, writing nothing, where vl-convert is not installed (a bare GPU image)."""
    try:
        import vl_convert
    except ImportError:
        print(f"vl-convert is not installed: {path} not rendered")
        return False
    values = [{"step": s, "loss": v, "series": name} for name, points in series.items() for s, v in points]
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title,
            "width": 480, "height": 300, "data": {"values": values}, "mark": "line",
            "encoding": {"x": {"field": "step", "type": "quantitative"},
                         "y": {"field": "loss", "type": "quantitative", "scale": {"zero": False}},
                         "color": {"field": "series", "type": "nominal"}}}
    Path(path).write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    return True
