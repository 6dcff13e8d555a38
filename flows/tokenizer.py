"""Stage `tokenizer`: train a byte-level BPE (or character) tokenizer from scratch on the training
split of `tokenizer.input` — or, with `tokenizer.init_from`, adopt the tokenizer of the model to
start from (lmtrain.tokenizer.adopt) — save it to `models/tokenizer/`, report bytes per token on the
evaluation split and the longest / most frequent learned tokens.

    python -m flows.tokenizer [--params params.yaml]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows._stage import load_params, md_cell, publish_metrics
from lmdata.atomic import atomic_dir
from lmdata.errors import ConfigError
from lmdata.shards import list_shards
from lmtrain.config import ConfigError as TrainConfigError
from lmtrain.tokenizer import DEFAULT_PATTERN, load_tokenizer, train_bpe, train_char
from lmtrain.tokenizer.adopt import is_none, model_tokenizer

KINDS = ("bpe", "char")


def split_texts(folder: Path, split: str, max_bytes: float = float("inf")) -> Iterator[str]:
    """Texts of one split of a shard folder, in shard order, each document once, up to `max_bytes`."""
    seen = 0
    for shard in list_shards(folder):
        df = pl.read_parquet(shard, columns=["text", "split", "n_bytes"]).filter(pl.col("split") == split)
        for text, n in zip(df["text"], df["n_bytes"]):
            if seen >= max_bytes:
                return
            seen += n
            yield text


@task(name="train-tokenizer", cache_policy=NO_CACHE)
def train_task(cfg: dict, out: Path) -> dict:
    source = Path(cfg["input"])
    texts = split_texts(source, "train", cfg.get("max_train_mb", 200) * 1e6)
    t0 = time.perf_counter()
    if cfg["kind"] == "char":
        tok = train_char(texts)
    else:
        tok = train_bpe(texts, vocab_size=int(cfg["vocab_size"]), pattern=cfg.get("pattern") or DEFAULT_PATTERN)
    seconds = time.perf_counter() - t0
    tok.save(out)
    return {"train_seconds": round(seconds, 3), "vocab_size": tok.vocab_size, "hash": tok.hash}


def describe(tok, eval_texts: list[str], top: int = 20) -> dict:
    """Bytes per token on the evaluation split; the most frequent and the longest learned tokens."""
    encoded = tok.encode_batch(eval_texts) if eval_texts else []
    n_tokens = sum(map(len, encoded))
    n_bytes = sum(len(t.encode("utf-8")) for t in eval_texts)
    counts = np.bincount(np.concatenate([np.asarray(e, dtype=np.int64) for e in encoded]) if encoded else
                         np.zeros(0, np.int64), minlength=tok.vocab_size)
    show = lambda i: tok.token_bytes(int(i)).decode("utf-8", errors="replace")  # noqa: E731
    learned = range(tok.vocab_size - len(tok.special_tokens))
    longest = sorted(learned, key=lambda i: (-len(tok.token_bytes(i)), i))[:top]
    return {
        "eval_bytes_per_token": round(n_bytes / n_tokens, 4) if n_tokens else 0.0,
        "eval_tokens": n_tokens, "eval_bytes": n_bytes, "eval_documents": len(eval_texts),
        "most_frequent": [{"token": show(i), "count": int(counts[i])} for i in np.argsort(-counts, kind="stable")[:top]],
        "longest": [{"token": show(i), "bytes": len(tok.token_bytes(i))} for i in longest],
    }


@task(name="adopt-tokenizer", cache_policy=NO_CACHE)
def adopt_task(init_from: str, out: Path) -> dict:
    """Save the tokenizer of the model at `init_from` (what pretokenize then encodes with)."""
    tok = adopt(init_from)
    tok.save(out)
    return {"init_from": str(init_from), "vocab_size": tok.vocab_size, "hash": tok.hash}


def adopt(init_from: str):
    try:
        return model_tokenizer(init_from, "tokenizer.init_from")
    except TrainConfigError as e:
        raise ConfigError(str(e)) from e


@flow(name="tokenizer", log_prints=True)
def tokenizer(params: dict) -> dict:
    cfg = dict(params.get("tokenizer", {}))
    if cfg.get("kind", "bpe") not in KINDS:
        raise ConfigError(f"tokenizer.kind must be one of {KINDS}, got {cfg.get('kind')!r}")
    cfg.setdefault("kind", "bpe")
    if not Path(cfg.get("input", "")).is_dir():
        raise ConfigError(f"tokenizer.input: no shard folder at {cfg.get('input')!r}")
    init_from = cfg.get("init_from")
    if not is_none(init_from):
        adopt(init_from)  # a folder that holds no model or no tokenizer fails here, before any work
    out = Path(cfg.get("out", "models/tokenizer"))
    with atomic_dir(out) as staging:
        trained = train_task(cfg, staging) if is_none(init_from) else adopt_task(init_from, staging)
    tok = load_tokenizer(out)
    report = describe(tok, list(split_texts(Path(cfg.get("eval_input", cfg["input"])), "eval")))
    metrics = {"kind": tok.kind, **trained, **report}
    publish_metrics("tokenizer", None, metrics)
    md = [f"# tokenizer ({cfg['kind']}, vocab {tok.vocab_size})", "",
          f"{report['eval_bytes_per_token']} bytes/token on the evaluation split; "
          + (f"trained in {trained['train_seconds']} s" if "train_seconds" in trained else
             f"adopted from {trained['init_from']}"),
          "", "| most frequent | count | longest | bytes |", "|---|---:|---|---:|"]
    md += [f"| {md_cell(repr(f['token']))} | {f['count']} | {md_cell(repr(lg['token']))} | {lg['bytes']} |"
           for f, lg in zip(report["most_frequent"], report["longest"])]
    create_markdown_artifact(key="tokenizer-report", markdown="\n".join(md),
                             description=f"tokenizer: {report['eval_bytes_per_token']} bytes/token on the evaluation "
                                         f"split, vocab {tok.vocab_size}; most frequent and longest tokens")
    print(f"tokenizer: vocab {tok.vocab_size}, {report['eval_bytes_per_token']} bytes/token on eval")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    return tokenizer(load_params(ap.parse_args(argv).params))


if __name__ == "__main__":
    main()
