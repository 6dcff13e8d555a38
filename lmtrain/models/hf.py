"""HuggingFace transformers GPT-2 interop: export a GPT, import a local GPT-2 folder and its tokenizer.

No transformers import is needed here: the format is config.json + model.safetensors, and our module
names already match HF's `transformer.*` layout. HF stores the four projection matrices as Conv1D
(in, out), the transpose of nn.Linear's (out, in).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import regex
import safetensors.torch as st
import torch

from lmtrain.models.gpt import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# GPT-2's pre-tokenisation pattern (openai/gpt-2 encoder.py)
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def export_hf(model: GPT, out_dir: str | Path) -> Path:
    """Write config.json and model.safetensors loadable by transformers' GPT2LMHeadModel."""
    c = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight; HF re-ties on load
        if name == "transformer.wte.weight":
            value = value[:c.vocab_size]  # rows padded to vocab_multiple are never a token
        tensors[name] = (value.t() if name.endswith(_CONV1D) else value).detach().cpu().contiguous()
    if not c.bias:  # HF GPT-2 always has biases: zeros are the same function
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                tensors[name.replace(".weight", ".bias")] = torch.zeros_like(p.detach().cpu())
        for i in range(c.n_layer):
            for proj, width in (("attn.c_attn", 3 * c.n_embd), ("attn.c_proj", c.n_embd),
                                ("mlp.c_fc", 4 * c.n_embd), ("mlp.c_proj", c.n_embd)):
                tensors[f"transformer.h.{i}.{proj}.bias"] = torch.zeros(width)
    st.save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
              "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
              "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new",
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
              "tie_word_embeddings": True, "torch_dtype": "float32"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def import_hf(hf_dir: str | Path) -> tuple[GPT, GPT2Tokenizer | None]:
    """A GPT from a local HF GPT-2 folder (config.json + model.safetensors), and its tokenizer if present."""
    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") != "gpt2":
        raise ValueError(f"{hf_dir}/config.json: model_type is {cfg.get('model_type')!r}, expected 'gpt2'")
    if cfg.get("activation_function", "gelu_new") != "gelu_new" or cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
        raise ValueError(f"{hf_dir}/config.json: only gelu_new and n_inner = 4·n_embd are supported")
    weights = hf_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: only safetensors checkpoints are read (never pickled .bin files)")
    model = GPT(GPTConfig(block_size=cfg["n_positions"], vocab_size=cfg["vocab_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0, bias=True))
    sd = {}
    for name, value in st.load_file(str(weights)).items():
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"  # bare GPT2Model
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older checkpoints
        sd[name] = value.t() if name.endswith(_CONV1D) else value
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {missing}, unexpected keys {unexpected}")
    tokenizer = None
    if (hf_dir / "vocab.json").exists() and (hf_dir / "merges.txt").exists():
        tokenizer = GPT2Tokenizer(hf_dir / "vocab.json", hf_dir / "merges.txt")
    return model.eval(), tokenizer


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class GPT2Tokenizer:
    """Byte-level BPE from a GPT-2 vocab.json + merges.txt: encode(str) -> ids, decode(ids) -> str."""

    def __init__(self, vocab_path: str | Path, merges_path: str | Path) -> None:
        self.encoder: dict[str, int] = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        self.bpe_ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.pattern = regex.compile(_GPT2_PATTERN)
        self.cache: dict[str, list[str]] = {}
        self.eot_id = self.encoder.get("<|endoftext|>")

    def _bpe(self, word: str) -> list[str]:
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.bpe_ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:]))]
            rank, first = min(pairs)
            if rank == float("inf"):
                break
            best = (parts[first], parts[first + 1])  # merge every occurrence of it, left to right
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for tok in self._bpe(mapped):
                if tok not in self.encoder:
                    raise ValueError(f"BPE produced {tok!r}, which is not in vocab.json")
                ids.append(self.encoder[tok])
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(self.byte_decoder[ch] for i in ids for ch in self.decoder[i])

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
