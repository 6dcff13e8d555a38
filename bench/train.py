"""Training throughput and utilisation (eager vs torch.compile vs bf16 autocast), KV-cache generation
speed, and the same training step against the code of another commit, measured in the same run.

    python bench/train.py [--quick] [--before DIR]   -> bench/results/train.json and a table on stdout

`--before DIR` (e.g. a `git worktree add /tmp/lmtrain-before <commit>`) times one eager float32
optimizer step of the tiny and shakespeare_char GPTs with DIR's lmtrain and with this one,
alternating subprocesses so both see the same machine load: `tokens_per_s_<config>_vs_before`.

Configs: `tiny` (the default CPU profile's GPT) and a shakespeare_char-sized GPT (6 layers, 6 heads,
384 wide, block 256, batch 64). Baseline for throughput: the same model eager in float32.
kv_cache_generation_speedup: generating 256 tokens with the KV cache vs recomputing the whole
context every step (block 512 holds the 64-token prompt + 256).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lmtrain.inference.generate import generate  # noqa: E402
from lmtrain.models.flops import device_spec_peak, flops_per_token, measured_matmul_peak  # noqa: E402
from lmtrain.models.gpt import GPT, GPT_CONFIGS, GPTConfig  # noqa: E402
from lmtrain.runtime import adamw  # noqa: E402

VARIANTS = {"eager_fp32": (False, torch.float32), "compile_fp32": (True, torch.float32),
            "eager_bf16": (False, torch.bfloat16), "compile_bf16": (True, torch.bfloat16)}


def train_tokens_per_s(cfg: GPTConfig, batch: int, steps: int, compile_: bool, dtype: torch.dtype,
                       device: torch.device) -> float:
    """Tokens per second of the median optimizer step, after three warm-up (and compile) steps."""
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = adamw(model, 0.1, 1e-4, (0.9, 0.95), device.type)
    run = torch.compile(model) if compile_ else model
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            _, loss = run(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):  # the median step: robust to other jobs on a shared machine
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch * cfg.block_size / sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generation_tokens_per_s(model: GPT, prompt: torch.Tensor, new: int, use_cache: bool) -> float:
    g = torch.Generator(device=prompt.device).manual_seed(0)
    generate(model, prompt, 8, use_cache=use_cache, generator=g)  # warm-up
    sync(prompt.device)
    t0 = time.perf_counter()
    generate(model, prompt, new, use_cache=use_cache, generator=g)
    sync(prompt.device)
    return new / (time.perf_counter() - t0)


# One eager fp32 optimizer step of a GPT, timed with whichever lmtrain is first on sys.path: the layout
# of this commit (lmtrain.models.gpt + lmtrain.runtime.adamw) or the flat one before it.
STEP_SCRIPT = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[5]))
try:
    from lmtrain.models.gpt import GPT, GPT_CONFIGS, GPTConfig
    from lmtrain.runtime import adamw
    make_opt = lambda m: adamw(m, 0.1, 1e-4, (0.9, 0.95), "cpu")
except ImportError:
    from lmtrain.model import GPT, GPT_CONFIGS, GPTConfig
    make_opt = lambda m: m.configure_optimizers(0.1, 1e-4, (0.9, 0.95), "cpu")
cfg = GPTConfig(**{**GPT_CONFIGS[sys.argv[2]], "vocab_size": 4096 if sys.argv[2] == "tiny" else 65, "dropout": 0.0})
batch, steps = int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = GPT(cfg)
opt = make_opt(model)
x = torch.randint(cfg.vocab_size, (batch, cfg.block_size))
times = []
for i in range(steps + 2):
    t0 = time.perf_counter()
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 2:
        times.append(time.perf_counter() - t0)
print(json.dumps({"tokens_per_s": batch * cfg.block_size / sorted(times)[len(times) // 2], "loss": float(loss)}))
"""


