"""Windows over token shards: seeded random training windows, whole-split evaluation windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmtrain.data.shards import TokenShards


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

    def _draw(self, global_batch_size: int) -> list[tuple[int, int]]:
        """(shard, offset) of every row of the next global batch: the same on every rank."""
        total = int(self.cum_starts[-1])
        picks = torch.randint(total, (global_batch_size,), generator=self.generator)
        shard_ids = torch.searchsorted(self.cum_starts, picks, right=True)
        self.batches_drawn += 1
        return [(sid, pick - (int(self.cum_starts[sid - 1]) if sid > 0 else 0))
                for pick, sid in zip(picks.tolist(), shard_ids.tolist())]

    def _read(self, rows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.from_numpy(np.stack([np.asarray(self.shards.shards[sid].tokens[o:o + self.block_size + 1],
                                                     np.int64) for sid, o in rows]))
        return data[:, :-1], data[:, 1:]

    def global_batch(self, global_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of global_batch_size rows, each (rows, block_size) int64."""
        return self._read(self._draw(global_batch_size))

    def rank_batches(self, micro_batch: int, accum_steps: int, rank: int, world: int,
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of one optimizer step: rows [rank*micro_batch ...] of each slab.

        Every rank draws the whole step's positions (cheap) but reads only its own rows from disk.
        """
        rows = self._draw(micro_batch * accum_steps * world)
        out = []
        for a in range(accum_steps):
            lo = (a * world + rank) * micro_batch
            out.append(self._read(rows[lo:lo + micro_batch]))
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
