"""GPU check for a lent machine (run by scripts/gpu_check.sh): every training stage on the GPU, in bf16.

    python bench/gpu.py --prepare            # here, on a CPU: tokenizer, token shards, alignment JSONL
    python bench/gpu.py                      # on the GPU: the checks below -> bench/results/gpu.json
    python bench/gpu.py --cpu-dry-run        # the same checks shrunk, on a CPU -> gpu_cpu_dry_run.json

Checks, within ~8 minutes on an H100/H200:
1. pretraining: GPT-2 124M shape (12 x 12 x 768, block 1024, embedding padded to GPT-2's 50,304 rows;
   tokens from the sample's 4,096-token BPE), bf16, torch.compile, micro-batch 16 x 1024 without
   accumulation, 300 steps -> tokens/s, MFU against the spec-sheet peak, matmul utilisation, loss falling;
2. `torchrun --nproc_per_node 1` (NCCL): train 20 steps with a checkpoint at 10, and 10 + resume to 20
   in another folder -> the two loss histories and final weights agree;
3. SFT, reward, DPO and PPO a few steps each in bf16 on the GPU, from the step-2 checkpoint;
4. seeded sampling through the inference engine: the same seed gives the same text.
Needs only torch, numpy, safetensors and tiktoken on the machine (no Prefect/DVC/polars/pyarrow/regex);
the assets come from `--prepare` (carried in .cache/gpu_check/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ASSETS = ROOT / ".cache" / "gpu_check"
SAMPLE = ROOT / ".cache" / "tests" / "raw" / "shakespeare"


def prepare(assets: Path = ASSETS, max_mb: float = 6.0) -> None:
    """Tokenizer (BPE 4,096 trained on the Shakespeare sample), train/eval token shards, alignment JSONL."""
    from lmtrain.data.shards import write_token_shard
    from lmtrain.tokenizer import train_bpe

    files = sorted(SAMPLE.rglob("*_gut.txt"))
    if not files:
        raise SystemExit(f"no *_gut.txt under {SAMPLE}: run the tests once (raw_sample fixture) to fetch the sample")
    texts, size = [], 0
    for f in files:
        t = f.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        texts.append(t)
        size += len(t)
        if size > max_mb * 1e6:
            break
    tok = train_bpe([t[:300_000] for t in texts], vocab_size=4096)
    tok.save(assets / "tokenizer")
    docs = [p for t in texts for p in t.split("\n\n") if len(p) > 200]
    write_token_shard(docs[len(docs) // 20:], tok, assets / "tokens" / "train" / "part-0.bin")
    write_token_shard(docs[:len(docs) // 20], tok, assets / "tokens" / "eval" / "part-0.bin")
    lines = [ln.strip() for t in texts[:4] for ln in t.splitlines() if len(ln.strip()) > 30]
    ins, cmp = [], []
    for i in range(0, min(len(lines) - 2, 2400), 3):
        k = i // 3
        split = "eval" if k % 10 == 0 else "train"
        prompt, reply, wrong = f"Continue: {lines[i]}", lines[i + 1], lines[(i + 997) % len(lines)]
        ins.append({"id": f"i{k:05d}", "split": split, "prompt": prompt, "response": reply, "messages": None})
        cmp.append({"id": f"c{k:05d}", "split": split, "prompt": prompt, "chosen": reply, "rejected": wrong})
    for name, rows in (("instructions", ins), ("comparisons", cmp)):
        for folder, part in ((name, rows), (f"{name}_small", rows[:120])):  # small: the CPU dry run
            (assets / folder).mkdir(parents=True, exist_ok=True)
            (assets / folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    print(f"prepared {assets}: {len(docs)} documents, {len(ins)} instructions, {len(cmp)} comparisons")


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": "cpu"}
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count(),
                    memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def pretrain_benchmark(assets: Path, out: Path, dry: bool) -> dict:
    """GPT-2 124M shape, block 1024, bf16, compiled, micro-batch 16 x 1024, ~300 steps (dry: tiny)."""
    from lmtrain.pretrain.train import TrainConfig, train

    cfg = TrainConfig(model="gpt", config="smoke" if dry else "gpt2", vocab_multiple=50304,
                      batch_size=4 if dry else 16, block_size=128 if dry else 1024, max_steps=8 if dry else 300,
                      learning_rate=6e-4, warmup_steps=2 if dry else 30, beta2=0.95, weight_decay=0.1,
                      dtype="bfloat16", device="cpu" if dry else "cuda", compile=not dry, threads=0,
                      log_interval=2 if dry else 25, eval_interval=8 if dry else 300, eval_batches=2,
                      eval_batch_size=4 if dry else 16, mc_items=0, resume=False, progress=False)
    t0 = time.perf_counter()
    m = train(cfg, assets / "tokens" / "train", assets / "tokens" / "eval", out / "pretrain")
    history = json.loads((out / "pretrain" / "checkpoint" / "state.json").read_text())["history"]["train"]
    losses = [r["train_loss"] for r in history]
    return {"config": cfg.config, "params": m["params"], "block_size": cfg.block_size, "micro_batch": cfg.batch_size,
            "steps": m["steps"], "tokens_per_s": m["tokens_per_s"], "mfu": m["mfu"],
            "peak_flops_spec": m["peak_flops_spec"], "matmul_utilisation": m["matmul_utilisation"],
            "peak_flops_measured": m["peak_flops_measured"], "flops_per_token": m["flops_per_token"],
            "loss_first": losses[0], "loss_last": losses[-1], "loss_falling": losses[-1] < losses[0] - 0.5,
            "eval_bpb": m["eval_bpb"], "seconds": time.perf_counter() - t0,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def torchrun_resume(assets: Path, out: Path, dry: bool) -> dict:
    """One-rank torchrun (NCCL on a GPU, gloo on a CPU) through a checkpoint and an exact resume."""
    torchrun = Path(sys.executable).with_name("torchrun")
    base = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node", "1",
            "-m", "lmtrain.pretrain.train", "--model", "gpt", "--config", "smoke" if dry else "tiny",
            "--train-dir", str(assets / "tokens" / "train"), "--eval-dir", str(assets / "tokens" / "eval"),
            "--batch-size", "8", "--log-interval", "1", "--eval-interval", "10", "--eval-batches", "2",
            "--mc-items", "0", "--dtype", "bfloat16", "--device", "cpu" if dry else "cuda", "--progress", "false",
            "--threads", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(steps: int, folder: str, extra: list[str]) -> None:
        subprocess.run([*base, "--max-steps", str(steps), "--out", str(out / folder), *extra], check=True, env=env,
                       cwd=ROOT, stdout=subprocess.DEVNULL)

    t0 = time.perf_counter()
    run(20, "straight", ["--checkpoint-interval", "10", "--resume", "false"])
    run(10, "resumed", ["--resume", "false"])
    run(20, "resumed", ["--resume", "true"])
    from lmtrain.models.checkpoint import load_model

    hist = {k: json.loads((out / k / "checkpoint" / "state.json").read_text())["history"]["train"]
            for k in ("straight", "resumed")}
    a, b = (load_model(out / k / "checkpoint") for k in ("straight", "resumed"))
    weight_diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))
    loss_diff = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(hist["straight"], hist["resumed"]))
    return {"backend": "gloo" if dry else "nccl", "steps": 20, "checkpoint_at": 10,
            "max_loss_difference": loss_diff, "max_weight_difference": weight_diff,
            "exact": loss_diff == 0.0 and weight_diff == 0.0, "seconds": time.perf_counter() - t0}


def alignment(assets: Path, out: Path, dry: bool) -> dict:
    """SFT, reward, DPO and PPO a few steps each in bf16 on the device, from the torchrun checkpoint."""
    from lmtrain.align.dpo import DPOConfig, train_dpo
    from lmtrain.align.ppo import PPOConfig, train_ppo
    from lmtrain.align.reward import RewardConfig, train_reward
    from lmtrain.align.sft import SFTConfig, train_sft
    from lmtrain.models.bundle import attach_tokenizer

    init = out / "straight" / "checkpoint"
    attach_tokenizer(init, assets / "tokenizer")
    common = {"device": "cpu" if dry else "cuda", "dtype": "bfloat16", "threads": 0, "progress": False}
    small = "_small" if dry else ""
    ins, cmp = assets / f"instructions{small}", assets / f"comparisons{small}"
    batch = 16 if dry else 64
    res, t = {}, time.perf_counter()
    m = train_sft(SFTConfig(epochs=1, batch_size=batch, samples=2, sample_max_new_tokens=16, **common), init, ins, ins,
                  out / "sft")
    res["sft"] = {k: m[k] for k in ("steps", "eval_loss_before", "eval_loss")} | {"seconds": time.perf_counter() - t}
    sft = out / "sft" / "checkpoint"
    t = time.perf_counter()
    m = train_reward(RewardConfig(epochs=1, batch_size=batch, **common), sft, cmp, cmp, out / "reward")
    res["reward"] = {k: m[k] for k in ("steps", "accuracy")} | {"seconds": time.perf_counter() - t}
    t = time.perf_counter()
    m = train_dpo(DPOConfig(epochs=1, batch_size=batch, micro_batch_size=batch // 4, subset="half_a", **common), sft, cmp, cmp,
                  out / "dpo")
    res["dpo"] = {k: m.get(k) for k in ("steps", "train_loss", "eval_loss")} | {"seconds": time.perf_counter() - t}
    t = time.perf_counter()
    m = train_ppo(PPOConfig(steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=16, **common), sft,
                  out / "reward" / "checkpoint", ins, out / "ppo")
    res["ppo"] = {k: m.get(k) for k in ("steps", "stopped", "last_score", "last_kl")} | {"seconds": time.perf_counter() - t}
    return res


def engine_sampling(out: Path, dry: bool) -> dict:
    """Seeded requests through the engine on the device: the same seed, the same text."""
    from lmtrain.inference.engine import Engine, SamplingParams, wait_idle
    from lmtrain.models.bundle import load_bundle

    device = "cpu" if dry else "cuda"
    model, tok = load_bundle(out / "sft" / "checkpoint", device)
    eng = Engine(model.to(device), tok, max_batch_size=8)
    texts: dict[int, list[str]] = {}

    def ask(i: int, seed: int | None) -> None:
        texts[i] = []
        eng.submit(tok.encode("Continue: To be, or not"), SamplingParams(max_tokens=24, temperature=1.0, top_k=50,
                                                                         top_p=0.9, seed=seed),
                   lambda e, i=i: texts[i].append(e.text))

    t0 = time.perf_counter()
    for i, seed in enumerate([7, None, 7, None, 11]):
        ask(i, seed)
    idle = wait_idle(eng, 60)
    eng.shutdown()
    joined = {i: "".join(v) for i, v in texts.items()}
    return {"device": str(next(model.parameters()).device), "finished": idle, "healthy": eng.error is None,
            "same_seed_same_text": joined[0] == joined[2], "other_seed_differs": joined[0] != joined[4],
            "sample": joined[0][:80], "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="build the assets here (needs regex) and stop")
    ap.add_argument("--cpu-dry-run", action="store_true", help="the same checks, shrunk, on a CPU")
    ap.add_argument("--assets", type=Path, default=ASSETS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmforge-gpu-check"))
    args = ap.parse_args()
    if args.prepare:
        prepare(args.assets)
        return
    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-dry-run on a CPU")
    if not (args.assets / "tokens" / "train").exists():
        raise SystemExit(f"{args.assets}: no assets; run `python bench/gpu.py --prepare` first (and carry them)")
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "gpu", "dry_run": dry, "environment": environment()}
    t0 = time.perf_counter()
    for name, fn in (("pretrain", lambda: pretrain_benchmark(args.assets, args.work, dry)),
                     ("torchrun_resume", lambda: torchrun_resume(args.assets, args.work, dry)),
                     ("alignment", lambda: alignment(args.assets, args.work, dry)),
                     ("engine", lambda: engine_sampling(args.work, dry))):
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 — each check reports its own failure; the rest still run
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{name}: {json.dumps(result[name], default=str)[:400]}", flush=True)
    result["seconds"] = time.perf_counter() - t0
    p = result["pretrain"]
    result["rows"] = [] if "error" in p else [
        {"measure": "gpt2_124m_tokens_per_s", "ours": p["tokens_per_s"], "baseline": "none (absolute)",
         "baseline_value": p["tokens_per_s"], "unit": "tokens/s", "ratio": 1.0},
        {"measure": "gpt2_124m_mfu", "ours": p["mfu"], "baseline": p["peak_flops_spec"], "baseline_value": 1.0,
         "unit": "fraction of spec peak", "ratio": p["mfu"]}]
    out = ROOT / "bench" / "results" / ("gpu_cpu_dry_run.json" if dry else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
