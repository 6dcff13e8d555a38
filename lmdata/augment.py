"""Data augmentation, off by default, so ablations can measure what it is worth.

- `upsample_source`: more repeats for the designated high-quality source (multiplies `repeats`).
- Instructions: `prompt_variants` extra rows per train record, each with the prompt rephrased by a
  fixed template chosen by hash (the response is unchanged; `messages` and `text` follow).
- Comparisons: a pair record is unordered (`chosen`, `rejected` are named), but anything that
  reads it positionally is not: the joined `text` always put the chosen answer first, which a
  model can learn instead of quality. `shuffle_pairs` presents each train pair as `response_a`,
  `response_b` with `label` = 0 if `response_a` is the chosen one, swapping about half of them by
  hash, and rewrites `text` in that order. `chosen`/`rejected` stay as they were, so the label
  stays correct by construction.
Eval rows are never augmented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl
import xxhash

from lmdata.filters.heuristics import check_field_types, config_from_dict
from lmdata.text import hash_hex

PROMPT_TEMPLATES = (
    "{prompt}",
    "Please answer the following.\n\n{prompt}",
    "{prompt}\n\nExplain clearly.",
    "Question: {prompt}",
    "I have a question: {prompt}",
    "{prompt}\n\nBe thorough.",
)


@dataclass
class AugmentConfig:
    """Maps 1:1 to params.yaml `augment`."""

    enabled: bool = False
    upsample_source: str = ""  # e.g. the quality classifier's positive source; "" = none
    upsample_factor: int = 2  # its `repeats` are multiplied by this
    prompt_variants: int = 1  # extra rephrased rows per train instruction (0 = none)
    shuffle_pairs: bool = True  # comparisons: present pairs as response_a/response_b + label
    seed: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "augment")
        if self.upsample_factor < 1 or self.prompt_variants < 0:
            raise ValueError("augment: upsample_factor must be >= 1 and prompt_variants >= 0")
        if self.prompt_variants >= len(PROMPT_TEMPLATES):
            raise ValueError(f"augment.prompt_variants: at most {len(PROMPT_TEMPLATES) - 1}")

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        return config_from_dict(cls, d or {}, "augment")


def _h(key: str, seed: int) -> int:
    return xxhash.xxh3_64_intdigest(key.encode(), seed=seed)


def upsample_source(df: pl.DataFrame, cfg: AugmentConfig) -> pl.DataFrame:
    """Multiply `repeats` of the train rows of `cfg.upsample_source` (adds `repeats`=1 if absent)."""
    if "repeats" not in df.columns:
        df = df.with_columns(pl.lit(1, dtype=pl.Int64).alias("repeats"))
    if not cfg.enabled or not cfg.upsample_source:
        return df
    if cfg.upsample_source not in set(df["source"].to_list()):
        raise ValueError(f"augment.upsample_source {cfg.upsample_source!r} is not a source of the data")
    hit = (pl.col("source") == cfg.upsample_source) & (pl.col("split") == "train")
    return df.with_columns(pl.when(hit).then(pl.col("repeats") * cfg.upsample_factor)
                           .otherwise(pl.col("repeats")).alias("repeats"))


def _rephrase_messages(messages: str, prompt: str) -> str:
    msgs = json.loads(messages)
    for m in msgs:
        if m.get("role") == "user":
            m["content"] = prompt  # the first user turn carries the prompt
            break
    return json.dumps(msgs, ensure_ascii=False)


def prompt_variants(df: pl.DataFrame, cfg: AugmentConfig) -> pl.DataFrame:
    """Instructions plus `cfg.prompt_variants` rephrased copies of each train row (new ids; columns
    `augmented` = template index, 0 for originals, and `augmented_from` = the original's id)."""
    df = df.with_columns(pl.lit(0, dtype=pl.Int64).alias("augmented"),
                         pl.lit(None, dtype=pl.Utf8).alias("augmented_from"))
    if not cfg.enabled or cfg.prompt_variants == 0 or df.is_empty():
        return df
    new_rows = []
    for row in df.filter(pl.col("split") == "train").iter_rows(named=True):
        start = _h(row["id"], cfg.seed) % (len(PROMPT_TEMPLATES) - 1)
        for k in range(cfg.prompt_variants):
            t = 1 + (start + k) % (len(PROMPT_TEMPLATES) - 1)  # never template 0 (the original)
            prompt = PROMPT_TEMPLATES[t].format(prompt=row["prompt"])
            new = dict(row, prompt=prompt, augmented=t, augmented_from=row["id"],
                       id=hash_hex(row["id"], "prompt_variant", str(t)))
            new["text"] = row["text"].replace(row["prompt"], prompt, 1)
            if "messages" in new:
                new["messages"] = _rephrase_messages(row["messages"], prompt)
            if "n_bytes" in new:
                new["n_bytes"] = len(new["text"].encode())
            new_rows.append(new)
    if not new_rows:
        return df
    return pl.concat([df, pl.DataFrame(new_rows, schema=df.schema)])


def shuffle_pairs(df: pl.DataFrame, cfg: AugmentConfig) -> pl.DataFrame:
    """Comparisons with `response_a`, `response_b`, `label` (0: a is chosen, 1: b is chosen).

    Train pairs are swapped when a hash of their id is odd and their `text` becomes prompt, a, b;
    with augmentation off (or for eval rows) a = chosen, label 0, and `text` is left as it was."""
    swap = [bool(_h(i, cfg.seed) & 1) and s == "train" and cfg.enabled and cfg.shuffle_pairs
            for i, s in zip(df["id"].to_list(), df["split"].to_list())]
    sw = pl.Series("swap", swap, dtype=pl.Boolean)
    out = df.with_columns(
        pl.when(sw).then(pl.col("rejected")).otherwise(pl.col("chosen")).alias("response_a"),
        pl.when(sw).then(pl.col("chosen")).otherwise(pl.col("rejected")).alias("response_b"),
        sw.cast(pl.Int64).alias("label"))
    if cfg.enabled and cfg.shuffle_pairs:
        joined = pl.concat_str(pl.col("prompt"), pl.col("response_a"), pl.col("response_b"), separator="\n\n")
        out = out.with_columns(pl.when(pl.col("split") == "train").then(joined).otherwise(pl.col("text"))
                               .alias("text"))
        if "n_bytes" in out.columns:
            out = out.with_columns(pl.col("text").str.len_bytes().cast(df.schema["n_bytes"]).alias("n_bytes"))
    return out
