"""GPT-2 language model, nanoGPT-style: config, blocks, the model and its KV cache.

References: GPT-2 (Radford et al. 2019) and karpathy/nanoGPT. Module names match the
HuggingFace GPT-2 checkpoint layout so `lmtrain.models.hf` can map weights one-to-one. This is the one
forward pass: training, evaluation, the reward/value heads (`hidden_states`) and every kind of
generation (a KV cache whose rows each have their own length) all run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum sequence length (learned position embeddings)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; overridden by the tokenizer's size
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, like GPT-2
    vocab_multiple: int = 1  # embedding rows padded to a multiple of this (64 on GPUs: 50257 -> 50304)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_multiple)
        return -(-self.vocab_size // m) * m


# Named configs. `tiny` is sized so the default CPU profile pretrains in minutes; the rest are GPT-2.
GPT_CONFIGS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0),  # < 1 epoch: no dropout
    "smoke": dict(n_layer=2, n_head=2, n_embd=64, block_size=128, dropout=0.0),  # smoke runs and dry runs
    "shakespeare_char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


class KVCache:
    """Keys and values of past positions, one preallocated (rows, heads, max_len, head_dim) buffer per layer.

    Every row has its own length (`lengths`, plain ints: building positions needs no device sync), so
    sequences of different lengths share one cache — the engine's slots. Drive it step by step:
        cache = model.new_kv_cache(batch_size)
        logits, _ = model(prompt_ids, kv_cache=cache)     # prefill rows 0..B-1
        logits, _ = model(next_ids, kv_cache=cache)       # one (or more) new tokens per row
    `row_start` in the forward addresses rows row_start .. row_start + B - 1 (prefill one engine slot).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.lengths = [0] * batch_size  # positions already stored, per row

    @property
    def pos(self) -> int:
        """The common length of all rows (a cache driven as one batch)."""
        if len(set(self.lengths)) != 1:
            raise ValueError(f"rows of this cache have different lengths {sorted(set(self.lengths))}")
        return self.lengths[0]

    @pos.setter
    def pos(self, value: int) -> None:  # rewind every row
        self.lengths = [value] * len(self.lengths)

    def move(self, src: int, dst: int) -> None:
        """Copy row src into row dst (the engine keeps its running rows contiguous)."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v):
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n


class _CacheStep:
    """Where one forward writes into a KVCache: its rows, each row's positions, the attention mask."""

    def __init__(self, cache: KVCache, row_start: int, B: int, T: int, device: torch.device) -> None:
        starts = cache.lengths[row_start:row_start + B]
        if len(starts) != B:
            raise ValueError(f"KV cache has {len(cache.lengths)} rows; rows {row_start}..{row_start + B - 1} asked")
        self.cache, self.rows, self.T = cache, slice(row_start, row_start + B), T
        self.end = max(starts) + T  # keys to read: 0 .. end-1
        if self.end > cache.max_len:
            raise ValueError(f"KV cache full: {max(starts)} + {T} positions > max_len {cache.max_len}")
        self.uniform = len(set(starts)) == 1
        self.start = starts[0]
        if self.uniform:
            # query i sits at position start + i and sees keys 0 .. start + i
            self.positions = torch.arange(self.start, self.end, device=device)
            self.mask = None if T == 1 else (torch.arange(self.end, device=device)[None, :]
                                             <= self.positions[:, None])
        else:
            self.positions = torch.tensor(starts, device=device)[:, None] + torch.arange(T, device=device)
            self.row_index = torch.arange(row_start, row_start + B, device=device)[:, None]
            self.mask = (torch.arange(self.end, device=device)[None, None, :]
                         <= self.positions[:, :, None])[:, None]  # (B, 1, T, end)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, heads, T, head_dim) of the new positions; return all keys and values so far."""
        ck, cv = self.cache.k[layer], self.cache.v[layer]
        if self.uniform:
            ck[self.rows, :, self.start:self.end] = k
            cv[self.rows, :, self.start:self.end] = v
        else:
            ck[self.row_index, :, self.positions] = k.transpose(1, 2).to(ck.dtype)
            cv[self.row_index, :, self.positions] = v.transpose(1, 2).to(cv.dtype)
        return ck[self.rows, :, :self.end], cv[self.rows, :, :self.end]

    def advance(self) -> None:
        for r in range(self.rows.start, self.rows.stop):
            self.cache.lengths[r] += self.T


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, step: _CacheStep | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if step is None:
            mask, causal = None, True
        else:
            k, v = step.update(layer, k, v)
            mask, causal = step.mask, False
            if k.dtype != q.dtype:  # a cache kept in the compute dtype, read outside autocast
                k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new", so HF checkpoints match exactly
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, step: _CacheStep | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), step, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # weight tying: the output projection reuses the token embedding (fewer params, better LM)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections that write into the residual stream by
        # 1/sqrt(2 * n_layer): each block adds two of them, keeping the stream's variance bounded.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); non_embedding drops the position embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None, row_start: int = 0) -> torch.Tensor:
        """Final (ln_f) hidden states (B, T, n_embd): what lm_head, a value head or a reward head read.

        With a kv_cache, idx holds only the new tokens of rows row_start .. row_start + B - 1; each
        row's positions start at its own length in the cache.
        """
        B, T = idx.size()
        step = None if kv_cache is None else _CacheStep(kv_cache, row_start, B, T, idx.device)
        end = T if step is None else step.end
        if end > self.config.block_size:
            raise ValueError(f"sequence of {end} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device) if step is None else step.positions
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, step, i)
        if step is not None:
            step.advance()
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                row_start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for every position, and the mean cross-entropy if targets are given."""
        logits = self.lm_head(self.hidden_states(idx, kv_cache, row_start))
        loss = None
        if targets is not None:
            # no .float() copy of the logits: under autocast cross_entropy computes in fp32 by itself
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]  # padding rows are never a token
        return logits, loss

    def new_kv_cache(self, batch_size: int, max_len: int | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch_size` rows of up to max_len (default block_size) tokens, kept in the
        compute dtype: the autocast dtype when autocast is on, else the weights' dtype."""
        c = self.config
        w = self.lm_head.weight
        if dtype is None:
            on = torch.is_autocast_enabled(w.device.type)
            dtype = torch.get_autocast_dtype(w.device.type) if on else w.dtype
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
                       w.device, dtype)
