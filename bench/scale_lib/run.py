"""One measured pipeline run: ingest → evalset → clean → dedup → filter on a generated corpus, in this
process, with the task runner the params name; per stage CPU seconds (this process and every
descendant: task-runner workers, Ray workers), wall seconds and peak working memory.

    python -m bench.scale_lib.run PARAMS.yaml OUT.json        (for Ray: inside a loopback-only namespace)

A sampler thread reads /proc every 0.2 s: each process's RSS and CPU time. Task processes (process-pool
and Ray workers) are told apart from orchestration (the Prefect server, Ray's raylet/GCS) by their
command line; the CPU of orchestration is reported apart and not counted as stage work. One Prefect
server on loopback serves the driver and every worker (a spawned worker would otherwise start its own). Peaks of
processes shorter than the sampling period can be missed; the driver's own peak comes from the sampler
too (its RSS before each stage subtracted). A worker's working memory is its peak RSS minus `import_rss_mb`,
the RSS of a fresh interpreter that imported the five flows (and Ray, for Ray runs).

With Ray or Dask it refuses to start unless every connect in `OFF_MACHINE` fails (the caller runs it in a
loopback-only network namespace) and records each error, and where Ray's node is bound, in the output.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

STAGES = ["ingest", "evalset", "clean", "dedup", "filter"]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
ORCHESTRATION = ("prefect", "uvicorn", "raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py",
                 "runtime_env", "ray_client", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
# Addresses Ray may probe at start-up (public DNS, cloud metadata) and one more public host: none may connect.
OFF_MACHINE = (("1.1.1.1", 53), ("8.8.8.8", 53), ("169.254.169.254", 80), ("140.82.112.3", 443))


def off_machine_connects() -> dict[str, str]:
    """Try a TCP connect to every `OFF_MACHINE` address; raise if one succeeds, else return each error."""
    errors = {}
    for host, port in OFF_MACHINE:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            try:
                s.connect((host, port))
            except OSError as exc:
                errors[f"{host}:{port}"] = f"{type(exc).__name__}: {exc}"
                continue
        raise SystemExit(f"connected to {host}:{port}: not in a loopback-only network namespace, refusing to start")
    return errors


def import_rss_mb(kind: str) -> float:
    """RSS (MB) of a fresh interpreter after importing the five stage flows (and Ray for Ray runs): what a
    worker holds before any task, subtracted from its peak to give its working memory."""
    mods = [f"flows.{name}" for name in STAGES] + (["ray"] if kind == "ray" else [])
    code = (f"import {', '.join(mods)}, os; "
            "print(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def proc_table() -> dict[int, tuple[int, float, float, str]]:
    """pid -> (parent pid, RSS MB, CPU seconds, command line) for every process visible."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            rss = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * PAGE / 1e6
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), rss, (int(fields[11]) + int(fields[12])) / TICK, cmd[:200])
    return out


class Sampler(threading.Thread):
    """Per descendant process: peak RSS and last CPU seconds; per stage: the driver's peak RSS."""

    def __init__(self, period: float = 0.2):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.procs: dict[int, dict] = {}
        self.driver_peak = 0.0
        self.lock = threading.Lock()

    def sample(self) -> None:
        table = proc_table()
        me = os.getpid()
        mine = {me}
        changed = True
        while changed:  # descendants: walk parent links until nothing new joins
            changed = False
            for pid, (ppid, *_rest) in table.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        with self.lock:
            for pid in mine:
                _, rss, cpu, cmd = table[pid]
                if pid == me:
                    self.driver_peak = max(self.driver_peak, rss)
                    continue
                p = self.procs.setdefault(pid, {"cmd": cmd, "peak_mb": 0.0, "first_mb": rss, "cpu": 0.0})
                p["peak_mb"], p["cpu"], p["alive"] = max(p["peak_mb"], rss), cpu, True

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.period)

    def snapshot(self) -> dict[int, dict]:
        with self.lock:
            return {pid: dict(p) for pid, p in self.procs.items()}

    def reset_peaks(self) -> None:
        with self.lock:
            self.driver_peak = 0.0
            for p in self.procs.values():
                p["peak_mb"] = 0.0


def is_orchestration(cmd: str) -> bool:
    return any(k in cmd for k in ORCHESTRATION) and "default_worker" not in cmd


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def input_bytes(folder: Path) -> tuple[int, int]:
    """(documents, UTF-8 text bytes) of a stage's input shards (kept rows only)."""
    import polars as pl

    files = sorted(folder.glob("*.parquet"))
    if not files:
        return 0, 0
    df = pl.scan_parquet(files).select(pl.len().alias("n"), pl.col("text").str.len_bytes().sum().alias("b")).collect()
    return int(df["n"][0]), int(df["b"][0] or 0)


