"""Pretraining loop for the GPT and its baselines, single process or DDP under torchrun.

    python -m lmtrain.pretrain.train --model gpt --config tiny --train-dir data/tokens/train \
        --eval-dir data/tokens/eval --out out/gpt [--max-steps 600 --dtype bfloat16 ...]
    torchrun --nproc_per_node 8 -m lmtrain.pretrain.train ...   # same script, data split across ranks

Writes into --out: checkpoint/ (exact resume), curves/train.csv + curves/val.csv (DVC plots),
loss.png, metrics.json, eval_blocks.json (nats per fixed 512-token block of the evaluation split).
Needs only torch, numpy and safetensors (tqdm and vl-convert when present).
Device, dtype, DDP, seeding, the schedule and the optimizer step are lmtrain.runtime's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lmtrain.config import OptimConfig
from lmtrain.data.shards import TokenShards
from lmtrain.data.windows import RandomWindows
from lmtrain.models.checkpoint import load_training_state, save_checkpoint
from lmtrain.models.flops import flops_per_token, measured_matmul_peak, utilisation
from lmtrain.models.init import check_shards, is_none, load_init
from lmtrain.models.registry import build_model
from lmtrain.pretrain.curves import render_loss_png, write_curves
from lmtrain.pretrain.evaluate import (
    EVAL_BLOCK_TOKENS,
    evaluate_loss,
    multiple_choice_accuracy,
    multiple_choice_items,
)
from lmtrain.progress import Progress, rounded, split_timings
from lmtrain.runtime import Runtime, adamw, check_finite, cosine_lr, optimizer_step, set_lr, setup

__all__ = ["TrainConfig", "lr_at", "render_loss_png", "train"]


@dataclass
class TrainConfig(OptimConfig):
    """One params.yaml section per model; every field has the default shown (shared ones: OptimConfig)."""

    model: str = "gpt"  # bigram | mlp | gpt
    config: str | dict = "tiny"  # a named config of that kind (tiny, shakespeare_char, gpt2, ...) or a dict of its fields
    dropout: float = -1.0  # overrides the config's dropout (gpt, mlp) when >= 0
    vocab_multiple: int = 1  # GPT embedding rows padded to a multiple of this (64 on GPUs); 1 = the vocabulary
    seed: int = 1337  # seeds the data windows and dropout (rank r uses seed + r for dropout)
    max_steps: int = 600  # optimizer steps
    batch_size: int = 32  # micro-batch rows per rank
    block_size: int = 0  # training window in tokens; 0 = the model config's block_size
    tokens_per_step: int = 0  # global tokens per optimizer step (gradient accumulation); 0 = one micro-batch
    learning_rate: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.1  # on 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.99  # 0.95 for large models (GPT-2/3); 0.99 suits the tiny, few-token runs
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    compile: bool = False  # torch.compile the model (~30 s first step on CPU)
    threads: int = 0  # CPU threads (torch.set_num_threads); 0 = torch's default. 1 avoids OpenMP spin-waits
    #                   when other processes share the cores (measured >10x faster on a loaded 2-core box)
    log_interval: int = 10  # steps between train-loss records and on_progress calls
    eval_interval: int = 100  # steps between validation estimates (and at the last step)
    eval_batches: int = 4  # batches of random eval windows (fixed seed) per validation estimate
    eval_batch_size: int = 32  # windows per batch in evaluation
    eval_stride: int = 0  # final evaluation window stride; 0 = block_size (non-overlapping windows)
    mc_items: int = 200  # multiple-choice continuation items (0 = skip)
    mc_context: int = 64  # context tokens per item
    mc_continuation: int = 32  # tokens per choice
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = only at the end
    resume: bool = True  # continue from <out>/checkpoint if present
    init_from: str | None = None  # start from this lmforge checkpoint or HF GPT-2 folder (its own config and
    #                               vocabulary) instead of random weights; null or init/none = from scratch


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to learning_rate * min_lr_ratio at max_steps."""
    return cosine_lr(step, cfg.max_steps, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio)


