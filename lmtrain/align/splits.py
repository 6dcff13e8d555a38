"""Who may see which alignment data, decided by split group (a play, a pydoc topic), never by row.

- The held-out prompts (ingest's `eval` split) are cut into a *dev* side, for tuning defaults and the
  over-optimisation curve, and a *test* side, reported only when asked for (`eval_prompts`).
- The training comparisons are cut into two halves by the prompt's group (`comparison_half`): the reward
  model (and DPO, so PPO and DPO learn the same preferences) take one, the judge the other.
- `assert_disjoint` is the check every training stage runs before any work: no prompt (normalised
  text) and no (prompt, chosen) pair of its training rows may be in a held-out set.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmtrain.config import ConfigError
from lmtrain.data.tables import read_conversations, read_table

EVAL_SPLITS = ("dev", "test", "all")
DEV_FRACTION = 0.5  # share of held-out groups on the dev side (by hash: a share of groups, not of rows)
DEV_SALT = "lmforge-devtest-v1"  # on the default sample: Two Gentlemen of Verona is dev, All's Well test
HALVES = ("all", "half_a", "half_b")
HALF_SALT = "lmforge-halves-v1"


class OverlapError(ConfigError):
    """Two sets that must be disjoint share a prompt or a (prompt, chosen) pair."""


def unit_hash(key: str, salt: str) -> float:
    """A stable number in [0, 1) for `key` (sha256 of salt and key; no Python hash randomisation)."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x00{key}".encode()).digest()[:8], "big") / 2.0**64


def eval_side(group: str, dev_fraction: float = DEV_FRACTION, salt: str = DEV_SALT) -> str:
    """'dev' or 'test' for a held-out row of split group `group` (all rows of a group on one side)."""
    return "dev" if unit_hash(group, salt) < dev_fraction else "test"


def comparison_half(group: str, prompt: str, salt: str = HALF_SALT) -> str:
    """'half_a' or 'half_b' by a hash of the pair's group (of its normalised prompt where it has no group),
    so every pair of one prompt, and of one play, lands in the same half."""
    key = group or normalise_prompt(prompt)
    return "half_a" if unit_hash(key, salt) < 0.5 else "half_b"


def select_half(pairs: Sequence[dict], subset: str) -> list[dict]:
    """The pairs of one subset (all | half_a | half_b); pairs carry `group` (see `with_groups`)."""
    if subset not in HALVES:
        raise ConfigError(f"subset {subset!r} is not one of {HALVES}")
    if subset == "all":
        return list(pairs)
    return [p for p in pairs if comparison_half(p.get("group") or "", p["prompt"]) == subset]


def with_groups(rows: Sequence[dict], folder: str | Path) -> list[dict]:
    """`rows` (read from `folder`, each with an `id`) with their split `group` ("" where the shards have none)."""
    group = {r["id"]: r.get("group") or "" for r in read_table(folder, ["id"], optional=["group"])}
    return [{**r, "group": group.get(r["id"], "")} for r in rows]


def held_out_side(row: dict, dev_fraction: float = DEV_FRACTION, salt: str = DEV_SALT) -> str:
    """'dev' or 'test' for a held-out row with `group` and `prompt` (its normalised prompt where it has no
    group): the instruction and the comparisons of one prompt always land on the same side."""
    return eval_side(row.get("group") or normalise_prompt(row["prompt"]), dev_fraction, salt)


def on_side(rows: Sequence[dict], split: str) -> list[dict]:
    """The held-out rows (with `group`, `prompt`) on one side: dev | test | all."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"evaluation split {split!r} is not one of {EVAL_SPLITS}")
    return list(rows) if split == "all" else [r for r in rows if held_out_side(r) == split]


def held_out_conversations(eval_dir: str | Path) -> list[tuple[dict, list[dict]]]:
    """(row {"id", "prompt", "reference", "source", "group", "split"}, conversation) of every held-out
    instruction, sorted by id; `split` is the row's side, dev or test."""
    meta = [r for r in read_table(eval_dir, ["id", "split"], optional=["source", "group"]) if r["split"] == "eval"]
    convs = read_conversations(eval_dir, "eval")  # the same rows in the same order (both sorted by id)
    out = []
    for r, conv in zip(meta, convs, strict=True):
        user = next((m["content"] for m in conv if m["role"] == "user"), None)
        if user is None:
            raise ValueError(f"{r['_file']} (id {r['id']}): field 'messages' has no user turn")
        row = {"id": r["id"], "prompt": user, "reference": next(m["content"] for m in conv if m["role"] == "assistant"),
               "source": r.get("source") or "", "group": r.get("group") or ""}
        out.append(({**row, "split": held_out_side(row)}, conv))
    return out


