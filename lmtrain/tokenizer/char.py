"""Character-level tokenizer (shakespeare_char style) with the same interface as `Tokenizer`.

Vocabulary: U+FFFD plus every character seen in training, sorted by code point (ids 0..n-1), then the
special tokens. Characters never seen in training encode as U+FFFD, as do lone surrogates, so
`decode(encode(s)) == s` for strings made of seen characters. Special-token strings in text are
plain characters unless `allow_special=True`.

Saved like the BPE tokenizer: `tokenizer.tiktoken` lines `<base64 of the character's UTF-8> <id>`
and `tokenizer.json` with `"kind": "char"`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lmtrain.tokenizer.chat import DEFAULT_SPECIALS, EOT
from lmtrain.tokenizer.core import (
    FORMAT,
    LOADERS,
    RANKS_FILE,
    SIDECAR_FILE,
    content_hash,
    read_sidecar,
    valid_utf8,
    write_tokenizer_files,
)

REPLACEMENT = "\ufffd"


class CharTokenizer:
    """One id per character; unseen characters map to U+FFFD."""

    kind = "char"
    pattern = ""

    def __init__(self, chars: Iterable[str], special_tokens: Sequence[str] | Mapping[str, int] = DEFAULT_SPECIALS
                 ) -> None:
        self.chars = sorted(set(chars) | {REPLACEMENT})
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("chars must be single characters")
        names = sorted(special_tokens, key=special_tokens.get) if isinstance(special_tokens, Mapping) \
            else list(special_tokens)
        self.special_tokens = {s: len(self.chars) + k for k, s in enumerate(names)}
        if isinstance(special_tokens, Mapping) and dict(special_tokens) != self.special_tokens:
            raise ValueError(f"special token ids {dict(special_tokens)} do not follow the {len(self.chars)} chars")
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._unk = self.chars.index(REPLACEMENT)
        import regex  # imported here: loading lmtrain.tokenizer needs only tiktoken (bare GPU images)

        self._specials_re = regex.compile("|".join(regex.escape(s) for s in names)) if names else None
        self.hash = content_hash(self.kind, self.pattern, self.special_tokens, self._ranks_file())

    @property
    def vocab_size(self) -> int:
        """Characters (including U+FFFD) + special tokens."""
        return len(self.chars) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        """Id of `<|endoftext|>`."""
        return self.special_tokens[EOT]

    def _encode_plain(self, text: str) -> list[int]:
        cps = np.frombuffer(valid_utf8(text).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos = np.searchsorted(self._codepoints, cps).clip(0, len(self.chars) - 1)
        return np.where(self._codepoints[pos] == cps, pos, self._unk).tolist()

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of `text`, one per character."""
        if not allow_special or self._specials_re is None:
            return self._encode_plain(text)
        ids, start = [], 0
        for m in self._specials_re.finditer(text):
            ids += self._encode_plain(text[start:m.start()]) + [self.special_tokens[m.group()]]
            start = m.end()
        return ids + self._encode_plain(text[start:])

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` over many texts (vectorised per text; `num_threads` is accepted and unused)."""
        return [self._encode_plain(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens decode to their names."""
        return "".join(self.token_bytes(i).decode("utf-8") for i in ids)

    def token_bytes(self, i: int) -> bytes:
        """UTF-8 bytes of one token."""
        if 0 <= i < len(self.chars):
            return self.chars[i].encode("utf-8")
        for s, j in self.special_tokens.items():
            if j == i:
                return s.encode("utf-8")
        raise KeyError(f"token id {i} outside the vocabulary of {self.vocab_size}")

    def _ranks_file(self) -> bytes:
        return b"".join(base64.b64encode(c.encode("utf-8")) + b" " + str(i).encode() + b"\n"
                        for i, c in enumerate(self.chars))

    def save(self, folder: str | Path) -> Path:
        """Write `tokenizer.tiktoken` + `tokenizer.json` (kind "char") into `folder`."""
        sidecar = {"format": FORMAT, "kind": self.kind, "pattern": self.pattern,
                   "special_tokens": self.special_tokens, "vocab_size": self.vocab_size, "hash": self.hash}
        write_tokenizer_files(Path(folder), self._ranks_file(), sidecar)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> CharTokenizer:
        """Load a saved character tokenizer and check its hash."""
        folder = Path(folder)
        meta = read_sidecar(folder)
        if meta["kind"] != cls.kind:
            raise ValueError(f"{folder / SIDECAR_FILE}: kind {meta['kind']!r}, expected 'char'")
        chars = {}
        for n, line in enumerate((folder / RANKS_FILE).read_bytes().splitlines(), 1):
            try:
                token, rank = line.split()
                chars[int(rank)] = base64.b64decode(token, validate=True).decode("utf-8")
            except ValueError as e:
                raise ValueError(f"{folder / RANKS_FILE}:{n}: bad line {line[:60]!r}: {e}") from e
        tok = cls(chars.values(), meta["special_tokens"])
        if tok.hash != meta["hash"]:
            raise ValueError(f"{folder}: content hash does not match the sidecar (files edited?)")
        return tok

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, hash={self.hash[:12]})"


LOADERS["char"] = CharTokenizer.load


def train_char(texts: Iterable[str], special_tokens: Sequence[str] = DEFAULT_SPECIALS) -> CharTokenizer:
    """A character tokenizer whose vocabulary is the characters of `texts`."""
    seen: set[str] = set()
    for t in texts:
        seen.update(valid_utf8(t))
    return CharTokenizer(seen, special_tokens)
