"""`runner.kind: ray` (prefect-ray) and `dask` (prefect-dask): byte-identical to the local runner, started
only inside a loopback-only network namespace; with `runner.ray_address`, a data root every worker can see."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from flows._stage import task_runner
from lmdata.errors import ConfigError
from tests.conftest import ROOT, python_env


def loopback_namespace_works() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def test_ray_address_needs_an_absolute_shared_data_root(tmp_path):
    pytest.importorskip("prefect_ray")
    with pytest.raises(ConfigError, match="relative.*absolute path on storage every worker"):
        task_runner({"runner": {"kind": "ray", "ray_address": "ray://head:10001"}, "data": {"root": "data"}})
    with pytest.raises(ConfigError, match="under /tmp"):
        task_runner({"runner": {"kind": "ray", "ray_address": "ray://head:10001"},
                     "data": {"root": str(tmp_path / "data")}})
    shared = task_runner({"runner": {"kind": "ray", "ray_address": "ray://head:10001"},
                          "data": {"root": "/mnt/shared/lmforge/data"}})
    assert shared.address == "ray://head:10001"  # nothing started: the runner connects on first use


def test_local_ray_is_bound_to_loopback_without_dashboard():
    pytest.importorskip("prefect_ray")
    runner = task_runner({"runner": {"kind": "ray", "workers": 2}})
    assert runner.address is None
    assert runner.init_kwargs["_node_ip_address"] == "127.0.0.1"
    assert runner.init_kwargs["include_dashboard"] is False and runner.init_kwargs["num_cpus"] == 2


@pytest.mark.slow
def test_ray_and_dask_runners_give_byte_identical_outputs_offline(tmp_path):
    kinds = [k for k, mod in (("ray", "prefect_ray"), ("dask", "prefect_dask")) if importlib.util.find_spec(mod)]
    if not kinds:
        pytest.skip("neither prefect-ray nor prefect-dask is installed")
    if not loopback_namespace_works():
        pytest.skip("no loopback-only network namespace (unshare --net needs root): Ray and Dask are never "
                    "started outside one")
    out = tmp_path / "runs.json"
    script = 'ip link set lo up && exec "$@"'
    # its own network namespace (loopback only) and pid namespace: when the run ends or is killed, every
    # process it started (Ray's, Prefect's ephemeral server) goes with it
    proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", script,
                           "bash", sys.executable, "-m",
                           "tests.offline_runners", str(out), "threads", *kinds],
                          cwd=ROOT, env=python_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())
    threads = runs["threads"]
    assert len(threads["files"]) > 6 and sum(threads["rejected_by_reason"].values()) == 1
    for kind in kinds:
        assert runs[kind]["files"] == threads["files"], kind
        assert runs[kind]["rejected_by_reason"] == threads["rejected_by_reason"], kind
