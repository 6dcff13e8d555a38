"""A HuggingFace GPT-2 tokenizer folder (`vocab.json` + `merges.txt`) as a `Tokenizer` served by tiktoken.

GPT-2's ids are its BPE ranks (the 256 byte tokens, then one token per merge, in merge order), which is
exactly what tiktoken's `mergeable_ranks` are once each vocab string is mapped back to its bytes — the
same conversion tiktoken makes for its own `gpt2` encoding. So the converted tokenizer encodes as
GPT-2 does (tested against transformers), is saved and hashed like any lmforge tokenizer, and
pretokenize, training and chat use it unchanged.

Special tokens are `<|endoftext|>` and whatever the folder's `added_tokens.json`,
`special_tokens_map.json` or `tokenizer_config.json` name; they must follow the learned tokens.
`with_chat_specials` appends the chat template's markers a GPT-2 vocabulary lacks (new ids after the
last one), so SFT can render conversations; lmtrain.models.init gives them embedding rows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from lmtrain.tokenizer.chat import DEFAULT_SPECIALS, EOT
from lmtrain.tokenizer.core import Tokenizer

# GPT-2's pre-tokenisation pattern (openai/gpt-2 encoder.py), as tiktoken's gpt2 encoding reads it
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FILES = ("vocab.json", "merges.txt")


@lru_cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte, mapped back to the byte (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:  # unprintable bytes get the characters from U+0100 on
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def is_gpt2_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a GPT-2 tokenizer (vocab.json and merges.txt)."""
    return all((Path(folder) / f).is_file() for f in FILES)


def _special_names(folder: Path) -> set[str]:
    """`<|endoftext|>` and the special tokens the folder's HF side files name."""
    names = {EOT}
    files = {name: folder / name for name in ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json")}
    if files["added_tokens.json"].is_file():
        names |= set(json.loads(files["added_tokens.json"].read_text(encoding="utf-8")))
    if files["special_tokens_map.json"].is_file():
        for value in json.loads(files["special_tokens_map.json"].read_text(encoding="utf-8")).values():
            for v in value if isinstance(value, list) else [value]:
                names.add(v["content"] if isinstance(v, dict) else v)
    if files["tokenizer_config.json"].is_file():
        config = json.loads(files["tokenizer_config.json"].read_text(encoding="utf-8"))
        names |= {t["content"] for t in (config.get("added_tokens_decoder") or {}).values()}
    return names


def gpt2_tokenizer(folder: str | Path) -> Tokenizer:
    """The GPT-2 tokenizer of a local HF folder as an lmforge `Tokenizer` (ids unchanged)."""
    folder = Path(folder)
    if not is_gpt2_folder(folder):
        raise FileNotFoundError(f"{folder}: no GPT-2 tokenizer (needs {' and '.join(FILES)})")
    vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    specials = {name: i for name, i in vocab.items() if name in _special_names(folder)}
    decode = byte_decoder()
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(decode[ch] for ch in token)] = i
        except KeyError as e:
            raise ValueError(f"{folder / 'vocab.json'}: token {token!r} (id {i}) is not byte-level BPE "
                             f"(character {e.args[0]!r}); name it in added_tokens.json if it is a special token") from e
    if EOT not in specials:
        raise ValueError(f"{folder / 'vocab.json'}: no {EOT} token (GPT-2's document separator)")
    if len(ranks) + len(specials) != len(vocab):
        raise ValueError(f"{folder / 'vocab.json'}: {len(vocab) - len(ranks) - len(specials)} tokens share the "
                         "bytes of another (one id per byte string is needed)")
    if specials and min(specials.values()) < len(ranks):
        raise ValueError(f"{folder / 'vocab.json'}: special tokens {sorted(specials)} must come after the "
                         f"{len(ranks)} learned tokens (GPT-2 layout), found ids {sorted(specials.values())}")
    return Tokenizer(ranks, specials, pattern=GPT2_PATTERN, name=f"gpt2:{folder.name}")


def with_chat_specials(tok: Tokenizer) -> Tokenizer:
    """`tok` with the chat template's special tokens it lacks appended (new ids after its last)."""
    missing = [s for s in DEFAULT_SPECIALS if s not in tok.special_tokens]
    if not missing:
        return tok
    specials = {**tok.special_tokens, **{s: tok.vocab_size + k for k, s in enumerate(missing)}}
    return Tokenizer(tok.ranks, specials, pattern=tok.pattern)
