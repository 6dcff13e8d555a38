"""Preference pairs shared by the reward model and DPO: stable halves, held-out overlap removal,
mirrored pairs, and the rendered ids of a (prompt, response)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lmtrain.tokenizer.chat import prompt_ids, response_ids

SUBSETS = ("all", "half_a", "half_b")


def pair_half(pair_id: str) -> str:
    """'half_a' or 'half_b' by a stable hash of the id, so the two halves never share a pair."""
    return "half_a" if hashlib.sha256(pair_id.encode()).digest()[0] % 2 == 0 else "half_b"


def select_subset(pairs: Sequence[dict], subset: str) -> list[dict]:
    """The pairs of one subset (all | half_a | half_b)."""
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r} is not one of {SUBSETS}")
    return list(pairs) if subset == "all" else [p for p in pairs if pair_half(p["id"]) == subset]


def mirror(pairs: Sequence[dict]) -> list[dict]:
    """For each pair whose rejected text is another pair's chosen text, the swapped pair under that prompt.

    Derived comparisons ("right answer vs another topic's answer") let a reward model rank replies
    while ignoring the prompt; the mirrored pair contradicts any such ranking, so the prompt must be
    read. Human preference data rarely reuses a reply across prompts, and then nothing is added.
    """
    prompt_of = {}
    for p in pairs:
        prompt_of.setdefault(p["chosen"], p["prompt"])
    return [{"id": p["id"] + "/mirror", "prompt": prompt_of[p["rejected"]], "chosen": p["rejected"],
             "rejected": p["chosen"]}
            for p in pairs if p["rejected"] in prompt_of and prompt_of[p["rejected"]] != p["prompt"]]


def training_pairs(train: Sequence[dict], heldout: Sequence[dict], mirror_pairs: bool, drop_unmirrored: bool,
                   replies: set[str] | None = None) -> tuple[list[dict], dict]:
    """The pairs to fit and counts: held-out answers removed from training, then mirrors (see RewardConfig).

    `replies` are the texts that are some pair's *chosen* reply (default: those of `train` and `heldout`;
    pass the whole training set's when `train` is one half). With `drop_unmirrored`, a pair whose rejected
    text is such a reply but has no mirror is dropped (a reply-only score could fit it); a pair whose
    rejected text is nobody's reply (a corrupted text, a human's rejected answer) is kept.
    """
    # a held-out answer must never be a training text (it would be learnt as "bad" when it is rejected)
    answers = {p["chosen"] for p in heldout}
    kept = [p for p in train if p["rejected"] not in answers and p["chosen"] not in answers]
    fit, mirrors = kept, []
    if mirror_pairs:
        mirrors = mirror(kept)
        if drop_unmirrored and mirrors:
            has = {m["id"].removesuffix("/mirror") for m in mirrors}
            pool = replies if replies is not None else {p["chosen"] for p in train} | answers
            fit = [p for p in kept if p["id"] in has or p["rejected"] not in pool]
        fit = fit + mirrors
    return fit, {"given_pairs": len(kept), "mirrored_pairs": len(mirrors),
                 "heldout_overlap_dropped": len(train) - len(kept)}


def encode_pair(tok, prompt: str, response: str, max_response_tokens: int) -> list[int]:
    """Rendered ids of prompt + response, the assistant turn closed by `<|end|>`."""
    return prompt_ids(tok, prompt) + response_ids(tok, response, max_response_tokens)
