"""Model FLOPs utilisation: FLOPs per token from the model shape, peak from a matmul measured in the same run."""

from __future__ import annotations

import time

import torch
import torch.nn as nn

# Dense (no sparsity) spec-sheet peaks, named beside the measured one in reports.
SPEC_PEAK_FLOPS: dict[str, float] = {
    "NVIDIA H100 SXM bf16": 989e12,
    "NVIDIA H100 PCIe bf16": 756e12,
    "NVIDIA H200 bf16": 989e12,
    "NVIDIA A100 bf16": 312e12,
}


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the matmuls (forward + backward) plus 12·L·d·T for attention.

    The PaLM appendix B estimate, as nanoGPT uses it; N excludes the position embedding (a lookup).
    """
    n = model.num_params(non_embedding=True)
    cfg = model.config
    if hasattr(cfg, "n_layer"):
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * seq_len
    if hasattr(cfg, "context"):  # MLP: the embedding table is a lookup, not a matmul
        n -= (cfg.vocab_size + 1) * cfg.n_embd
    else:  # bigram: a lookup only; count its softmax row as the work per token
        return 6.0 * cfg.vocab_size
    return 6.0 * n


def measured_matmul_peak(device: str | torch.device, dtype: torch.dtype, size: int | None = None,
                         seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul in `dtype` on `device`, the best of repeated timings."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up: kernel selection, caches, clocks
        a @ b
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2.0 * size**3 / best


def spec_peak_name(device: str | torch.device) -> str:
    """The spec-sheet peak to name beside a measured one ('none' on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "none (CPU: no spec-sheet peak; MFU uses the measured matmul peak)"
    gpu = torch.cuda.get_device_name(device)
    for name, flops in SPEC_PEAK_FLOPS.items():
        if all(word.lower() in gpu.lower() for word in name.split()[1:2]):
            return f"{name}: {flops / 1e12:.0f} TFLOP/s"
    return f"{gpu}: unknown spec-sheet peak"
