"""The shared runtime: collectives on the runtime's device, the process group under torchrun at any
world size, generators used on their own device, MFU against named spec-sheet peaks, each rank
reading only its own rows."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

from lmtrain.data.shards import TokenShards, write_shard
from lmtrain.data.windows import RandomWindows
from lmtrain.inference.sampling import sample
from lmtrain.models.flops import spec_peak, utilisation
from lmtrain.pretrain.train import gather_rng
from lmtrain.runtime import Runtime, cosine_lr, setup


def test_collectives_put_their_tensors_on_the_runtime_device(monkeypatch):
    """The defect: RNG states were gathered into CPU buffers from GPU inputs, which NCCL rejects."""
    seen = []

    def fake_all_gather(outputs, tensor):
        seen.append([t.device.type for t in outputs] + [tensor.device.type])

    def fake_all_reduce(tensor):
        seen.append([tensor.device.type])

    monkeypatch.setattr(dist, "all_gather", fake_all_gather)
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    rt = Runtime(torch.device("meta"), torch.float32, rank=0, world=2, distributed=True)
    parts = rt.all_gather(torch.get_rng_state())  # a CPU tensor, as the RNG state is
    assert len(parts) == 2 and all(p.device.type == "meta" for p in parts)
    rt.all_reduce_mean(torch.ones(()))
    assert seen == [["meta", "meta", "meta"], ["meta"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_group_is_initialised_under_torchrun_even_at_world_size_one(monkeypatch):
    """The defect: with WORLD_SIZE 1 no process group was made, so a 1-rank NCCL run never ran a collective."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    rt = setup(device="cpu", dtype="float32", seed=3, threads=0)
    try:
        assert rt.distributed and dist.is_initialized() and dist.get_world_size() == 1
        states = gather_rng(rt)  # a real gloo all_gather
        assert set(states) == {"rng.cpu.0"} and torch.equal(states["rng.cpu.0"], torch.get_rng_state())
    finally:
        rt.close()
    assert not dist.is_initialized()


def test_single_process_runtime_needs_no_process_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    rt = setup(device="cpu", dtype="auto", seed=5)
    assert (rt.distributed, rt.world, rt.dtype, rt.device.type) == (False, 1, torch.float32, "cpu")
    assert torch.equal(rt.all_gather(torch.arange(3))[0], torch.arange(3))
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        setup(device="cpu", dtype="fp8")


def test_one_lr_schedule():
    assert cosine_lr(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert cosine_lr(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_a_generator_draws_only_on_its_own_device():
    """The defect: a CUDA generator was used to draw on the CPU (killing the engine thread)."""
    with pytest.raises(ValueError, match="generator on cpu cannot draw for logits on meta"):
        sample(torch.randn(2, 10, device="meta"), 1.0, generator=torch.Generator())
    logits = torch.randn(2, 10)
    g = torch.Generator().manual_seed(0)
    assert sample(logits, 1.0, top_k=3, generator=g).shape == (2, 1)


def test_engine_draws_seeded_uniforms_on_the_generators_device(monkeypatch):
    from lmtrain.inference import engine as engine_mod
    from lmtrain.inference.engine import Engine, SamplingParams, wait_idle
    from lmtrain.models.gpt import GPT, GPTConfig

    real_rand = torch.rand
    calls = []

    def checked_rand(*args, generator=None, device=None, **kw):
        if generator is not None:
            calls.append(device)
            assert device == generator.device, "a seeded draw must happen on the generator's device"
        return real_rand(*args, generator=generator, device=device, **kw)

    monkeypatch.setattr(engine_mod.torch, "rand", checked_rand)

    class Bytes:
        def token_bytes(self, i):
            return bytes([i % 256])

    eng = Engine(GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16)), Bytes())
    done = []
    eng.submit([1, 2, 3], SamplingParams(max_tokens=4, seed=7), lambda e: done.append(e) if e.finish_reason else None)
    assert wait_idle(eng)
    eng.shutdown()
    assert calls and done and done[0].finish_reason == "length"


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
])
def test_spec_peaks_are_matched_by_name(name, peak):
    label, flops = spec_peak(name, torch.bfloat16)
    assert flops == peak and f"{peak / 1e12:.0f} TFLOP/s" in label
    assert spec_peak(name, torch.float32)[1] is None


def test_mfu_is_per_device_against_the_spec_peak(monkeypatch):
    """The defect: all ranks' tokens/s were divided by one device's peak, and the peak was a timed matmul."""
    import lmtrain.models.flops as flops

    monkeypatch.setattr(flops, "device_spec_peak", lambda device, dtype: ("NVIDIA H100 SXM bf16 dense: 989", 989e12))
    u = utilisation(8e5 / 8, 1e8, "cuda", torch.bfloat16, matmul_peak=700e12)
    assert u["mfu"] == pytest.approx(1e5 * 1e8 / 989e12)
    assert u["matmul_utilisation"] == pytest.approx(1e5 * 1e8 / 700e12)


def test_each_rank_reads_only_its_own_rows(tmp_path):
    """The defect: every rank read the whole global batch from disk and kept a slice."""
    write_shard(tmp_path / "s", np.arange(5000) % 97, vocab_size=97, n_bytes=5000, documents=1, eot_id=96)
    shards = TokenShards(tmp_path)
    full = RandomWindows(shards, 16, seed=1).rank_batches(4, 2, rank=0, world=1)
    read = []
    for rank in (0, 1):
        w = RandomWindows(shards, 16, seed=1)
        original = w._read
        w._read = lambda rows, original=original: (read.append(len(rows)), original(rows))[1]
        mine = w.rank_batches(2, 2, rank=rank, world=2)
        for a, (x, _) in enumerate(mine):
            assert torch.equal(x, full[a][0][rank * 2:rank * 2 + 2])
    assert read == [2, 2, 2, 2]  # micro-batch rows only, never the 8-row global batch
