"""Serving throughput and latency at 1, 4 and 16 concurrent clients, batched engine vs one-at-a-time.

The server runs in its own process (`python -m lmtrain.inference.serve`), the clients in this one (asyncio + httpx,
streamed /v1/completions with usage). Each level sends the same requests: N clients, each sending its
share one after the other. Model: `--checkpoint DIR` (a bundle), or else the project's `tiny` GPT
(4 layers, 128 wide, context 128) with random weights and a 1,024-token BPE trained on pydoc topics;
random weights stop early (EOT) about as often as a trained model, so tokens are counted from usage.

Measures (ratio > 1 = lmforge better), written to bench/results/serve.json:
- `tokens_per_s_{1,4,16}_clients`: aggregate completion tokens/s; baseline at 1 client: the model's own
  generate_tokens loop without HTTP (the ceiling for one stream); at 4 and 16: the same server with
  --max-batch-size 1 (requests served one at a time);
- `latency_p50_ms_…`, `latency_p95_ms_…`: whole-request latency; baseline: the one-at-a-time server;
- `serve_concurrency_gain`: tokens/s at 16 clients / at 1 client; baseline: the issue's target, 3.
Each level runs 3 times (1 with --quick) and the run with the median tokens/s is reported.
Usage: python bench/serve.py [--quick] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmtrain.inference.generate import generate_tokens  # noqa: E402
from lmtrain.models.bundle import attach_tokenizer, load_bundle  # noqa: E402
from lmtrain.models.checkpoint import save_checkpoint  # noqa: E402
from lmtrain.models.registry import build_model  # noqa: E402
from lmtrain.tokenizer import train_bpe  # noqa: E402

LEVELS = (1, 4, 16)
PROMPTS = ["def parse(text):", "The with statement", "Exceptions are raised", "class Node:", "import os",
           "A lambda expression", "for line in open(path):", "Comparisons can be chained"]


def tiny_bundle(folder: Path) -> Path:
    """The project's `tiny` GPT, random weights, with a small BPE trained on pydoc topics."""
    from pydoc_data.topics import topics

    tok = train_bpe([topics[k] for k in sorted(topics)], vocab_size=1024)
    tok.save(folder / "tokenizer")
    torch.manual_seed(0)
    model = build_model("gpt", "tiny", vocab_size=tok.vocab_size, dropout=0.0)
    save_checkpoint(folder / "ckpt", model)
    attach_tokenizer(folder / "ckpt", folder / "tokenizer")
    return folder / "ckpt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: Path, max_batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmtrain.inference.serve", "--checkpoint", str(ckpt), "--port", str(port),
                             "--max-batch-size", str(max_batch_size), "--max-waiting", "64", "--model-name", "bench",
                             "--log-level", "warning", "--threads", str(threads)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy in 120 s")


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, seed: int) -> tuple[float, int]:
    """(seconds, completion tokens) of one streamed completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    tokens = None
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"HTTP {r.status_code}: {await r.aread()}")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    if tokens is None:
        raise SystemExit("stream ended without a usage chunk")
    return time.perf_counter() - t0, tokens


async def run_level(url: str, clients: int, n_requests: int, max_tokens: int) -> dict:
    """n_requests split over `clients` closed-loop clients; aggregate tokens/s and latency percentiles."""
    latencies: list[float] = []
    total = 0

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal total
        for i in range(c, n_requests, clients):
            seconds, tokens = await one_request(http, url, PROMPTS[i % len(PROMPTS)], max_tokens, seed=i)
            latencies.append(seconds)
            total += tokens

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await one_request(http, url, PROMPTS[0], 4, seed=0)  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"tokens_per_s": total / wall, "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * q[18],
            "tokens": total, "seconds": wall}


def direct_tokens_per_s(ckpt: Path, n_requests: int, max_tokens: int) -> float:
    """The model's own KV-cache sampling loop in this process, one sequence at a time, no HTTP."""
    model, tok = load_bundle(ckpt)
    total, t0 = 0, time.perf_counter()
    for i in range(n_requests):
        ids = torch.tensor([tok.encode(PROMPTS[i % len(PROMPTS)])])
        gen = torch.Generator().manual_seed(i)
        total += sum(1 for _ in generate_tokens(model, ids, max_tokens, 1.0, generator=gen))
    return total / (time.perf_counter() - t0)


def measure(ckpt: Path, max_batch_size: int, n_requests: int, max_tokens: int, threads: int,
            repeats: int) -> dict[int, dict]:
    """Each level `repeats` times; the run with the median tokens/s is kept (the box is shared and noisy)."""
    proc, url = start_server(ckpt, max_batch_size, threads)
    try:
        out = {}
        for clients in LEVELS:
            # at least 4 requests per client, so the level lasts long enough to time
            runs = [asyncio.run(run_level(url, clients, max(n_requests, 4 * clients), max_tokens))
                    for _ in range(repeats)]
            out[clients] = r = sorted(runs, key=lambda x: x["tokens_per_s"])[len(runs) // 2]
            print(f"  max_batch_size={max_batch_size:<3} clients={clients:<3} {r['tokens_per_s']:8.1f} tok/s  "
                  f"p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  ({r['tokens']} tokens, {r['seconds']:.1f} s)")
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def row(measure: str, ours: float, baseline: str, baseline_value: float, unit: str, higher_is_better: bool) -> dict:
    ratio = ours / baseline_value if higher_is_better else baseline_value / ours
    return {"measure": measure, "ours": ours, "baseline": baseline, "baseline_value": baseline_value,
            "unit": unit, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter requests")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a bundle folder (default: a random tiny GPT)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, for the server and the direct loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_requests, max_tokens, repeats = (16, 32, 1) if args.quick else (32, 64, 3)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        ckpt = args.checkpoint or tiny_bundle(Path(tmp))
        print(f"checkpoint {ckpt}; {n_requests} requests of up to {max_tokens} tokens per level, median of {repeats}; "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch thread(s)")
        direct = direct_tokens_per_s(ckpt, n_requests, max_tokens)
        print(f"  direct generate_tokens, no HTTP: {direct:8.1f} tok/s")
        batched = measure(ckpt, 16, n_requests, max_tokens, args.threads, repeats)
        serial = measure(ckpt, 1, n_requests, max_tokens, args.threads, repeats)
    serial_name = "same server, --max-batch-size 1 (one request at a time)"
    rows = [row("tokens_per_s_1_clients", batched[1]["tokens_per_s"],
                "generate_tokens in-process, no HTTP (one sequence)", direct, "tokens/s", True)]
    for n in LEVELS[1:]:
        rows.append(row(f"tokens_per_s_{n}_clients", batched[n]["tokens_per_s"], serial_name,
                        serial[n]["tokens_per_s"], "tokens/s", True))
    for n in LEVELS:
        for p in ("p50", "p95"):
            rows.append(row(f"latency_{p}_ms_{n}_clients", batched[n][f"{p}_ms"], serial_name,
                            serial[n][f"{p}_ms"], "ms", False))
    gain = batched[16]["tokens_per_s"] / batched[1]["tokens_per_s"]
    rows.append(row("serve_concurrency_gain", gain, "issue 9 target (16-client / 1-client tokens/s)", 3.0,
                    "x", True))
    print(f"serve_concurrency_gain {gain:.2f} (target >= 3; one-at-a-time server: "
          f"{serial[16]['tokens_per_s'] / serial[1]['tokens_per_s']:.2f})")
    out = ROOT / "bench" / "results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "serve", "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
