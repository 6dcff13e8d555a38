"""Text normalisation and the two hashes every document carries (`id`, `content_hash`)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import xxhash

BOM = "\ufeff"
# C0/C1 control characters except tab and newline; DEL too. CR is handled before (CRLF/CR -> LF).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Anything normalise_text would change besides NFC: BOM, CR, the controls above, surrogates.
_DIRTY = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_ASCII_DIRTY = bytes([*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f])  # the same, within ASCII
_ASCII_TO_NUL = bytes(0 if b in _ASCII_DIRTY else b for b in range(256))


class InvalidUTF8(ValueError):
    """Bytes that are not valid UTF-8, with the offset of the first bad byte."""

    def __init__(self, offset: int, reason: str):
        super().__init__(f"invalid UTF-8 at byte {offset}: {reason}")
        self.offset = offset


@dataclass(frozen=True)
class Normalised:
    text: str
    repaired_bytes: int = 0  # number of undecodable bytes replaced by U+FFFD (0 when clean)


def decode_utf8(raw: bytes, invalid_utf8: str = "repair") -> Normalised:
    """Decode bytes as UTF-8. `invalid_utf8="repair"` replaces bad bytes with U+FFFD and counts
    them; `"reject"` raises `InvalidUTF8` naming the first bad offset."""
    try:
        return Normalised(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        if invalid_utf8 == "reject":
            raise InvalidUTF8(e.start, e.reason) from None
        if invalid_utf8 != "repair":
            raise ValueError(f"invalid_utf8 must be 'repair' or 'reject', got {invalid_utf8!r}") from None
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd") - raw.count("\ufffd".encode())
        return Normalised(text, bad)


def normalise_text(text: str) -> str:
    """NFC, no BOM, LF line endings, no control characters (tab and newline kept), surrogates
    replaced by U+FFFD (they cannot be encoded as UTF-8)."""
    if text.startswith(BOM):
        text = text[1:]
    text = text.replace(BOM, "")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text


def normalise_utf8(text: str) -> tuple[str, bytes]:
    """`normalise_text(text)` and its UTF-8 bytes (what ingest hashes and writes), touching the text
    only if it needs it. An ASCII text (most, in most corpora; `isascii` is O(1), CPython stores the
    flag) is checked on its bytes: every ASCII control and CR mapped to NUL by one C `translate`,
    then one memchr; other texts by a regex scan and the NFC quick check."""
    if text.isascii():
        data = text.encode("ascii")
        if 0 not in data.translate(_ASCII_TO_NUL):
            return text, data
    elif _DIRTY.search(text) is None and unicodedata.is_normalized("NFC", text):
        return text, text.encode("utf-8")
    text = normalise_text(text)
    return text, text.encode("utf-8")


def normalise_texts(texts: list[str]) -> list[str]:
    """`normalise_text` over a list, exactly, touching only the texts that need it."""
    return [normalise_utf8(text)[0] for text in texts]


def hash_hex(*parts: str) -> str:
    """128-bit xxh3 of the parts joined by NUL, as 32 hex characters (stable across runs)."""
    return xxhash.xxh3_128_hexdigest("\x00".join(parts).encode("utf-8", errors="surrogatepass"))


def content_hash(text: str) -> str:
    """Hash of the normalised text: byte-identical documents share it (exact dedup groups by it)."""
    return hash_hex(text)


def document_id(source: str, locator: str, text: str) -> str:
    """Unique per row: a hash of source, locator and text (two identical files get two ids)."""
    return hash_hex(source, locator, text)


def record_text(dataset: str, fields: dict[str, Any]) -> str:
    """The `text` column: what text-level steps read. Corpus: the document; instructions: the
    turns' contents; comparisons: prompt, chosen and rejected — each joined by a blank line."""
    if dataset == "corpus":
        return fields["text"]
    if dataset == "instructions":
        return "\n\n".join(m["content"] for m in fields["messages"])
    return "\n\n".join(fields[k] for k in ("prompt", "chosen", "rejected"))
