"""`lmforge plots`: DVC's plots as PNG files, offline. `dvc plots show` writes an HTML page that
loads vega from the web (blank without a network); this renders the same Vega-Lite specs
(`dvc plots show --json`, or `dvc plots diff --json REV ...` to compare commits and experiments)
with vl-convert."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from flows._errors import UsageError


def plot_specs(dvc_json: dict) -> dict[str, dict]:
    """{plot name: Vega-Lite spec} from the JSON of `dvc plots show/diff --json` (vega plots only)."""
    specs = {}
    for name, entries in (dvc_json.get("data") or {}).items():
        for i, entry in enumerate(entries):
            if entry.get("type") == "vega" and isinstance(entry.get("content"), dict):
                specs[name if len(entries) == 1 else f"{name}-{i}"] = entry["content"]
    return specs


def png_name(plot: str) -> str:
    """A flat file name for a plot path (`plots/pretrain/gpt_val.csv` -> `plots_pretrain_gpt_val.png`)."""
    stem = re.sub(r"\.(csv|json|tsv|yaml)$", "", plot)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") + ".png"


def render_plots(dvc_json: dict, out_dir: Path, scale: float = 2.0) -> list[Path]:
    """Write one PNG per vega plot into `out_dir`; return the paths."""
    import vl_convert as vlc

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in plot_specs(dvc_json).items():
        path = out_dir / png_name(name)
        path.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
        written.append(path)
    return written


def add_plots_command(sub, dvc: Callable[..., object]) -> None:
    p = sub.add_parser("plots", help="render DVC's plots (loss curves, PPO scores) to PNG, offline")
    p.add_argument("targets", nargs="*", help="plot files (default: every plot in dvc.yaml)")
    p.add_argument("--rev", action="append", default=[],
                   help="compare revisions or experiments (repeat: --rev main --rev exp-1a2b3); default: workspace")
    p.add_argument("--out", default="plots/png", help="folder for the PNG files (default plots/png)")

    def run(args: argparse.Namespace) -> int:
        cmd = (["plots", "diff", "--json", *args.rev, *(["--targets", *args.targets] if args.targets else [])]
               if args.rev else ["plots", "show", "--json", *args.targets])
        out = dvc(*cmd, capture=True, check=False)
        if out.returncode != 0:
            raise UsageError(f"`dvc {' '.join(cmd)}` failed: {' '.join((out.stderr or out.stdout).split())[:300]}")
        written = render_plots(json.loads(out.stdout or "{}"), Path(args.out))
        if not written:
            raise UsageError("no plots to render: run the pipeline first (`make run`); plots come from the "
                             "pretrain and ppo stages")
        for path in written:
            print(path)
        return 0

    p.set_defaults(func=run)
