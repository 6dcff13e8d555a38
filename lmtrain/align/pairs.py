"""Preference pairs shared by the reward model, the judge and DPO: held-out overlap removal, mirrored
pairs, and the rendered ids of a (prompt, response). Which pairs a model may see (halves, held-out
sides, the disjointness check) is lmtrain.align.splits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lmtrain.align.splits import assert_disjoint, held_out_conversations, on_side, select_half, with_groups
from lmtrain.data.tables import read_comparisons
from lmtrain.tokenizer.chat import prompt_ids, response_ids


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


def preference_data(train_dir: str | Path, eval_dir: str | Path, subset: str, eval_split: str, mirror_pairs: bool,
                    drop_unmirrored: bool, who: str, eval_prompts_dir: str | Path | None = None,
                    not_subset: str | None = None) -> tuple[list[dict], list[dict], dict]:
    """(pairs to fit, held-out pairs on the `eval_split` side, counts), after the disjointness checks.

    The fitted pairs (with mirrors) of `subset` must share no prompt and no (prompt, chosen) pair with the
    held-out comparisons, the evaluation prompts (`eval_prompts_dir`: the held-out instructions) and the
    fitted pairs of `not_subset` (the judge's against the reward model's half); else OverlapError, before
    any model is loaded. `who` names the model in errors ("reward model", "judge", "DPO").
    """
    all_train = with_groups(read_comparisons(train_dir, "train"), train_dir)
    held = with_groups(read_comparisons(eval_dir, "eval"), eval_dir)
    replies = {p["chosen"] for p in all_train + held}
    train = select_half(all_train, subset)
    if not train:
        raise ValueError(f"{train_dir}: no training comparisons in subset {subset!r}")
    fit, info = training_pairs(train, held, mirror_pairs, drop_unmirrored, replies)
    if not fit:
        raise ValueError(f"{train_dir}: no training comparisons left in subset {subset!r} after dropping "
                         f"{info['heldout_overlap_dropped']} that share a text with held-out answers")
    name = f"{who} training pairs ({subset})"
    assert_disjoint(fit, held, (name, f"held-out comparisons ({eval_dir})"))
    info["held_out_pairs_checked"] = len(held)
    if eval_prompts_dir is not None:
        prompts = [row for row, _ in held_out_conversations(eval_prompts_dir)]
        assert_disjoint(fit, prompts, (name, f"evaluation prompts ({eval_prompts_dir})"))
        info["eval_prompts_checked"] = len(prompts)
    if not_subset is not None:
        other, _ = training_pairs(select_half(all_train, not_subset), held, mirror_pairs, drop_unmirrored, replies)
        assert_disjoint(fit, other, (name, f"the {not_subset} training pairs"))
        info["other_half_pairs_checked"] = len(other)
    side = on_side(held, eval_split)
    return fit, side, {**info, "eval_split": eval_split, "held_out_pairs": len(held)}
