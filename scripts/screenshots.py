"""Screenshots of the Prefect UI after a run, for docs/: what a user sees.

    python scripts/screenshots.py --api http://127.0.0.1:4200/api --out docs/screenshots

Needs a running Prefect server that holds lmforge's runs (start `lmforge ui`, then `make run`) and
a headless Chromium (Debian: `apt-get install chromium`). Takes the runs list, the newest `filter`
flow run, the filter and alignment artifacts and the loss-curve artifact; a page that does not exist
on that server is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

PAGES = {  # file name -> (what, how to find it)
    "runs.png": ("the runs list", ("page", "/runs")),
    "flow-run-filter.png": ("the newest filter flow run", ("flow_run", "filter")),
    "artifact-filter.png": ("the filter report artifact", ("artifact", "filter-corpus-report")),
    "artifact-filter-table.png": ("the filter table artifact", ("artifact", "filter-corpus")),
    "artifact-align-eval.png": ("the alignment evaluation artifact", ("artifact", "align-eval-report")),
    "artifact-loss-curve.png": ("the pretraining loss curve", ("artifact", "pretrain-loss-curve")),
    "artifact-ppo-curve.png": ("PPO's score and KL per step", ("artifact", "ppo-curve")),
}


def post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def newest_flow_run(api: str, flow_name: str) -> str | None:
    runs = post(api, "/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}},
                                           "sort": "START_TIME_DESC", "limit": 1})
    return runs[0]["id"] if runs else None


def newest_artifact(api: str, key: str) -> str | None:
    arts = post(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}},
                                           "sort": "CREATED_DESC", "limit": 1})
    return arts[0]["id"] if arts else None


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("screenshots: no headless Chromium found (Debian: apt-get install chromium)")


def shoot(browser: str, url: str, out: Path, width: int = 1440, height: int = 1000) -> None:
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", "--virtual-time-budget=20000",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", required=True, help="the server's API URL, e.g. http://127.0.0.1:4200/api")
    ap.add_argument("--out", default="docs/screenshots")
    args = ap.parse_args(argv)
    api = args.api.rstrip("/")
    ui = api.removesuffix("/api")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    for name, (what, (kind, ref)) in PAGES.items():
        if kind == "page":
            path = ref
        elif kind == "flow_run":
            run_id = newest_flow_run(api, ref)
            path = f"/runs/flow-run/{run_id}" if run_id else None
        else:
            art_id = newest_artifact(api, ref)
            path = f"/artifacts/artifact/{art_id}" if art_id else None
        if path is None:
            print(f"screenshots: skipped {what}: {ref!r} not found on {ui}")
            continue
        shoot(browser, ui + path, out / name)
        print(f"screenshots: {what} -> {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