def run(params: dict, out: Path) -> dict:
    from flows._stage import task_runner

    stage_flows = {}
    for name in STAGES:
        mod = __import__(f"flows.{name}", fromlist=["x"])
        stage_flows[name] = getattr(mod, "filter_stage" if name == "filter" else name)
    root = Path(params["data"]["root"])
    kind = params["runner"]["kind"]
    sampler = Sampler()
    sampler.start()
    network = off_machine_connects() if kind in ("ray", "dask") else None
    baseline = import_rss_mb(kind)
    ray_bound = None
    if kind == "ray":  # one local Ray for every stage (inside the caller's loopback-only namespace)
        import ray

        init_kwargs = task_runner(params).init_kwargs
        ray.init(**init_kwargs)
        ray_bound = {"node_addresses": sorted({n["NodeManagerAddress"] for n in ray.nodes()}),
                     "include_dashboard": init_kwargs.get("include_dashboard"),
                     "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED")}
        if ray_bound["node_addresses"] != ["127.0.0.1"]:
            raise SystemExit(f"Ray is not bound to loopback only: {ray_bound}")
    inputs = {"ingest": None, "evalset": root / "ingest" / "corpus", "clean": root / "ingest" / "corpus",
              "dedup": root / "clean" / "corpus", "filter": root / "dedup" / "corpus"}
    stages = []
    for name in STAGES:
        docs_in, bytes_in = input_bytes(inputs[name]) if inputs[name] else (None, None)
        sampler.sample()
        before = sampler.snapshot()
        sampler.reset_peaks()
        driver_rss0 = proc_table()[os.getpid()][1]
        w0, c0, ch0 = time.perf_counter(), time.process_time(), children_cpu()
        metrics = stage_flows[name].with_options(task_runner=task_runner(params))("corpus", params)
        wall, own, reaped = time.perf_counter() - w0, time.process_time() - c0, children_cpu() - ch0
        sampler.sample()
        after = sampler.snapshot()
        task_cpu = orch_cpu = 0.0
        workers, detail = [], []
        for pid, p in after.items():
            delta = p["cpu"] - before.get(pid, {}).get("cpu", 0.0)
            if is_orchestration(p["cmd"]):
                orch_cpu += delta
                continue
            if Path(f"/proc/{pid}").exists():
                task_cpu += delta  # alive: not in RUSAGE_CHILDREN
            if p["peak_mb"] > 0:
                workers.append(round(p["peak_mb"], 1))
                detail.append({"pid": pid, "peak_mb": round(p["peak_mb"], 1), "cpu_s": round(delta, 2),
                               "cmd": p["cmd"][:120]})
        stage = {"stage": name, "wall_s": wall, "cpu_s": own + reaped + task_cpu, "driver_cpu_s": own,
                 "worker_cpu_s": reaped + task_cpu, "orchestration_cpu_s": orch_cpu,
                 "driver_work_mb": max(0.0, sampler.driver_peak - driver_rss0), "driver_rss_mb": sampler.driver_peak,
                 "worker_peak_rss_mb": sorted(workers, reverse=True)[:8],
                 "processes": sorted(detail, key=lambda d: -d["peak_mb"])[:8],
                 "rows_in": metrics.get("rows_in"), "rows_kept": metrics.get("rows_kept"),
                 "rejected_by_reason": metrics.get("rejected_by_reason"), "docs_in": docs_in, "bytes_in": bytes_in}
        stages.append(stage)
        out.write_text(json.dumps({"runner": params["runner"], "stages": stages, "import_rss_mb": baseline,
                                   "network_check": network, "ray": ray_bound, "partial": True}, indent=1))
        print(f"  {name:8s} wall {wall:7.1f} s  cpu {stage['cpu_s']:7.1f} s  (orchestration {orch_cpu:5.1f})  "
              f"driver work {stage['driver_work_mb']:6.0f} MB  workers {stage['worker_peak_rss_mb'][:3]}  "
              f"kept {stage['rows_kept']} of {stage['rows_in']}", flush=True)
    sampler.stop.set()
    if kind == "ray":
        ray.shutdown()
    result = {"runner": params["runner"], "stages": stages, "import_rss_mb": baseline, "network_check": network,
              "ray": ray_bound}
    out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    params = yaml.safe_load(Path(sys.argv[1]).read_text())
    os.chdir(Path(sys.argv[1]).parent)  # flows write metrics/ relative to the working directory
    # One Prefect server on loopback for the driver and every worker (as `make run` does): without it,
    # each spawned worker process would start its own temporary server.
    from flows._server import api_url, free_port, start_server, stop_server, wait_healthy

    port = free_port()
    server = start_server(port, Path("prefect-server.log").resolve())
    try:
        wait_healthy(api_url(port), server, timeout=600)
        os.environ["PREFECT_API_URL"] = api_url(port)
        run(params, Path(sys.argv[2]).resolve())
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