def step_tokens_per_s(root: Path, name: str, batch: int, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(root), name, str(batch), str(steps), str(threads)],
                         capture_output=True, text=True, check=True, env=env, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def before_after(before: Path, quick: bool, rounds: int = 3) -> list[dict]:
    """Eager fp32 step tokens/s with `before`'s lmtrain vs this one, alternating, best of `rounds` medians."""
    here = Path(__file__).resolve().parent.parent
    rows = []
    for name, batch, steps in (("tiny", 8 if quick else 32, 5 if quick else 10),
                               ("shakespeare_char", 4 if quick else 16, 3 if quick else 5)):
        best = {"before": 0.0, "after": 0.0}
        losses = {}
        for _ in range(rounds):
            for label, root in (("before", before), ("after", here)):
                r = step_tokens_per_s(root, name, batch, steps, threads=1)
                best[label] = max(best[label], r["tokens_per_s"])
                losses[label] = r["loss"]
        print(f"{name:17s} eager fp32 step: before {best['before']:10,.0f} tok/s, after {best['after']:10,.0f} "
              f"tok/s ({best['after'] / best['before']:.3f}x); loss after {steps + 2} steps {losses['before']:.6f} "
              f"vs {losses['after']:.6f}", flush=True)
        rows.append({"measure": f"tokens_per_s_{name}_vs_before", "ours": best["after"],
                     "baseline": f"the same step with the code at {before} (1 thread, best of {rounds} medians)",
                     "baseline_value": best["before"], "unit": "tokens/s", "ratio": best["after"] / best["before"]})
        rows.append({"measure": f"loss_{name}_vs_before", "ours": losses["after"], "baseline": "loss before",
                     "baseline_value": losses["before"], "unit": "nats",
                     "ratio": 1.0 if abs(losses["after"] - losses["before"]) <= 1e-4 else 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer steps")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit to time beside this one")
    parser.add_argument("--only-before", action="store_true", help="only the before/after comparison")
    args = parser.parse_args()
    if args.only_before:
        rows = before_after(args.before, args.quick)
        out = Path(__file__).resolve().parent / "results" / "train_before_after.json"
        out.write_text(json.dumps({"benchmark": "train_before_after", "before": str(args.before), "rows": rows},
                                  indent=2))
        print(f"wrote {out}")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peaks = {dtype: measured_matmul_peak(device, dtype, seconds=1.0) for dtype in (torch.float32, torch.bfloat16)}
    setups = {  # name: (config, batch, timed steps)
        "tiny": (GPTConfig(**{**GPT_CONFIGS["tiny"], "vocab_size": 4096, "dropout": 0.0}),
                 8 if args.quick else 32, 5 if args.quick else 10),
        "shakespeare_char": (GPTConfig(**{**GPT_CONFIGS["shakespeare_char"], "vocab_size": 65, "dropout": 0.0}),
                             8 if args.quick else 64, 3 if args.quick else 5),
    }
    rows = []
    for name, (cfg, batch, steps) in setups.items():
        fpt = flops_per_token(GPT(cfg), cfg.block_size)
        base = None
        for variant, (compile_, dtype) in VARIANTS.items():
            tps = train_tokens_per_s(cfg, batch, steps, compile_, dtype, device)
            base = base or tps
            mfu = tps * fpt / peaks[dtype]  # against the matmul measured here (no spec sheet on a CPU)
            print(f"{name:17s} {variant:13s} {tps:12,.0f} tok/s  matmul utilisation {100 * mfu:5.1f}%", flush=True)
            rows.append({"measure": f"tokens_per_s_{name}_{variant}", "ours": tps,
                         "baseline": f"{name} eager float32", "baseline_value": base, "unit": "tokens/s",
                         "ratio": tps / base})
            rows.append({"measure": f"matmul_utilisation_{name}_{variant}", "ours": mfu,
                         "baseline": f"measured {str(dtype).removeprefix('torch.')} matmul peak "
                                     f"{peaks[dtype] / 1e12:.2f} TFLOP/s; spec: {device_spec_peak(device, dtype)[0]}",
                         "baseline_value": 1.0, "unit": "fraction of peak", "ratio": mfu})

    torch.manual_seed(0)
    gen_cfg = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=65)
    model = GPT(gen_cfg).to(device).eval()
    prompt = torch.randint(65, (1, 64), device=device)
    cached = generation_tokens_per_s(model, prompt, 256, use_cache=True)
    recompute = generation_tokens_per_s(model, prompt, 256, use_cache=False)
    print(f"generation: KV cache {cached:,.0f} tok/s, full recompute {recompute:,.0f} tok/s, "
          f"speedup {cached / recompute:.1f}x")
    rows.append({"measure": "kv_cache_generation_speedup", "ours": cached, "baseline": "full recompute per token",
                 "baseline_value": recompute, "unit": "tokens/s", "ratio": cached / recompute})
    if args.before:
        rows += before_after(args.before, args.quick)

    out = Path(__file__).resolve().parent / "results" / "train.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "train", "device": str(device), "quick": args.quick, "rows": rows},
                              indent=2))
    print("\n| measure | ours | baseline | ratio |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['measure']} | {r['ours']:.4g} {r['unit']} | {r['baseline_value']:.4g} ({r['baseline']}) "
              f"| {r['ratio']:.2f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
