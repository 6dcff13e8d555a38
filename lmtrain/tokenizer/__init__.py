"""Tokenizers built here: byte-level BPE (served by tiktoken), character-level and the chat template.
See bpe.py, core.py, char.py, chat.py; token shards are lmtrain.data.shards."""

from collections.abc import Iterable, Sequence

from lmtrain.tokenizer.bpe import DEFAULT_VOCAB_SIZE, GPT2_VOCAB_SIZE, count_chunks, learn_merges, train_bpe
from lmtrain.tokenizer.char import CharTokenizer, train_char
from lmtrain.tokenizer.chat import DEFAULT_SPECIALS, EOT, parse, render
from lmtrain.tokenizer.core import DEFAULT_PATTERN, Tokenizer


def load_tokenizer(folder) -> Tokenizer | CharTokenizer:
    """Load a tokenizer saved by either kind's `save` (same as `Tokenizer.load`)."""
    return Tokenizer.load(folder)


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = DEFAULT_VOCAB_SIZE,
                    pattern: str = DEFAULT_PATTERN, special_tokens: Sequence[str] = DEFAULT_SPECIALS
                    ) -> Tokenizer | CharTokenizer:
    """`train_bpe` for kind "bpe", `train_char` for kind "char" (which ignores vocab_size and pattern)."""
    if kind == "bpe":
        return train_bpe(texts, vocab_size, pattern, special_tokens)
    if kind == "char":
        return train_char(texts, special_tokens)
    raise ValueError(f"tokenizer kind {kind!r} is not 'bpe' or 'char'")


__all__ = [
    "DEFAULT_PATTERN", "DEFAULT_SPECIALS", "DEFAULT_VOCAB_SIZE", "EOT", "GPT2_VOCAB_SIZE", "CharTokenizer",
    "Tokenizer", "count_chunks", "learn_merges", "load_tokenizer", "parse", "render",
    "train_bpe", "train_char", "train_tokenizer",
]
