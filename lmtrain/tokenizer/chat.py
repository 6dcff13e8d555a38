"""Special tokens and the chat template shared by SFT, reward, PPO, augmentation and serving.

A conversation renders as

    <|endoftext|><|system|>{content}<|end|><|user|>{content}<|end|><|assistant|>{content}<|end|>...

- `<|endoftext|>` (EOT) opens every conversation: pretraining shards put EOT between documents, so
  the model sees the same "a new document starts here" context before a chat as before a document.
- `<|system|>`, `<|user|>`, `<|assistant|>` open a turn; `<|end|>` closes it. Generation stops
  when the model emits `<|end|>` (or EOT).
- Message contents are encoded as ordinary text: a user typing "<|end|>" gets the characters, never
  the special token, so nobody can forge a turn boundary.
- The assistant mask is 1 on exactly the tokens the model must learn to produce: the content of
  each assistant turn and the `<|end|>` that closes it. The `<|assistant|>` marker itself is part
  of the prompt (the template supplies it), so it is 0, like everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

EOT = "<|endoftext|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
ROLE_MARKERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
# Order fixes the ids: specials follow the learned tokens in this order.
DEFAULT_SPECIALS: tuple[str, ...] = (EOT, SYSTEM, USER, ASSISTANT, END_OF_TURN)


class _Tok(Protocol):
    special_tokens: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _special_ids(tok: _Tok) -> dict[str, int]:
    missing = [s for s in DEFAULT_SPECIALS if s not in tok.special_tokens]
    if missing:
        raise ValueError(f"tokenizer lacks the chat special tokens {missing}; train it with DEFAULT_SPECIALS")
    return tok.special_tokens


def render(messages: Sequence[dict], tok: _Tok, add_generation_prompt: bool = False
           ) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its assistant mask (1 = a token the model must learn to emit).

    With `add_generation_prompt`, an `<|assistant|>` marker is appended so a model continues with
    the reply (for sampling); the last message must then not be the assistant's.
    """
    sp = _special_ids(tok)
    ids, mask = [sp[EOT]], [0]
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLE_MARKERS:
            raise ValueError(f"message {i}: role {role!r} is not one of {sorted(ROLE_MARKERS)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        learn = 1 if role == "assistant" else 0
        body = tok.encode(content)
        ids += [sp[ROLE_MARKERS[role]], *body, sp[END_OF_TURN]]
        mask += [0] + [learn] * len(body) + [learn]
    if add_generation_prompt:
        if messages and messages[-1].get("role") == "assistant":
            raise ValueError("add_generation_prompt=True but the last message is already the assistant's")
        ids.append(sp[ASSISTANT])
        mask.append(0)
    return ids, mask


def parse(ids: Sequence[int], tok: _Tok) -> list[dict]:
    """Messages back from rendered ids; an unfinished last turn (no `<|end|>`) comes back as it stands.

    So `parse(render(m)) == m`, and `parse(prompt + generated)` yields the reply as the last message
    (an empty one right after a generation prompt). A leading `<|endoftext|>` is skipped.
    """
    sp = _special_ids(tok)
    role_of = {sp[marker]: role for role, marker in ROLE_MARKERS.items()}
    eot, end = sp[EOT], sp[END_OF_TURN]
    messages: list[dict] = []
    role: str | None = None
    body: list[int] = []
    for pos, t in enumerate(ids):
        if role is None:
            if t == eot and pos == 0:
                continue
            if t not in role_of:
                raise ValueError(f"token {pos} (id {t}): expected a role marker, got {tok.decode([t])!r}")
            role, body = role_of[t], []
        elif t == end:
            messages.append({"role": role, "content": tok.decode(body)})
            role = None
        elif t in role_of or t == eot:
            raise ValueError(f"token {pos} (id {t}): turn of {role!r} not closed by {END_OF_TURN}")
        else:
            body.append(t)
    if role is not None:
        messages.append({"role": role, "content": tok.decode(body)})
    return messages


def prompt_ids(tok, prompt: str | Sequence[dict]) -> list[int]:
    """Rendered ids of a user prompt (or a conversation) followed by the `<|assistant|>` marker."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return render(msgs, tok, add_generation_prompt=True)[0]


def response_ids(tok, response: str, max_tokens: int = 0, close: bool = True) -> list[int]:
    """Tokens of an assistant reply, cut to max_tokens (0 = no cut), closed by `<|end|>` if `close`."""
    ids = tok.encode(response)
    if max_tokens > 0:
        ids = ids[:max_tokens]
    return ids + [tok.special_tokens[END_OF_TURN]] if close else ids


def stop_ids(tok) -> set[int]:
    """Tokens that end a reply: `<|end|>` and `<|endoftext|>`."""
    return {tok.special_tokens[END_OF_TURN], tok.special_tokens[EOT]}
