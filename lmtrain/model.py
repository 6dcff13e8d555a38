"""GPT-2 language model, nanoGPT-style: config, blocks, model, sampling and a KV cache.

References: GPT-2 (Radford et al. 2019) and karpathy/nanoGPT. Module names match the
HuggingFace GPT-2 checkpoint layout so `lmtrain.hf` can map weights one-to-one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

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


# Named configs. `tiny` is sized so the default CPU profile pretrains in minutes; the rest are GPT-2.
GPT_CONFIGS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0),  # < 1 epoch: no dropout
    "shakespeare_char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


class KVCache:
    """Keys and values of past positions, one preallocated buffer per layer.

    Drive it step by step (a server, a PPO rollout):
        cache = model.new_kv_cache(batch_size)
        logits, _ = model(prompt_ids, kv_cache=cache)     # prefill; cache.pos = prompt length
        logits, _ = model(next_ids, kv_cache=cache)       # one (or more) new tokens per row
    All rows share one position counter, so batch rows must have equal lengths (left-align prompts
    of equal length, or decode one sequence per cache). `cache.pos` may be reset to rewind.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.pos = 0  # number of positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v of the new positions for `layer`; return all keys and values so far."""
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {t} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.pos:self.pos + t] = k
        self.v[layer][:, :, self.pos:self.pos + t] = v
        return self.k[layer][:, :, :self.pos + t], self.v[layer][:, :, :self.pos + t]


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

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is None:
            mask, causal = None, True
        else:
            past = kv_cache.pos
            k, v = kv_cache.update(layer, k, v)
            # new query i sits at absolute position past + i and may see keys 0 .. past + i
            causal = False
            mask = None if T == 1 else (
                torch.arange(past + T, device=x.device)[None, :] <= past + torch.arange(T, device=x.device)[:, None])
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

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for every position, and the mean cross-entropy if targets are given.

        With a kv_cache, idx holds only the new tokens; their positions start at kv_cache.pos.
        """
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_kv_cache(self, batch_size: int, max_len: int | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `batch_size` sequences of up to max_len (default block_size) tokens."""
        c = self.config
        w = self.lm_head.weight
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
                       w.device, dtype or w.dtype)

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        """AdamW that decays only 2-D weights (matmuls, embeddings), never biases or LayerNorm gains."""
        return configure_adamw(self, weight_decay, learning_rate, betas, device_type)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T); returns (B, T + max_new_tokens)."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator))
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def generate_tokens(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
                        generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yield the sampled tokens one step at a time, each (B, 1); the basis for streaming.

        The KV cache is used when prompt + new tokens fit in block_size; otherwise the context is
        cropped to the last block_size tokens and recomputed each step.
        """
        if use_cache and idx.size(1) + max_new_tokens <= self.config.block_size:
            cache = self.new_kv_cache(idx.size(0), idx.size(1) + max_new_tokens)
            logits, _ = self(idx, kv_cache=cache)
            for step in range(max_new_tokens):
                nxt = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
                yield nxt
                if step + 1 < max_new_tokens:
                    logits, _ = self(nxt, kv_cache=cache)
            return
        yield from generate_by_recompute(self, idx, max_new_tokens, temperature, top_k, top_p, generator)


def configure_adamw(model: nn.Module, weight_decay: float, learning_rate: float,
                    betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
    """AdamW with decay on parameters of dim >= 2 only; fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device_type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample one token per row from logits (B, vocab); temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate_by_recompute(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None,
                          generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Sampling without a cache: rerun the model on the last block_size tokens at every step."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.block_size:])
        nxt = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt


MODEL_KINDS = ("bigram", "mlp", "gpt")


def build_model(kind: str, config: str | dict = "tiny", vocab_size: int | None = None,
                **overrides) -> nn.Module:
    """A model by kind ('bigram', 'mlp', 'gpt') and named config or a dict of config fields."""
    from lmtrain import baselines  # baselines import this module; resolve the cycle at call time

    tables = {"gpt": (GPT_CONFIGS, GPTConfig, GPT),
              "mlp": (baselines.MLP_CONFIGS, baselines.MLPConfig, baselines.MLPLanguageModel),
              "bigram": (baselines.BIGRAM_CONFIGS, baselines.BigramConfig, baselines.BigramLanguageModel)}
    if kind not in tables:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    named, config_cls, model_cls = tables[kind]
    if isinstance(config, str):
        if config not in named:
            raise ValueError(f"unknown {kind} config {config!r}; expected one of {sorted(named)}")
        fields = dict(named[config])
    else:
        fields = dict(config)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    fields.update(overrides)
    return model_cls(config_cls(**fields))


def model_spec(model: nn.Module) -> dict:
    """{'kind', 'config'}: enough to rebuild the model with build_model (saved beside checkpoints)."""
    kind = {"GPT": "gpt", "MLPLanguageModel": "mlp", "BigramLanguageModel": "bigram"}[type(model).__name__]
    return {"kind": kind, "config": asdict(model.config)}
