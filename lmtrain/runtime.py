"""One runtime for every training stage: device, dtype and autocast, DDP under torchrun, seeding,
threads, the learning-rate schedule, the optimizer and its step, and the collectives.

    rt = setup(device="auto", dtype="auto", seed=1337, threads=0)   # torchrun or a single process
    with rt.autocast():
        loss = model(rt.to_device(x), rt.to_device(y))[1]
    loss.backward()
    optimizer_step(optimizer, model.parameters(), grad_clip=1.0)

Pretraining and every alignment method (SFT, reward, DPO, PPO, their evaluation) run through it, so a
stage that works on a CPU runs on CUDA (bf16, TF32, pinned host memory) or MPS with other params.
Under torchrun the process group is always initialised, even at world size 1, so a one-rank NCCL
run exercises the same collectives as eight ranks; every collective goes through `all_gather` /
`all_reduce_mean` / `barrier` here, which put their tensors on the runtime's device (NCCL needs
CUDA tensors; gloo takes CPU ones).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "mps")


def under_torchrun() -> bool:
    """True when torchrun (or another launcher setting RANK/WORLD_SIZE/LOCAL_RANK) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda if available, else mps if available, else cpu; cuda -> this rank's GPU."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bfloat16 on CUDA, float32 elsewhere; else the named dtype."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False  # a process group is initialised (always under torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision in the runtime's dtype (a no-op in float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device: pinned and copied asynchronously on CUDA (no host sync)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the runtime's device; draw from it only on that device."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` (same shape everywhere), gathered on the runtime's device."""
        t = t.to(self.device)
        if not self.distributed:
            return [t]
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return parts

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of `t` over ranks, on the runtime's device (gloo has no AVG: sum, then divide)."""
        t = t.to(self.device)
        if self.distributed:
            dist.all_reduce(t)
            t = t / self.world
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(device_ids=[self.local_rank]) if self.device.type == "cuda" else dist.barrier()

    def close(self) -> None:
        """Leave the process group (after a final barrier)."""
        if self.distributed and dist.is_initialized():
            self.barrier()
            dist.destroy_process_group()
            self.distributed = False


def setup(device: str = "auto", dtype: str = "auto", seed: int = 1337, threads: int = 0) -> Runtime:
    """The runtime of this process: DDP under torchrun, the device and dtype, TF32, threads, seeds.

    Rank r seeds torch with seed + r (dropout differs per rank; data windows are seeded separately).
    """
    rank, world, local_rank, distributed = 0, 1, 0, False
    if under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before NCCL starts: one GPU per rank
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if under_torchrun():
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                    **({"device_id": dev} if dev.type == "cuda" else {}))
        distributed = True
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed + rank)
    return Runtime(dev, resolve_dtype(dtype, dev), rank, world, local_rank, distributed)


def cosine_lr(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to peak * min_ratio at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * min_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(model: nn.Module, weight_decay: float, learning_rate: float, betas: tuple[float, float],
          device_type: str) -> torch.optim.AdamW:
    """AdamW that decays only 2-D weights (matmuls, embeddings), never biases or norm gains; fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def check_finite(loss: torch.Tensor, what: str, step: int, hint: str = "") -> None:
    """Raise FloatingPointError naming the stage and step when `loss` is NaN or infinite (a host sync)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss is {float(loss)} at step {step}" + (f"; {hint}" if hint else ""))


def optimizer_step(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter], grad_clip: float) -> None:
    """Clip the global gradient norm (when grad_clip > 0), step, and free the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
