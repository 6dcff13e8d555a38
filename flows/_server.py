"""Find or start one Prefect server (bound to 127.0.0.1) so every stage of a run shares it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PORT = 4200


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_executable() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else "prefect"


def start_server(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """Start `prefect server start --host 127.0.0.1` in the background."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {url} was not healthy after {timeout:.0f} s")


@contextlib.contextmanager
def shared_server(log_path: Path | None = None) -> Iterator[str]:
    """Yield the API URL of a Prefect server: the user's (`PREFECT_API_URL`, or one on the default
    port started by `lmforge ui`), or one started here for the duration of the block."""
    for url in filter(None, (os.environ.get("PREFECT_API_URL"), api_url(DEFAULT_PORT))):
        if healthy(url):
            os.environ["PREFECT_API_URL"] = url
            yield url
            return
    port = free_port()
    url = api_url(port)
    proc = start_server(port, log_path)
    try:
        wait_healthy(url, proc)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
