"""Progress of a training loop: a tqdm bar with rate and ETA in the terminal, and the same records
passed to a callback (the flows move a Prefect progress artifact with it).

Every loop (pretraining, SFT, reward, judge, DPO, PPO) reports through `Progress`, one record per
optimizer step: {"step", ...statistics}. Figures are rounded for display; the callback gets them whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# figures that depend on the machine and its load, not on the inputs: kept out of model folders and DVC metrics
SPEED_KEYS = ("mfu", "matmul_utilisation", "peak_flops_measured", "host", "hostname")


def rounded(x: object, digits: int = 4) -> object:
    """Floats to `digits` significant digits (logs and bars); anything else as it is."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    return x


def is_timing(key: str) -> bool:
    """Wall times, throughput and utilisation: they differ between two runs of the same inputs."""
    return key == "seconds" or key.endswith(("_seconds", "_per_s", "_per_s_per_device")) or key in SPEED_KEYS


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """(metrics without timing fields, the timing fields), at any depth, nesting kept."""
    stable, timings = {}, {}
    for k, v in metrics.items():
        if is_timing(k):
            timings[k] = v
        elif isinstance(v, dict):
            stable[k], nested = split_timings(v)
            if nested:
                timings[k] = nested
        else:
            stable[k] = v
    return stable, timings


def throttled(callback: Callable[[dict], None], every_s: float = 1.0, every_pct: float = 1.0,
              clock: Callable[[], float] = time.monotonic) -> Callable[[dict], None]:
    """`callback` passed on at most once per `every_s` seconds and only when the fraction done moved by
    `every_pct` percent since the last call; the first and the last step (step == max_steps) always pass."""
    last = {"t": None, "pct": None}

    def update(record: dict) -> None:
        total, step = record.get("max_steps"), record.get("step")
        pct = 100.0 * step / total if total and step is not None else None
        now, final = clock(), pct is not None and pct >= 100.0
        if last["t"] is not None and not final:
            if now - last["t"] < every_s or (pct is not None and pct - last["pct"] < every_pct):
                return
        last["t"], last["pct"] = now, pct if pct is not None else 0.0
        callback(record)

    return update


class Progress:
    """`update(record)` after each step; `close()` at the end. The bar needs tqdm, the callback nothing."""

    def __init__(self, total: int, desc: str, show: bool = True, initial: int = 0,
                 on_progress: Callable[[dict], None] | None = None, unit: str = "step") -> None:
        self.total, self.on_progress = total, on_progress
        self.bar = None
        if show:
            try:
                from tqdm import tqdm
            except ImportError:  # a bare GPU image: no bar, the callback still runs
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)

    def update(self, record: dict, show: dict | None = None, callback: bool = True) -> None:
        """Advance the bar to record['step'] with `show` (default: the record's figures) beside it."""
        if self.bar is not None:
            fields = show if show is not None else {k: v for k, v in record.items() if k not in ("step", "epoch")}
            self.bar.set_postfix({k: rounded(v) for k, v in fields.items()}, refresh=False)
            self.bar.update(record["step"] - self.bar.n)
        if callback and self.on_progress is not None:
            self.on_progress({**record, "max_steps": self.total})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