def eval_prompts(eval_dir: str | Path, split: str, max_prompts: int = 0) -> list[dict]:
    """The evaluation prompts of one side of the held-out instructions (`data/evalset/instructions`).

    `split`: "dev" (tuning, curves), "test" (the reported figures) or "all". Returns rows sorted by id:
    {"id", "prompt" (the first user turn), "reference" (the first assistant reply: the true continuation
    for Shakespeare, the pydoc text), "source", "group", "split" ("dev" | "test")}. `max_prompts` > 0 keeps
    that many, evenly spaced over the sorted rows (deterministic). Raises ConfigError on an unknown or
    empty side.
    """
    rows = [r for r, _ in held_out_conversations(eval_dir)]
    out = on_side(rows, split)
    if not out:
        raise ConfigError(f"{eval_dir}: no held-out prompts on the {split!r} side ({len(rows)} held-out rows, "
                          f"dev_fraction {DEV_FRACTION}, salt {DEV_SALT!r})")
    if 0 < max_prompts < len(out):
        out = [out[i * len(out) // max_prompts] for i in range(max_prompts)]
    return out


def conversation_rows(convs: Iterable[Sequence[dict]]) -> list[dict]:
    """{"prompt", "chosen"} of conversations: the first user turn and the first assistant reply."""
    out = []
    for conv in convs:
        user = next((m["content"] for m in conv if m["role"] == "user"), "")
        reply = next((m["content"] for m in conv if m["role"] == "assistant"), None)
        out.append({"prompt": user, "chosen": reply})
    return out


def normalise_prompt(text: str) -> str:
    """NFKC, case-folded, white space collapsed: the form two prompts are compared in."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _reply(row: dict) -> str | None:
    return next((row[k] for k in ("chosen", "reference", "response") if row.get(k) is not None), None)


def _pair_hash(prompt: str, reply: str) -> str:
    return hashlib.sha256(f"{normalise_prompt(prompt)}\x00{reply}".encode()).hexdigest()


def assert_disjoint(a: Iterable[dict | str], b: Iterable[dict | str], what: tuple[str, str]) -> dict:
    """Fail (OverlapError, one line naming both sets, the count and an example) if `a` and `b` share a
    (prompt, chosen) pair or a prompt; return the counts checked.

    Rows are prompt strings or dicts with "prompt" and, optionally, the reply as "chosen", "reference" or
    "response". Prompts compare after `normalise_prompt`; pairs by a hash of (normalised prompt, reply).
    """
    rows_a = [{"prompt": r} if isinstance(r, str) else r for r in a]
    rows_b = [{"prompt": r} if isinstance(r, str) else r for r in b]
    pairs_b = {_pair_hash(r["prompt"], rep) for r in rows_b if (rep := _reply(r)) is not None}
    shared_pairs = [r for r in rows_a if (rep := _reply(r)) is not None and _pair_hash(r["prompt"], rep) in pairs_b]
    if shared_pairs:
        raise OverlapError(f"{what[0]} and {what[1]} share {len(shared_pairs)} (prompt, chosen) pair(s), "
                           f"e.g. prompt {shared_pairs[0]['prompt'][:80]!r}")
    prompts_b = {normalise_prompt(r["prompt"]) for r in rows_b}
    shared = sorted({p for r in rows_a if (p := normalise_prompt(r["prompt"])) in prompts_b})
    if shared:
        raise OverlapError(f"{what[0]} and {what[1]} share {len(shared)} prompt(s) (normalised text), "
                           f"e.g. {shared[0][:80]!r}")
    return {"rows": len(rows_a), "held_out_rows": len(rows_b), "prompt_overlap": 0, "pair_overlap": 0}
