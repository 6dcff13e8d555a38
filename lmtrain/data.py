"""Token shards on disk: memmapped reading, seeded random training windows, whole-split eval windows.

A split is a folder of `<name>.bin` (flat token ids, each document followed by the end-of-text id)
with a `<name>.json` sidecar in the `lmforge-tokens-v1` format (see `write_shard`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmtrain.tokenizer.tokens import FORMAT, token_dtype  # one definition of the shard format

SIDECAR_FIELDS = ("format", "vocab_size", "dtype", "tokens", "bytes", "documents", "tokenizer_hash", "eot_id")


def write_shard(path: str | Path, tokens: np.ndarray | list[int], vocab_size: int, n_bytes: int,
                documents: int, eot_id: int, tokenizer_hash: str = "") -> Path:
    """Write `<path>.bin` and its `<path>.json` sidecar (used by tests; the pretokenize stage has its own)."""
    path = Path(path).with_suffix("")
    dtype = token_dtype(vocab_size)
    arr = np.asarray(tokens, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr.tofile(path.with_suffix(".bin"))
    meta = {"format": FORMAT, "vocab_size": vocab_size, "dtype": np.dtype(dtype).name, "tokens": int(arr.size),
            "bytes": int(n_bytes), "documents": int(documents), "tokenizer_hash": tokenizer_hash, "eot_id": eot_id}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return path.with_suffix(".bin")


@dataclass
class Shard:
    path: Path
    tokens: np.memmap
    meta: dict


class TokenShards:
    """All shards of one split, memmapped; checks every sidecar against its .bin file."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        bins = sorted(self.folder.glob("*.bin"))
        if not bins:
            raise FileNotFoundError(f"no token shards (*.bin) in {self.folder}")
        self.shards: list[Shard] = []
        for b in bins:
            side = b.with_suffix(".json")
            if not side.exists():
                raise FileNotFoundError(f"{b}: missing sidecar {side.name}")
            meta = json.loads(side.read_text())
            missing = [f for f in SIDECAR_FIELDS if f not in meta]
            if missing:
                raise ValueError(f"{side}: missing field(s) {missing}")
            if meta["format"] != FORMAT:
                raise ValueError(f"{side}: field 'format' is {meta['format']!r}, expected {FORMAT!r}")
            dtype = np.dtype(meta["dtype"])
            n = os.path.getsize(b) // dtype.itemsize
            if n != meta["tokens"]:
                raise ValueError(f"{side}: field 'tokens' says {meta['tokens']} but {b.name} holds {n}")
            tokens = np.memmap(b, dtype=dtype, mode="r") if n else np.zeros(0, dtype=dtype)
            self.shards.append(Shard(b, tokens, meta))
        first = self.shards[0].meta
        for s in self.shards[1:]:
            for field in ("vocab_size", "eot_id", "tokenizer_hash"):
                if s.meta[field] != first[field]:
                    raise ValueError(f"{s.path.with_suffix('.json')}: field {field!r} = {s.meta[field]!r} differs "
                                     f"from {self.shards[0].path.name}'s {first[field]!r}")
        self.vocab_size: int = int(first["vocab_size"])
        self.eot_id: int = int(first["eot_id"])
        self.tokenizer_hash: str = first["tokenizer_hash"]

    @property
    def n_tokens(self) -> int:
        return sum(int(s.meta["tokens"]) for s in self.shards)

    @property
    def n_bytes(self) -> int:
        return sum(int(s.meta["bytes"]) for s in self.shards)


class RandomWindows:
    """Seeded random (x, y) windows of block_size tokens, y shifted by one.

    Every rank draws the same global batch from one generator and keeps its own slice, so ranks see
    disjoint samples and the union equals what one process with the global batch would see. The
    generator state plus the batch counter is the whole data position (`state_dict`).
    """

    def __init__(self, shards: TokenShards, block_size: int, seed: int) -> None:
        self.shards = shards
        self.block_size = block_size
        lengths = np.array([max(len(s.tokens) - block_size - 1, 0) + 1 if len(s.tokens) > block_size else 0
                            for s in shards.shards], dtype=np.int64)  # valid start offsets per shard
        if lengths.sum() == 0:
            raise ValueError(f"{shards.folder}: no shard holds more than block_size={block_size} tokens")
        self.cum_starts = torch.from_numpy(np.cumsum(lengths))
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def global_batch(self, global_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of global_batch_size rows, each (rows, block_size) int64."""
        total = int(self.cum_starts[-1])
        picks = torch.randint(total, (global_batch_size,), generator=self.generator)
        shard_ids = torch.searchsorted(self.cum_starts, picks, right=True)
        rows = []
        for pick, sid in zip(picks.tolist(), shard_ids.tolist()):
            offset = pick - (int(self.cum_starts[sid - 1]) if sid > 0 else 0)
            rows.append(np.asarray(self.shards.shards[sid].tokens[offset:offset + self.block_size + 1], np.int64))
        self.batches_drawn += 1
        data = torch.from_numpy(np.stack(rows))
        return data[:, :-1], data[:, 1:]

    def rank_batches(self, micro_batch: int, accum_steps: int, rank: int, world: int,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of one optimizer step: rows [rank*micro_batch ...] of each slab."""
        x, y = self.global_batch(micro_batch * accum_steps * world)
        out = []
        for a in range(accum_steps):
            lo = (a * world + rank) * micro_batch
            out.append((x[lo:lo + micro_batch], y[lo:lo + micro_batch]))
        return out

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches_drawn = int(state["batches_drawn"])


def eval_windows(shards: TokenShards, block_size: int, stride: int | None = None,
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Windows covering every token of every shard once: yields (x, y, score_from).

    Each shard is preceded by the end-of-text id (the end of the previous document), so even its
    first token is predicted. Score y[score_from:] only; with stride < block_size windows overlap
    and each token is scored once, with up to block_size - stride tokens of extra context.
    """
    stride = stride or block_size
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in (0, block_size={block_size}], got {stride}")
    for s in shards.shards:
        stream = np.concatenate([[shards.eot_id], np.asarray(s.tokens, dtype=np.int64)])
        n_targets = len(stream) - 1
        scored = 0  # targets already scored in this shard
        while scored < n_targets:
            # score the next `stride` targets, with as much preceding context as fits in the window
            end = min(block_size if scored == 0 else scored + stride, n_targets)
            start = max(end - block_size, 0)
            yield stream[start:end], stream[start + 1:end + 1], scored - start
            scored = end
