"""The BPE `Tokenizer`: learned ranks + special tokens served by a `tiktoken.Encoding`.

Encoding: text is pre-split with `pattern`, each chunk's UTF-8 bytes are merged by rank (tiktoken's
algorithm), special tokens come after the learned tokens. Plain-text occurrences of a special
token's string are encoded as ordinary text unless `allow_special=True`.

Strings that are not valid UTF-8 (lone surrogates such as "\\ud800") are encoded as if each lone
surrogate were U+FFFD, exactly as tiktoken does, so `decode(encode(s))` returns s with U+FFFD in
their place; for every valid string `decode(encode(s)) == s`.

On disk (`save` / `load`), a folder holding

- `tokenizer.tiktoken`: one line per learned token, `<base64 of its bytes> <id>`, sorted by id
  (the format `tiktoken.load.load_tiktoken_bpe` reads);
- `tokenizer.json`: `{"format": "lmforge-tokenizer-v1", "kind": "bpe", "pattern",
  "special_tokens": {name: id}, "vocab_size", "hash"}`.

`hash` is the SHA-256 of the canonical content (kind, pattern, specials, ranks file), checked on
load; two tokenizers with the same hash encode identically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import tiktoken

from lmtrain.tokenizer.chat import EOT

FORMAT = "lmforge-tokenizer-v1"
RANKS_FILE = "tokenizer.tiktoken"
SIDECAR_FILE = "tokenizer.json"
# GPT-4's split with digits in runs of at most three. `\p{N}{1,3}` and not tiktoken's `\p{N}{1,3}+`:
# Oniguruma (HF tokenizers) reads `{1,3}+` as "one or more runs of 1-3 digits", fancy-regex
# (tiktoken) as a possessive `{1,3}`; the plain form means the same to both engines (and to `regex`).
DEFAULT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def valid_utf8(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD, the way tiktoken treats them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# Loaders of the other tokenizer kinds, by sidecar `kind`; each kind's module registers its own.
LOADERS: dict = {}


def default_threads() -> int:
    """Threads for batch encoding: the cores we have, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def content_hash(kind: str, pattern: str, special_tokens: Mapping[str, int], body: bytes) -> str:
    """SHA-256 over everything that decides how text maps to ids."""
    h = hashlib.sha256()
    head = json.dumps({"kind": kind, "pattern": pattern, "special_tokens": dict(special_tokens)},
                      sort_keys=True, ensure_ascii=False)
    h.update(head.encode("utf-8") + b"\n")
    h.update(body)
    return h.hexdigest()


def write_tokenizer_files(folder: Path, body: bytes, sidecar: dict) -> None:
    """Write the token file and sidecar, each via a temporary file renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((RANKS_FILE, body),
                       (SIDECAR_FILE, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())):
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


def read_sidecar(folder: Path) -> dict:
    """The sidecar of a saved tokenizer, checked for format."""
    path = Path(folder) / SIDECAR_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokenizer sidecar (expected from Tokenizer.save)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class Tokenizer:
    """Byte-level BPE tokenizer; encoding and decoding run in tiktoken."""

    kind = "bpe"

    def __init__(self, ranks: Mapping[bytes, int], special_tokens: Mapping[str, int],
                 pattern: str = DEFAULT_PATTERN, name: str = "lmforge-bpe") -> None:
        ids = sorted(ranks.values()) + sorted(special_tokens.values())
        if ids != list(range(len(ids))):
            raise ValueError("token ids must be 0..n-1 without gaps: learned tokens first, then specials")
        if len(set(ranks)) != len(ranks) or any(bytes([b]) not in ranks for b in range(256)):
            raise ValueError("ranks must hold all 256 single bytes")
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens)
        self.pattern = pattern
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=self.ranks,
                                     special_tokens=self.special_tokens, explicit_n_vocab=len(ids))
        self._bytes = {i: b for b, i in self.ranks.items()}
        self._bytes.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self.hash = content_hash(self.kind, pattern, self.special_tokens, self._ranks_file())

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + learned merges + special tokens."""
        return len(self.ranks) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`, the document separator."""
        if EOT not in self.special_tokens:
            raise ValueError(f"tokenizer has no {EOT} special token")
        return self.special_tokens[EOT]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of `text`; special-token strings are plain text unless `allow_special`."""
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` over many texts on a thread pool (tiktoken releases the GIL)."""
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads or default_threads())

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 decode to U+FFFD."""
        return self.enc.decode(list(ids), errors="replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes of one token (a special token's are its UTF-8 name)."""
        return self._bytes[i]

    def _ranks_file(self) -> bytes:
        return b"".join(base64.b64encode(b) + b" " + str(i).encode() + b"\n"
                        for b, i in sorted(self.ranks.items(), key=lambda kv: kv[1]))

    def save(self, folder: str | Path) -> Path:
        """Write `tokenizer.tiktoken` + `tokenizer.json` into `folder` (created if needed)."""
        sidecar = {"format": FORMAT, "kind": self.kind, "pattern": self.pattern,
                   "special_tokens": self.special_tokens, "vocab_size": self.vocab_size, "hash": self.hash}
        write_tokenizer_files(Path(folder), self._ranks_file(), sidecar)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path):
        """Load a saved tokenizer of any kind (by the sidecar's `kind`) and check its hash."""
        folder = Path(folder)
        meta = read_sidecar(folder)
        if meta["kind"] in LOADERS:  # other kinds register here (char.py), so core imports none of them
            return LOADERS[meta["kind"]](folder)
        if meta["kind"] != "bpe":
            raise ValueError(f"{folder / SIDECAR_FILE}: unknown tokenizer kind {meta['kind']!r}")
        ranks = {}
        for n, line in enumerate((folder / RANKS_FILE).read_bytes().splitlines(), 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{folder / RANKS_FILE}:{n}: bad line {line[:60]!r}: {e}") from e
        tok = cls(ranks, meta["special_tokens"], pattern=meta["pattern"])
        if tok.hash != meta["hash"] or tok.vocab_size != meta["vocab_size"]:
            raise ValueError(f"{folder}: content hash/vocab size do not match the sidecar (files edited?)")
        return tok

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind}, vocab_size={self.vocab_size}, hash={self.hash[:12]})"
