"""Stage `pretokenize`: flat token files per shard and split (`data/tokens/{train,eval}/<shard>.bin`
+ JSON sidecar), one task per shard. Training tokens come from balance's train rows (`input`),
each document `repeats` times (its up-sampling); evaluation tokens from the frozen evaluation set
(`eval_input`, data/evalset/corpus), each document once.

    python -m flows.pretokenize [--params params.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import load_params, publish_metrics, task_runner
from lmdata.atomic import atomic_dir
from lmdata.shards import list_shards
from lmtrain.data.shards import write_token_shard
from lmtrain.tokenizer import load_tokenizer


def shard_texts(shard: Path, split: str) -> list[str]:
    cols = pl.read_parquet_schema(shard)
    df = pl.read_parquet(shard, columns=["text", "split"] + (["repeats"] if "repeats" in cols else []))
    df = df.filter(pl.col("split") == split)
    if split == "train" and "repeats" in df.columns:
        df = df.select(pl.col("text").repeat_by(pl.col("repeats")).explode())
    return df["text"].to_list()


@task(name="tokenize-shard", cache_policy=NO_CACHE, retries=1)
def tokenize_shard(shard: Path, tokenizer_dir: Path, out: Path, split: str) -> dict:
    """Tokenize one shard's `split` rows into `out/<split>/<shard>.bin`; {split: sidecar} or {}."""
    texts = shard_texts(shard, split)
    if not texts:
        return {}
    tok = load_tokenizer(tokenizer_dir)
    return {split: write_token_shard(texts, tok, out / split / f"{shard.stem}.bin", num_threads=1)}


@flow(name="pretokenize", log_prints=True)
def pretokenize(params: dict) -> dict:
    cfg = params.get("pretokenize", {})
    source, tok_dir = Path(cfg.get("input", "data/balance/corpus")), Path(cfg.get("tokenizer", "models/tokenizer"))
    eval_source = Path(cfg.get("eval_input", "data/evalset/corpus"))
    shards = [(s, "train") for s in list_shards(source)] + [(s, "eval") for s in list_shards(eval_source)]
    t0 = time.perf_counter()
    with atomic_dir(Path(cfg.get("out", "data/tokens"))) as staging:
        (staging / "train").mkdir()
        (staging / "eval").mkdir()
        futures = [tokenize_shard.with_options(task_run_name=f"tokenize-{split}-{s.stem}").submit(
            s, tok_dir, staging, split) for s, split in shards]
        results = [f.result() for f in futures]
    metrics: dict = {"seconds": round(time.perf_counter() - t0, 3), "shards_in": len(shards)}
    for split in ("train", "eval"):
        side = [r[split] for r in results if split in r]
        tokens, nbytes = sum(s["tokens"] for s in side), sum(s["bytes"] for s in side)
        docs = sum(s["documents"] for s in side)
        metrics[split] = {"shards": len(side), "tokens": tokens, "bytes": nbytes, "documents": docs,
                          "bytes_per_token": round(nbytes / max(1, tokens - docs), 4)}
    publish_metrics("pretokenize", None, metrics)
    print(f"pretokenize: train {metrics['train']['tokens']:,} tokens, eval {metrics['eval']['tokens']:,} tokens")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    params = load_params(ap.parse_args(argv).params)
    return pretokenize.with_options(task_runner=task_runner(params))(params)


if __name__ == "__main__":
    main()
