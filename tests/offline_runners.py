"""Run the data stages on a tiny corpus with several task runners, inside a loopback-only network
namespace (Ray probes non-local addresses at start-up; nothing may leave the machine).

    unshare --net --pid --fork --kill-child --mount-proc \
        bash -c 'ip link set lo up && exec python -m tests.offline_runners OUT.json threads ray'

Refuses to start any runner unless a connect to 1.1.1.1 fails first. Writes, per runner kind, the
SHA-256 of every Parquet file it produced and the dedup metrics, for the caller to compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path


def network_is_offline() -> str | None:
    """None when 1.1.1.1 cannot be reached (the namespace holds), else what went wrong."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect(("1.1.1.1", 53))
        except OSError:
            return None
    return "connected to 1.1.1.1: not in a loopback-only network namespace"


def main(out: str, kinds: list[str]) -> None:
    problem = network_is_offline()
    if problem:
        raise SystemExit(problem)
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lmforge-prefect-"))
    from tests.test_flows import params_for, run_stages

    result = {}
    with tempfile.TemporaryDirectory(prefix="lmforge-runners-") as tmp:
        for kind in kinds:
            work = Path(tmp) / kind
            work.mkdir()
            os.chdir(work)
            params = params_for(work / "src", work / "data", kind)
            if kind == "ray":  # one local Ray for the four flows (each would start and stop its own)
                import ray

                from flows._stage import task_runner
                ray.init(**task_runner(params).init_kwargs)
            t0 = time.perf_counter()
            metrics = run_stages(params)
            seconds = time.perf_counter() - t0
            if kind == "ray":
                ray.shutdown()
            files = {str(p.relative_to(work / "data")): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted((work / "data").rglob("*.parquet"))}
            result[kind] = {"files": files, "rejected_by_reason": metrics["rejected_by_reason"], "seconds": seconds}
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
