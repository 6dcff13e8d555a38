"""Pretraining loop for the GPT and its baselines, single process or DDP under torchrun.

    python -m lmtrain.train --model gpt --config tiny --train-dir data/tokens/train \
        --eval-dir data/tokens/eval --out out/gpt [--max-steps 600 --dtype bfloat16 ...]
    torchrun --nproc_per_node 8 -m lmtrain.train ...   # same script, data split across ranks

Writes into --out: checkpoint/ (exact resume), curves/train.csv + curves/val.csv (DVC plots),
loss.png, metrics.json. Needs only torch, numpy, safetensors, tqdm and vl-convert.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from lmtrain.checkpoint import load_training_state, save_checkpoint
from lmtrain.data import RandomWindows, TokenShards
from lmtrain.evaluate import evaluate_loss, multiple_choice_accuracy, multiple_choice_items
from lmtrain.flops import flops_per_token, measured_matmul_peak, spec_peak_name
from lmtrain.model import build_model


@dataclass
class TrainConfig:
    """One params.yaml section per model; every field has the default shown."""

    model: str = "gpt"  # bigram | mlp | gpt
    config: str = "tiny"  # named config of that kind: tiny, shakespeare_char, gpt2, gpt2-medium, ...
    dropout: float = -1.0  # overrides the config's dropout (gpt, mlp) when >= 0
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
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 (autocast)
    compile: bool = False  # torch.compile the model (~30 s first step on CPU)
    device: str = "auto"  # auto | cpu | cuda
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
    progress: bool = True  # tqdm bar with tokens/s and ETA (rank 0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to learning_rate * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.learning_rate * cfg.min_lr_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - floor)


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _resolve(cfg: TrainConfig, local_rank: int) -> tuple[torch.device, torch.dtype]:
    device_name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local_rank}" if device_name == "cuda" else device_name)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif cfg.dtype in dtypes:
        dtype = dtypes[cfg.dtype]
    else:
        raise ValueError(f"TrainConfig.dtype must be auto, float32 or bfloat16, got {cfg.dtype!r}")
    return device, dtype


def _gather_rng(device: torch.device, world: int) -> dict[str, torch.Tensor]:
    """Every rank's torch RNG state (dropout), gathered so rank 0 can save them all."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for name, s in states.items():
        if world == 1:
            out[f"rng.{name}.0"] = s
            continue
        parts = [torch.empty_like(s) for _ in range(world)]
        dist.all_gather(parts, s.to(device) if device.type == "cuda" else s)
        out.update({f"rng.{name}.{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def train(cfg: TrainConfig, train_dir: str | Path, eval_dir: str | Path, out_dir: str | Path,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train one model; return its metrics (rank 0; other ranks return {})."""
    t_start = time.perf_counter()
    rank, world, local_rank = _distributed()
    device, dtype = _resolve(cfg, local_rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    torch.manual_seed(cfg.seed + rank)
    train_shards, eval_shards = TokenShards(train_dir), TokenShards(eval_dir)
    for field in ("vocab_size", "eot_id", "tokenizer_hash"):
        if getattr(train_shards, field) != getattr(eval_shards, field):
            raise ValueError(f"{field} differs between {train_dir} and {eval_dir}: "
                             f"{getattr(train_shards, field)!r} vs {getattr(eval_shards, field)!r}")
    overrides = {"dropout": cfg.dropout} if cfg.dropout >= 0 and cfg.model != "bigram" else {}
    model = build_model(cfg.model, cfg.config, vocab_size=train_shards.vocab_size, **overrides).to(device)
    block = cfg.block_size or model.block_size
    if block > model.block_size:
        raise ValueError(f"TrainConfig.block_size {block} exceeds the model's block_size {model.block_size}")
    micro_tokens = cfg.batch_size * block * world
    if cfg.tokens_per_step and cfg.tokens_per_step % micro_tokens:
        raise ValueError(f"tokens_per_step {cfg.tokens_per_step} is not a multiple of batch_size*block_size*world "
                         f"= {micro_tokens}")
    accum = cfg.tokens_per_step // micro_tokens if cfg.tokens_per_step else 1
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type)
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
    if world > 1:
        train_model = DDP(train_model, device_ids=[local_rank] if device.type == "cuda" else None)
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    val_windows_seed = cfg.seed + 1_000_003  # a fixed set of eval windows, the same at every estimate

    def estimate_val() -> dict:
        model.eval()
        vw = RandomWindows(eval_shards, block, val_windows_seed)
        losses = []
        with torch.no_grad():
            for _ in range(cfg.eval_batches):
                x, y = vw.global_batch(cfg.eval_batch_size)
                with autocast:
                    losses.append(float(model(x.to(device), y.to(device))[1]))
        model.train()
        loss = sum(losses) / len(losses)
        return {"val_loss": loss, "val_bpb": loss * eval_shards.n_tokens / (math.log(2) * eval_shards.n_bytes)}

    def checkpoint() -> None:
        rng = _gather_rng(device, world)
        if rank == 0:
            save_checkpoint(ckpt_dir, model, optimizer,
                            {"step": step, "batches_drawn": windows.batches_drawn, "history": history,
                             "world_size": world, "train_config": dataclasses.asdict(cfg)},
                            {"data.generator": windows.state_dict()["generator"], **rng})

    bar = tqdm(total=cfg.max_steps, initial=step, unit="step", desc=f"{cfg.model}/{cfg.config}",
               disable=not (cfg.progress and rank == 0), dynamic_ncols=True)
    model.train()
    train_seconds, timed_tokens, step_tokens = 0.0, 0, micro_tokens * accum
    first_step = step
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(windows.rank_batches(cfg.batch_size, accum, rank, world)):
            # only the last micro-batch all-reduces gradients
            sync = contextlib.nullcontext() if world == 1 or i == accum - 1 else train_model.no_sync()
            with sync:
                with autocast:
                    _, loss = train_model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step > first_step + 1 or cfg.max_steps - first_step == 1:  # skip the warm-up/compile step
            train_seconds += time.perf_counter() - t0
            timed_tokens += step_tokens
        record = None
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            if world > 1:
                dist.all_reduce(loss_sum)  # gloo has no AVG: sum, then divide
                loss_sum /= world
            record = {"step": step, "tokens": step * step_tokens, "train_loss": float(loss_sum),
                      "lr": lr_at(step - 1, cfg)}
            history["train"].append(record)
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            if rank == 0:
                val = {"step": step, "tokens": step * step_tokens, **estimate_val()}
                history["val"].append(val)
            if world > 1:
                dist.barrier()
        tokens_per_s = timed_tokens / train_seconds if train_seconds else 0.0
        val_shown = {"val": f"{history['val'][-1]['val_loss']:.3f}"} if history["val"] else {}
        bar.set_postfix(loss=f"{float(loss_sum):.3f}", **val_shown, tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        bar.update(1)
        if record is not None and rank == 0 and on_progress is not None:
            on_progress({**record, "max_steps": cfg.max_steps, "tokens_per_s": tokens_per_s})
        if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or step == cfg.max_steps:
            checkpoint()
    bar.close()

    metrics: dict = {}
    if rank == 0:
        metrics = final_metrics(cfg, model, eval_shards, block, dtype, autocast, history,
                                timed_tokens / train_seconds if train_seconds else 0.0)
        metrics.update(steps=step, tokens=step * step_tokens, world_size=world, accum_steps=accum,
                       seconds=time.perf_counter() - t_start)
        write_curves(history, out_dir)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def final_metrics(cfg: TrainConfig, model: torch.nn.Module, eval_shards: TokenShards, block: int,
                  dtype: torch.dtype, autocast: contextlib.AbstractContextManager, history: dict,
                  tokens_per_s: float) -> dict:
    """Whole-split loss and bpb, multiple-choice accuracy, throughput and MFU."""
    device = next(model.parameters()).device
    ev = evaluate_loss(model, eval_shards, cfg.eval_batch_size, block, cfg.eval_stride or None,
                       None if dtype == torch.float32 else dtype)
    mc = None
    if cfg.mc_items:
        items = multiple_choice_items(eval_shards, cfg.mc_items, cfg.mc_context, cfg.mc_continuation, seed=cfg.seed)
        with autocast:
            mc = multiple_choice_accuracy(model, items)
    fpt = flops_per_token(model, block)
    peak = measured_matmul_peak(device, dtype)
    return {"model": cfg.model, "config": cfg.config, "params": model.num_params(),
            "train_loss": history["train"][-1]["train_loss"] if history["train"] else None,
            **ev, "mc_accuracy": mc, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * fpt / peak, "flops_per_token": fpt, "peak_flops_measured": peak,
            "peak_flops_spec": spec_peak_name(device), "dtype": str(dtype).removeprefix("torch.")}


def write_curves(history: dict, out_dir: Path) -> None:
    """curves/train.csv and curves/val.csv (DVC plots, x = step) and loss.png rendered offline."""
    curves = out_dir / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    for split, rows in history.items():
        if not rows:
            continue
        with open(curves / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    series = {"train": [(r["step"], r["train_loss"]) for r in history["train"]],
              "val": [(r["step"], r["val_loss"]) for r in history["val"]]}
    render_loss_png(series, out_dir / "loss.png")


def render_loss_png(series: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "loss") -> None:
    """Line chart of named (step, loss) series to PNG with vl-convert (no browser, no network)."""
    import vl_convert

    values = [{"step": s, "loss": v, "series": name} for name, points in series.items() for s, v in points]
    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title,
            "width": 480, "height": 300, "data": {"values": values}, "mark": "line",
            "encoding": {"x": {"field": "step", "type": "quantitative"},
                         "y": {"field": "loss", "type": "quantitative", "scale": {"zero": False}},
                         "color": {"field": "series", "type": "nominal"}}}
    Path(path).write_bytes(vl_convert.vegalite_to_png(spec, scale=2))


def _parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--eval-dir", required=True)
    parser.add_argument("--out", required=True)
    for f in dataclasses.fields(TrainConfig):
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes"), "int": int, "float": float, "str": str}[
            f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = _parse_args(argv)
    metrics = train(cfg, args.train_dir, args.eval_dir, args.out)
    if metrics:
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
