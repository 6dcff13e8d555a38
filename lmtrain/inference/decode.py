"""The one incremental decoder: token ids in, text pieces out.

A token may end in the middle of a multi-byte UTF-8 character; its bytes are held back until the
character is complete. Stop strings are cut (not returned), and a tail that could still become a
stop string is held back. Streaming samples, chat and the server's engine all decode through it.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def _bytes_of(tokenizer):
    """A token -> bytes function: `token_bytes` (ours), `decode_bytes` (lmtrain.models.hf), else None."""
    if hasattr(tokenizer, "token_bytes"):
        return tokenizer.token_bytes
    if hasattr(tokenizer, "decode_bytes"):
        return lambda t: tokenizer.decode_bytes([t])
    return None


class TextStream:
    """Incremental UTF-8 decoding, then stop-string hold-back.

    A tokenizer that only decodes whole id lists gets its pending tokens held while their text ends
    in U+FFFD (an unfinished character), for at most 8 tokens."""

    def __init__(self, tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = [s for s in stop if s]
        self.held = ""  # text that could be the start of a stop string
        self.bytes_of = _bytes_of(tokenizer)
        self.pending: list[int] = []  # tokens not yet decoded (tokenizers without token bytes)

    def _piece(self, token: int) -> str:
        if self.bytes_of is not None:
            return self.decoder.decode(self.bytes_of(token))
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:  # probably an unfinished character
            return ""
        self.pending.clear()
        return text

    def push(self, token: int) -> tuple[str, bool]:
        """(text now safe to send, whether a stop string was hit)."""
        self.held += self._piece(token)
        hits = [i for i in (self.held.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.held = self.held[:min(hits)], ""
            return out, True
        # keep back the longest tail that is a prefix of some stop string
        keep = max((k for s in self.stop for k in range(min(len(s) - 1, len(self.held)), 0, -1)
                    if self.held.endswith(s[:k])), default=0)
        cut = len(self.held) - keep
        out, self.held = self.held[:cut], self.held[cut:]
        return out, False

    def flush(self) -> str:
        """Whatever is held back, at the end of a request that did not stop on a stop string."""
        tail = self.tokenizer.decode(self.pending) if self.pending else self.decoder.decode(b"", final=True)
        out, self.held, self.pending = self.held + tail, "", []
        return out
