"""The Prefect UI works from every URL lmforge prints: a server started by lmforge (`lmforge ui`,
`make run`'s shared server) tells its UI to call the API on its own port, not Prefect's default 4200,
and `lmforge ui` takes its server down with it on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows._server import (
    DEFAULT_PORT,
    api_url,
    free_port,
    healthy,
    port_in_use,
    recorded_server_url,
    shared_server,
    ui_url,
    wait_healthy,
)
from tests.conftest import ROOT, python_env


def ui_settings(url: str) -> dict:
    """What the UI's JavaScript fetches first to learn where the API is."""
    with urllib.request.urlopen(f"{ui_url(url)}/ui-settings", timeout=10) as r:
        return json.loads(r.read())


def server_pids(port: int) -> list[int]:
    """Processes whose command line is a `prefect server start ... --port PORT`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in args and b"start" in args and b"--port" in args and str(port).encode() in args:
            pids.append(int(proc.name))
    return pids


def test_a_server_lmforge_starts_points_its_ui_at_its_own_port(prefect_server):
    assert not prefect_server.endswith(f":{DEFAULT_PORT}/api")  # a free port, as `make run` picks
    assert ui_settings(prefect_server)["api_url"] == prefect_server


@pytest.fixture(scope="module")
def lmforge_ui(tmp_path_factory):
    """`lmforge ui --port P` on a free, non-default port, as a user starts it."""
    port = free_port()
    home = tmp_path_factory.mktemp("ui-home")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], cwd=ROOT,
                            env=python_env(PREFECT_HOME=str(home)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_healthy(api_url(port), proc, timeout=180)
        yield proc, port, home
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in server_pids(port):
            os.kill(pid, signal.SIGKILL)


def test_lmforge_ui_serves_settings_with_its_port(lmforge_ui):
    _, port, _ = lmforge_ui
    assert ui_settings(api_url(port))["api_url"] == f"http://127.0.0.1:{port}/api"


def test_runs_land_on_lmforge_ui_whatever_its_port(lmforge_ui, monkeypatch):
    _, port, home = lmforge_ui
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_API_URL", "")  # unset for shared_server, restored afterwards
    with shared_server() as url:
        assert url == api_url(port) and not url.started


def test_sigterm_to_lmforge_ui_stops_its_server(lmforge_ui):
    proc, port, home = lmforge_ui
    assert server_pids(port), "the server child should be running before the signal"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    output = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, output
    assert "Prefect server stopped" in output
    assert server_pids(port) == []
    assert not port_in_use(port)
    assert not (home / "lmforge-server.json").exists()


def test_keep_server_leaves_the_run_server_up_for_later_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", "")  # unset for shared_server, restored afterwards
    if healthy(api_url(DEFAULT_PORT)):
        pytest.skip("a Prefect server on the default port would be reused, not started")
    with shared_server(log_path=tmp_path / "server.log", keep=True) as url:
        assert url.started and url.kept_pid
    try:
        assert healthy(url)
        assert recorded_server_url() == url
        assert ui_settings(url)["api_url"] == url
        with shared_server() as again:  # the next run lands on the same server
            assert again == url and not again.started
    finally:
        os.killpg(url.kept_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while healthy(url) and time.monotonic() < deadline:
            time.sleep(0.5)
