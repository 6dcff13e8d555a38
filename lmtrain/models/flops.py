"""Model FLOPs utilisation.

MFU = per-device tokens/s × training FLOPs per token ÷ the device's spec-sheet peak in that dtype
(dense, named: H100/H200 SXM bf16 989 TFLOP/s). A CPU has no spec sheet, so there, and as a second
figure everywhere, `matmul_utilisation` divides the same numerator by a large matmul timed in the
same run.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' spec sheets, matched against
# torch.cuda.get_device_name in this order (the first pattern whose words all appear wins), so
# "NVIDIA H100 PCIe" is never taken for the SXM part ("NVIDIA H100 80GB HBM3").
SPEC_PEAKS: tuple[tuple[str, str, float], ...] = (
    ("H200 NVL", "NVIDIA H200 NVL bf16 dense", 835e12),
    ("H200", "NVIDIA H200 SXM bf16 dense", 989e12),
    ("H100 PCIe", "NVIDIA H100 PCIe bf16 dense", 756e12),
    ("H100 NVL", "NVIDIA H100 NVL bf16 dense", 835e12),
    ("H100", "NVIDIA H100 SXM bf16 dense", 989e12),
    ("A100", "NVIDIA A100 bf16 dense", 312e12),
    ("L40S", "NVIDIA L40S bf16 dense", 362e12),
)


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


def spec_peak(device_name: str, dtype: torch.dtype) -> tuple[str, float | None]:
    """(name, FLOP/s) of the spec-sheet peak for a device name and dtype; (reason, None) where none applies."""
    if dtype not in (torch.bfloat16, torch.float16):
        return f"{device_name}: no {str(dtype).removeprefix('torch.')} spec peak listed (bf16/fp16 only)", None
    lowered = device_name.lower()
    for pattern, name, flops in SPEC_PEAKS:
        if all(word.lower() in lowered for word in pattern.split()):
            return f"{name}: {flops / 1e12:.0f} TFLOP/s", flops
    return f"{device_name}: unknown spec-sheet peak", None


def device_spec_peak(device: str | torch.device, dtype: torch.dtype) -> tuple[str, float | None]:
    """spec_peak for a torch device; a CPU has none."""
    device = torch.device(device)
    if device.type != "cuda":
        return "none (CPU/MPS: no spec-sheet peak; see matmul_utilisation)", None
    return spec_peak(torch.cuda.get_device_name(device), dtype)


def utilisation(tokens_per_s_per_device: float, flops_token: float, device: str | torch.device,
                dtype: torch.dtype, matmul_peak: float) -> dict:
    """{'mfu' (None without a spec peak), 'peak_flops_spec', 'matmul_utilisation', 'peak_flops_measured'}."""
    name, peak = device_spec_peak(device, dtype)
    achieved = tokens_per_s_per_device * flops_token
    return {"mfu": achieved / peak if peak else None, "peak_flops_spec": name,
            "matmul_utilisation": achieved / matmul_peak if matmul_peak else None,
            "peak_flops_measured": matmul_peak}
