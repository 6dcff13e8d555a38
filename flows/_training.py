"""The Prefect half of the training stages: each section's config checked before any work, the
`python -m flows.<module> STAGE` entry point, metrics split into DVC-tracked figures and uncached
timings, a throttled progress artifact fed by lmtrain's `on_progress`, and curves as PNG artifacts."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows._stage import load_params, metrics_path, timings_path
from lmdata.atomic import write_json
from lmdata.errors import ConfigError
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.config import build_config
from lmtrain.progress import split_timings, throttled


def config(cls, params: dict, section: str):
    """A config dataclass from `params[section]`, type-checked; unknown keys fail before any work."""
    try:
        return build_config(cls, params.get(section), section)
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e


def stage_main(doc: str, stages: dict[str, Callable[[dict], dict]], argv: list[str] | None = None) -> dict:
    """`python -m flows.<module> STAGE [--params params.yaml]`: run one of `stages` on the params file."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("stage", choices=sorted(stages))
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    return stages[args.stage](load_params(args.params))


def write_train_metrics(stage: str, metrics: dict, merge: bool = False) -> dict:
    """`metrics/<stage>.json` without wall times, throughput or utilisation (same inputs, same bytes:
    DVC and git see no change on a rerun); those go to the uncached `metrics/timings/<stage>.json`.
    `merge` keeps the other top-level entries of both files (pretraining `--only` one model)."""
    stable, timings = split_timings(json.loads(json.dumps(metrics, default=str)))
    path, tpath = metrics_path(stage, None), timings_path(stage, None)
    if merge:
        stable = {**(json.loads(path.read_text()) if path.exists() else {}), **stable}
        timings = {**(json.loads(tpath.read_text()) if tpath.exists() else {}), **timings}
    write_json(path, stable)
    if timings:
        write_json(tpath, timings)
    return stable


def ui_progress(key: str, description: str, every_s: float = 1.0, every_pct: float = 1.0) -> Callable[[dict], None]:
    """An `on_progress` callback for lmtrain's loops that moves a Prefect progress artifact, at most
    once per `every_s` seconds and per `every_pct` percent (records carry `step` and `max_steps`)."""
    artifact = create_progress_artifact(progress=0.0, key=key, description=description)

    def update(record: dict) -> None:
        step, total = record.get("step"), record.get("max_steps")
        if step is not None and total:
            update_progress_artifact(artifact, progress=min(100.0, 100.0 * step / total))

    return throttled(update, every_s, every_pct)


def render_ppo_png(log_csv: Path, png: Path, method: str = "PPO") -> bool:
    """Judge-free training curve of PPO or RLOO (`method`): the reward model's mean score and the KL to the
    SFT policy per step, as two panels, rendered offline with vl-convert. False (nothing written) without a
    log or vl-convert."""
    import csv

    if not log_csv.exists():
        return False
    try:
        import vl_convert
    except ImportError:
        return False
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    values = [{"step": int(r["step"]), "value": float(r[k]), "series": name}
              for r in rows for k, name in (("score", "reward-model score"), ("kl", "KL to SFT (nats)"))]
    if not values:
        return False
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "facet": {"row": {"field": "series", "type": "nominal", "title": None}},
            "resolve": {"scale": {"y": "independent"}},
            "spec": {"width": 480, "height": 160, "mark": {"type": "line", "point": True},
                     "encoding": {"x": {"field": "step", "type": "quantitative"},
                                  "y": {"field": "value", "type": "quantitative", "scale": {"zero": False},
                                        "title": None}}},
            "title": f"{method}: score and KL per step"}
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    return True


def render_curve_png(points: list[dict], png: Path) -> bool:
    """The over-optimisation curve: proxy (reward model) and held-out (judge) score, each as the change from
    SFT, and chrF against the reference, over the KL to SFT, one column per method. False without vl-convert."""
    try:
        import vl_convert
    except ImportError:
        return False
    base = {(p["method"]): p for p in points if p["step"] == 0}
    values = []
    for p in points:
        b = base.get(p["method"], p)
        values += [{"method": p["method"], "step": p["step"], "kl": p["kl"], "panel": "score change from SFT",
                    "series": "proxy (reward model)", "value": p["proxy_score"] - b["proxy_score"]},
                   {"method": p["method"], "step": p["step"], "kl": p["kl"], "panel": "score change from SFT",
                    "series": "held-out (judge)", "value": p["judge_score"] - b["judge_score"]},
                   {"method": p["method"], "step": p["step"], "kl": p["kl"], "panel": "chrF vs reference",
                    "series": "chrF", "value": p["chrf"]}]
    if not values:
        return False
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "data": {"values": values},
            "facet": {"row": {"field": "panel", "type": "nominal", "title": None},
                      "column": {"field": "method", "type": "nominal", "title": None}},
            "resolve": {"scale": {"y": "independent"}},
            "spec": {"width": 300, "height": 170, "mark": {"type": "line", "point": True},
                     "encoding": {"x": {"field": "kl", "type": "quantitative", "title": "KL to SFT (nats per reply)"},
                                  "y": {"field": "value", "type": "quantitative", "scale": {"zero": False},
                                        "title": None},
                                  "color": {"field": "series", "type": "nominal", "title": None},
                                  "order": {"field": "step", "type": "quantitative"},
                                  "tooltip": [{"field": "step"}, {"field": "kl"}, {"field": "value"}]}},
            "title": "Over-optimisation: proxy vs held-out reward against KL (dev prompts)"}
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
    return True
