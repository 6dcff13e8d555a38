"""Find or start one Prefect server (bound to 127.0.0.1) so every stage of a run shares it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PORT = 4200
SERVER_RECORD = "lmforge-server.json"  # under PREFECT_HOME: the server `lmforge ui` or `run --keep-server` runs


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def ui_url(url: str) -> str:
    """The UI's address for an API URL (`http://127.0.0.1:PORT/api` -> `http://127.0.0.1:PORT`)."""
    return url.removesuffix("/").removesuffix("/api")


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


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def prefect_executable() -> str:
    exe = Path(sys.executable).parent / "prefect"
    return str(exe) if exe.exists() else "prefect"


def server_env(port: int) -> dict[str, str]:
    """Environment for a server on `port`. Prefect's UI asks `/ui-settings` where the API is, and the
    answer defaults to port 4200 whatever port the server runs on: set it to this server's API."""
    env = os.environ.copy()
    env["PREFECT_UI_API_URL"] = env["PREFECT_SERVER_UI_API_URL"] = api_url(port)
    return env


def start_server(port: int, log_path: Path | None = None, inherit_output: bool = False) -> subprocess.Popen:
    """Start `prefect server start --host 127.0.0.1` in the background, in its own process group (so
    `stop_server` reaches every process it starts). Output goes to `log_path`, the terminal
    (`inherit_output`) or nowhere."""
    if inherit_output:
        out = None
    else:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                            env=server_env(port), start_new_session=True)


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited after `timeout` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {url} was not healthy after {timeout:.0f} s")


class _Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_in_foreground(proc: subprocess.Popen) -> int:
    """Wait for a server started by `start_server`; on SIGTERM, SIGINT (Ctrl-C) or SIGHUP stop it
    (its whole process group) before returning, so no server outlives the command."""
    def stop(signum, _frame):
        raise _Stopped(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in handled}
    try:
        return proc.wait()
    except _Stopped:
        return 0
    finally:
        for s in handled:  # a second signal while stopping must not leave the server half-stopped
            signal.signal(s, signal.SIG_IGN)
        stop_server(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _server_record() -> Path:
    return Path(os.environ.get("PREFECT_HOME", ".prefect")) / SERVER_RECORD


def record_server(url: str, pid: int) -> None:
    """Note a long-lived server (`lmforge ui` on any port, `run --keep-server`) so runs find it."""
    _server_record().parent.mkdir(parents=True, exist_ok=True)
    _server_record().write_text(json.dumps({"url": url, "pid": pid}) + "\n")


def _read_record() -> dict:
    try:
        return json.loads(_server_record().read_text())
    except (OSError, ValueError):
        return {}


def forget_server(pid: int) -> None:
    """Remove the record if it is this server's."""
    if _read_record().get("pid") == pid:
        _server_record().unlink(missing_ok=True)


def recorded_server_url() -> str | None:
    """The API URL of the recorded server, if it still answers."""
    url = _read_record().get("url")
    return url if isinstance(url, str) and healthy(url) else None


class SharedServer(str):
    """The API URL (a str), plus whether this process started the server and left it running."""

    started: bool = False
    kept_pid: int | None = None


@contextlib.contextmanager
def shared_server(log_path: Path | None = None, keep: bool = False) -> Iterator[SharedServer]:
    """Yield the API URL of a Prefect server: the user's (`PREFECT_API_URL`, one started by `lmforge
    ui` on any port, or one an earlier `--keep-server` run left up), or one started here for the
    duration of the block, which `keep` leaves running afterwards (recorded under PREFECT_HOME so
    later runs land on it too)."""
    for url in filter(None, (os.environ.get("PREFECT_API_URL"), recorded_server_url(), api_url(DEFAULT_PORT))):
        if healthy(url):
            os.environ["PREFECT_API_URL"] = url
            yield SharedServer(url)
            return
    port = free_port()
    server = SharedServer(api_url(port))
    server.started = True
    proc = start_server(port, log_path)
    try:
        wait_healthy(server, proc)
        os.environ["PREFECT_API_URL"] = server
        if keep:
            server.kept_pid = proc.pid
            record_server(str(server), proc.pid)
        yield server
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        if server.kept_pid is None or proc.poll() is not None:
            stop_server(proc)