def gather_rng(rt: Runtime) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state (dropout), gathered through the runtime so rank 0 can save them all."""
    states = {"cpu": torch.get_rng_state()}
    if rt.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(rt.device)
    out = {}
    for name, s in states.items():
        parts = rt.all_gather(s)  # on the runtime's device: NCCL gathers CUDA tensors only
        out.update({f"rng.{name}.{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def train(cfg: TrainConfig, train_dir: str | Path, eval_dir: str | Path, out_dir: str | Path,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train one model; return its metrics (rank 0; other ranks return {})."""
    t_start = time.perf_counter()
    rt = setup(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    device, rank, world = rt.device, rt.rank, rt.world
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    train_shards, eval_shards = TokenShards(train_dir), TokenShards(eval_dir)
    for field in ("vocab_size", "eot_id", "tokenizer_hash"):
        if getattr(train_shards, field) != getattr(eval_shards, field):
            raise ValueError(f"{field} differs between {train_dir} and {eval_dir}: "
                             f"{getattr(train_shards, field)!r} vs {getattr(eval_shards, field)!r}")
    overrides = {"dropout": cfg.dropout} if cfg.dropout >= 0 and cfg.model != "bigram" else {}
    if is_none(cfg.init_from):
        if cfg.model == "gpt" and cfg.vocab_multiple > 1:
            overrides["vocab_multiple"] = cfg.vocab_multiple
        model = build_model(cfg.model, cfg.config, vocab_size=train_shards.vocab_size, **overrides).to(device)
    else:  # before any work: the shards must have been encoded with the model's own tokenizer
        check_shards(cfg.init_from, train_shards, f"pretrain.{cfg.model}.init_from")
        model = load_init(cfg.init_from, cfg.model, overrides.get("dropout"), f"pretrain.{cfg.model}.init_from")[0]
        model = model.to(device)
    block = cfg.block_size or model.block_size
    if block > model.block_size:
        raise ValueError(f"TrainConfig.block_size {block} exceeds the model's block_size {model.block_size}")
    micro_tokens = cfg.batch_size * block * world
    if cfg.tokens_per_step and cfg.tokens_per_step % micro_tokens:
        raise ValueError(f"tokens_per_step {cfg.tokens_per_step} is not a multiple of batch_size*block_size*world "
                         f"= {micro_tokens}")
    accum = cfg.tokens_per_step // micro_tokens if cfg.tokens_per_step else 1
    optimizer = adamw(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
    windows = RandomWindows(train_shards, block, cfg.seed)

    step, history = 0, {"train": [], "val": []}
    if cfg.resume and (ckpt_dir / "state.json").exists():
        meta, extra = load_training_state(ckpt_dir, model, optimizer)
        if meta.get("world_size") != world:
            raise ValueError(f"{ckpt_dir}: saved with world_size {meta.get('world_size')}, resuming with {world}")
        step, history = meta["step"], meta["history"]
        windows.load_state_dict({"generator": extra["data.generator"], "batches_drawn": meta["batches_drawn"]})
        torch.set_rng_state(extra[f"rng.cpu.{rank}"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(extra[f"rng.cuda.{rank}"], device)

    train_model = torch.compile(model) if cfg.compile else model
    if rt.distributed:
        train_model = DDP(train_model, device_ids=[rt.local_rank] if device.type == "cuda" else None)
    val_windows_seed = cfg.seed + 1_000_003  # a fixed set of eval windows, the same at every estimate

    def estimate_val() -> dict:
        model.eval()
        vw = RandomWindows(eval_shards, block, val_windows_seed)
        losses = []
        with torch.no_grad():
            for _ in range(cfg.eval_batches):
                x, y = vw.global_batch(cfg.eval_batch_size)
                with rt.autocast():
                    losses.append(model(rt.to_device(x), rt.to_device(y))[1])
        model.train()
        loss = float(torch.stack(losses).mean()) if device.type != "cpu" else sum(map(float, losses)) / len(losses)
        return {"val_loss": loss, "val_bpb": loss * eval_shards.n_tokens / (math.log(2) * eval_shards.n_bytes)}

    def checkpoint() -> None:
        rng = gather_rng(rt)
        if rank == 0:
            save_checkpoint(ckpt_dir, model, optimizer,
                            {"step": step, "batches_drawn": windows.batches_drawn, "history": history,
                             "world_size": world, "train_config": dataclasses.asdict(cfg)},
                            {"data.generator": windows.state_dict()["generator"], **rng})

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    bar = Progress(cfg.max_steps, f"{cfg.model}/{cfg.config}", cfg.progress and rank == 0, step, on_progress)
    model.train()
    step_tokens = micro_tokens * accum
    first_step = step
    t_timed = paused = 0.0  # the clock starts after the first (warm-up/compile) step; eval time is paused
    tokens_per_s = 0.0
    while step < cfg.max_steps:
        set_lr(optimizer, lr_at(step, cfg))
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(windows.rank_batches(cfg.batch_size, accum, rank, world)):
            # only the last micro-batch all-reduces gradients
            sync_grads = contextlib.nullcontext() if not rt.distributed or i == accum - 1 else train_model.no_sync()
            with sync_grads:
                with rt.autocast():
                    _, loss = train_model(rt.to_device(x), rt.to_device(y))
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        optimizer_step(optimizer, model.parameters(), cfg.grad_clip)
        step += 1
        if step == first_step + 1:
            sync()
            t_timed = time.perf_counter()
        record = None
        if step % cfg.log_interval == 0 or step == cfg.max_steps:  # the only per-interval host syncs
            mean_loss = rt.all_reduce_mean(loss_sum)
            check_finite(mean_loss, "pretraining", step, "lower the learning rate or raise warmup_steps")
            record = {"step": step, "tokens": step * step_tokens, "train_loss": float(mean_loss),
                      "lr": lr_at(step - 1, cfg)}
            history["train"].append(record)
            timed_steps = step - first_step - 1
            seconds = time.perf_counter() - t_timed - paused
            tokens_per_s = timed_steps * step_tokens / seconds if timed_steps and seconds > 0 else 0.0
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            sync()
            t_pause = time.perf_counter()
            if rank == 0:
                history["val"].append({"step": step, "tokens": step * step_tokens, **estimate_val()})
            rt.barrier()
            paused += time.perf_counter() - t_pause
        if record is not None and rank == 0:
            shown = {"loss": record["train_loss"], "tok_s": round(tokens_per_s)}
            if history["val"]:
                shown["val"] = history["val"][-1]["val_loss"]
            bar.update({**record, "tokens_per_s": tokens_per_s}, shown)
        elif bar.bar is not None:
            bar.bar.update(1)
        if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or step == cfg.max_steps:
            sync()
            t_pause = time.perf_counter()
            checkpoint()
            paused += time.perf_counter() - t_pause
    bar.close()
    if cfg.max_steps - first_step == 1:  # a single step: time it whole
        tokens_per_s = step_tokens / max(1e-9, time.perf_counter() - t_start)

    metrics: dict = {}
    if rank == 0:
        metrics = final_metrics(cfg, model, eval_shards, block, rt, history, tokens_per_s)
        metrics.update(steps=step, tokens=step * step_tokens, world_size=world, accum_steps=accum,
                       seconds=time.perf_counter() - t_start)
        write_curves(history, out_dir)
        write_eval_blocks(out_dir / "eval_blocks.json", metrics.pop("block_nats"), eval_shards)
        # the model folder is a DVC output: same inputs, same bytes (timings only in the returned metrics)
        (out_dir / "metrics.json").write_text(json.dumps(split_timings(metrics)[0], indent=2))
    rt.close()
    return metrics


def write_eval_blocks(path: Path, block_nats, eval_shards: TokenShards) -> None:
    """The summed nats of each fixed block of the evaluation split (ablations' paired bootstrap), with
    what makes two runs' blocks comparable: the split's tokens, bytes and tokenizer."""
    path.write_text(json.dumps({"block_tokens": EVAL_BLOCK_TOKENS, "eval_tokens": eval_shards.n_tokens,
                                "eval_bytes": eval_shards.n_bytes, "tokenizer_hash": eval_shards.tokenizer_hash,
                                "nats": [round(float(v), 4) for v in block_nats]}, separators=(",", ":")) + "\n")


def final_metrics(cfg: TrainConfig, model: torch.nn.Module, eval_shards: TokenShards, block: int, rt: Runtime,
                  history: dict, tokens_per_s: float) -> dict:
    """Whole-split loss and bpb, multiple-choice accuracy, throughput, MFU and matmul utilisation."""
    ev = evaluate_loss(model, eval_shards, cfg.eval_batch_size, block, cfg.eval_stride or None,
                       None if rt.dtype == torch.float32 else rt.dtype)
    mc = None
    if cfg.mc_items:
        items = multiple_choice_items(eval_shards, cfg.mc_items, cfg.mc_context, cfg.mc_continuation, seed=cfg.seed)
        with rt.autocast():
            mc = multiple_choice_accuracy(model, items)
    fpt = flops_per_token(model, block)
    util = utilisation(tokens_per_s / rt.world, fpt, rt.device, rt.dtype, measured_matmul_peak(rt.device, rt.dtype))
    started = {} if is_none(cfg.init_from) else {"init_from": str(cfg.init_from)}
    return {"model": cfg.model, "config": cfg.config, **started, "params": model.num_params(),
            "train_loss": history["train"][-1]["train_loss"] if history["train"] else None,
            **ev, "mc_accuracy": mc, "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / rt.world,
            "flops_per_token": fpt, **util, "dtype": str(rt.dtype).removeprefix("torch."),
            "device": str(rt.device)}


def _parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--eval-dir", required=True)
    parser.add_argument("--out", required=True)
    for f in dataclasses.fields(TrainConfig):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float, "str": str}[
            (f.type if isinstance(f.type, str) else f.type.__name__).split(" | ")[0]]  # config: str | dict -> a name
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = _parse_args(argv)
    metrics = train(cfg, args.train_dir, args.eval_dir, args.out)
    if metrics:
        print(json.dumps({k: rounded(v) for k, v in metrics.items()}, indent=2))


if __name__ == "__main__":
    main()
