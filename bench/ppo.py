"""PPO throughput on the tiny profile: KV-cache rollouts vs full recomputation.

    python bench/ppo.py [--quick]  ->  bench/results/ppo.json

Measures
- rollout_kv_cache_speedup: rollout tokens/s (one prompt, samples_per_prompt rows, max_new_tokens,
  no early stop) with the KV cache vs recomputing the whole sequence for every new token.
- ppo_steps_per_s: whole PPO iterations (rollout of prompts_per_step x samples_per_prompt replies,
  scoring, GAE, ppo_epochs of minibatch updates) per second, KV-cache rollouts vs recompute.
- ppo_updates_per_s: minibatch gradient updates per second inside those iterations, same baseline.
Models are random GPTs of the tiny profile (4 layers x 128, vocab 4096, block 128): throughput does
not depend on the weights, only on shapes and on replies running to max_new_tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lmtrain.align.ppo import PolicyWithValue, PPOConfig, ppo_update, rollout
from lmtrain.align.reward_model import RewardModel
from lmtrain.inference.generate import generate_replies
from lmtrain.models.gpt import GPT, GPT_CONFIGS, GPTConfig
from lmtrain.tokenizer import train_bpe

RESULTS = Path(__file__).parent / "results" / "ppo.json"


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    cfg = {**GPT_CONFIGS["tiny"], "dropout": 0.0}
    return GPT(GPTConfig(vocab_size=4096, **cfg)).eval()


def rollout_tokens_per_s(model: GPT, use_cache: bool, rows: int, new: int, repeats: int) -> float:
    prompt = list(range(10, 34))  # 24 tokens, about a rendered user prompt
    generate_replies(model, prompt, rows, 4, set(), use_cache=use_cache)  # warm-up
    t0 = time.perf_counter()
    for r in range(repeats):
        generate_replies(model, prompt, rows, new, set(), generator=torch.Generator().manual_seed(r),
                         use_cache=use_cache)
    return rows * new * repeats / (time.perf_counter() - t0)


def ppo_rate(use_cache: bool, steps: int, cfg: PPOConfig) -> tuple[float, float]:
    """(PPO iterations/s, minibatch updates/s) with never-stopping replies (stop set emptied)."""
    tok = train_bpe(["a tiny tokenizer for the special tokens"] * 2, vocab_size=270)
    policy, ref, rm = PolicyWithValue(tiny_gpt(0)).eval(), tiny_gpt(0), RewardModel(tiny_gpt(1)).eval()
    ref.requires_grad_(False)
    rm.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate)
    g = torch.Generator().manual_seed(0)
    prompts = [list(range(10 + i, 30 + i)) for i in range(cfg.prompts_per_step)]
    # a random 4096-vocab model emits one of the two stop ids with p ~ 1/2000 per token: replies
    # nearly always run to max_new_tokens, the slowest case
    batch = rollout(policy, ref, rm, tok, prompts, cfg, 0.1, g, use_cache)  # warm-up
    ppo_update(policy, opt, batch, cfg, g)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = rollout(policy, ref, rm, tok, prompts, cfg, 0.1, g, use_cache)
        ppo_update(policy, opt, batch, cfg, g)
    dt = time.perf_counter() - t0
    per_step = cfg.ppo_epochs * -(-cfg.prompts_per_step * cfg.samples_per_prompt // cfg.minibatch_size)
    return steps / dt, steps * per_step / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (~30 s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PPOConfig(max_new_tokens=96)  # the block (128) holds a 24-token prompt + 96 new tokens
    model = tiny_gpt(0)
    repeats, steps = (2, 2) if args.quick else (5, 5)
    cached = rollout_tokens_per_s(model, True, cfg.samples_per_prompt, cfg.max_new_tokens, repeats)
    full = rollout_tokens_per_s(model, False, cfg.samples_per_prompt, cfg.max_new_tokens, repeats)
    steps_c, upd_c = ppo_rate(True, steps, cfg)
    steps_f, upd_f = ppo_rate(False, steps, cfg)
    base = "same code, rollouts recompute the whole sequence per new token (no KV cache)"
    rows = [
        {"measure": "rollout_kv_cache_speedup", "ours": round(cached, 1), "baseline": base,
         "baseline_value": round(full, 1), "unit": "rollout tokens/s", "ratio": round(cached / full, 3)},
        {"measure": "ppo_steps_per_s", "ours": round(steps_c, 4), "baseline": base, "baseline_value": round(steps_f, 4),
         "unit": "PPO iterations/s", "ratio": round(steps_c / steps_f, 3)},
        {"measure": "ppo_updates_per_s", "ours": round(upd_c, 3), "baseline": base, "baseline_value": round(upd_f, 3),
         "unit": "minibatch updates/s", "ratio": round(upd_c / upd_f, 3)},
    ]
    result = {"benchmark": "ppo", "quick": args.quick, "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "profile": {"model": "gpt tiny 4x128, vocab 4096, block 128", "prompt_tokens": 24,
                          "max_new_tokens": cfg.max_new_tokens, "rows_per_prompt": cfg.samples_per_prompt,
                          "prompts_per_step": cfg.prompts_per_step, "ppo_epochs": cfg.ppo_epochs,
                          "minibatch_size": cfg.minibatch_size},
              "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['measure']:28s} ours {r['ours']:>10} {r['unit']:20s} baseline {r['baseline_value']:>10}  "
              f"ratio {r['ratio']}")


if __name__ == "__main__":
    main()
