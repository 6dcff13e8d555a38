"""Progress of a training loop: a tqdm bar with rate and ETA in the terminal, and the same records
passed to a callback (the flows move a Prefect progress artifact with it).

Every loop (pretraining, SFT, reward, judge, DPO, PPO) reports through `Progress`, one record per
optimizer step: {"step", ...statistics}. Figures are rounded for display; the callback gets them whole.
"""

from __future__ import annotations

from collections.abc import Callable


def rounded(x: object, digits: int = 4) -> object:
    """Floats to `digits` significant digits (logs and bars); anything else as it is."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    return x


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
