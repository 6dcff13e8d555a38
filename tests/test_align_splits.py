"""Who sees which alignment data: dev/test by group, comparison halves by prompt group, the overlap check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmdata.ingest import is_eval
from lmdata.samples import (
    pydoc_comparison_records,
    pydoc_instruction_records,
    shakespeare_comparison_records,
    shakespeare_continuations,
    shakespeare_instruction_records,
)
from lmtrain.align.splits import (
    OverlapError,
    assert_disjoint,
    comparison_half,
    eval_prompts,
    eval_side,
    held_out_side,
    select_half,
)

ROOT = Path(__file__).resolve().parent.parent


def _write_instructions(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """JSONL instruction shards: (id, group, prompt, reply), all held out."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": i, "split": "eval", "group": g, "source": g.split(":")[0], "prompt": None,
                         "response": None, "messages": json.dumps([{"role": "user", "content": p},
                                                                   {"role": "assistant", "content": r}])})
             for i, g, p, r in rows]
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_eval_prompts_cut_held_out_rows_by_group_into_dev_and_test(tmp_path):
    groups = [f"play:{k}" for k in range(12)]
    rows = [(f"{g}/{j}", g, f"prompt {g} {j}", f"reply {j}") for g in groups for j in range(3)]
    folder = _write_instructions(tmp_path / "eval", rows)
    dev, test, every = (eval_prompts(folder, s) for s in ("dev", "test", "all"))
    assert len(dev) + len(test) == len(every) == 36 and dev and test
    assert {r["group"] for r in dev}.isdisjoint({r["group"] for r in test})  # a group never straddles
    assert all(r["split"] == eval_side(r["group"]) == held_out_side(r) for r in every)
    assert every[0]["reference"] == "reply 0" and every[0]["prompt"].startswith("prompt ")
    few = eval_prompts(folder, "test", max_prompts=4)  # evenly spaced, the first kept
    assert len(few) == 4 and few[0] == test[0] and all(r in test for r in few)
    with pytest.raises(ValueError, match="not one of"):
        eval_prompts(folder, "train")
    one = _write_instructions(tmp_path / "one", [("x", "play:1", "p", "r")])
    with pytest.raises(ValueError, match="no held-out prompts on the '(dev|test)' side"):
        eval_prompts(one, "test" if eval_side("play:1") == "dev" else "dev")


def test_a_prompt_without_group_lands_on_one_side_in_both_datasets():
    instruction = {"prompt": "Explain  loops", "reference": "A for loop", "group": ""}
    comparison = {"prompt": "explain loops", "chosen": "A for loop", "rejected": "x", "group": None}
    assert held_out_side(instruction) == held_out_side(comparison)


def test_assert_disjoint_fires_on_a_shared_prompt_after_normalising():
    train = [{"prompt": "Continue this  passage:\nTo be", "chosen": "or not"}, "Explain loops"]
    held = [{"prompt": "continue this passage: to BE", "reference": "that is the question"}]
    with pytest.raises(OverlapError, match=r"^SFT training and held-out prompts share 1 prompt\(s\).*continue this"):
        assert_disjoint(train, held, ("SFT training", "held-out prompts"))


def test_assert_disjoint_fires_on_a_shared_prompt_chosen_pair():
    a = [{"prompt": "P", "chosen": "yes", "rejected": "no"}, {"prompt": "Q", "chosen": "x"}]
    b = [{"prompt": "p", "chosen": "yes", "rejected": "maybe"}]
    with pytest.raises(OverlapError, match=r"reward pairs and judge pairs share 1 \(prompt, chosen\) pair"):
        assert_disjoint(a, b, ("reward pairs", "judge pairs"))


def test_assert_disjoint_passes_and_counts_disjoint_sets():
    a = [{"prompt": "P", "chosen": "yes"}]
    assert assert_disjoint(a, ["Q", {"prompt": "R", "chosen": "yes"}], ("a", "b")) == {
        "rows": 1, "held_out_rows": 2, "prompt_overlap": 0, "pair_overlap": 0}


def test_comparison_halves_keep_every_pair_of_a_group_together():
    pairs = [{"id": f"{g}{k}", "group": f"shakespeare:{g}", "prompt": f"{g} place {k}", "chosen": "c",
              "rejected": "r"} for g in "abcdefghij" for k in range(4)]
    a, b = select_half(pairs, "half_a"), select_half(pairs, "half_b")
    assert len(a) + len(b) == len(pairs) and a and b
    assert {p["group"] for p in a}.isdisjoint({p["group"] for p in b})
    assert comparison_half("", "Same  prompt") == comparison_half("", "same prompt")  # no group: the prompt's
    with pytest.raises(ValueError, match="not one of"):
        select_half(pairs, "half_c")


def _default_split_of():
    ingest = yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]
    return lambda g: "eval" if is_eval(g, ingest["eval_fraction"], ingest["eval_salt"]) else "train"


def test_held_out_plays_get_more_places_and_no_place_overlaps_another(raw_sample):
    split_of, root = _default_split_of(), raw_sample / "shakespeare"
    base = list(shakespeare_continuations(root, 6))
    more = list(shakespeare_continuations(root, 6, eval_per_work=60, split_of=split_of))
    held = [r for r in more if split_of(f"shakespeare:{r[0]}") == "eval"]
    assert [r for r in more if split_of(f"shakespeare:{r[0]}") == "train"] == \
        [r for r in base if split_of(f"shakespeare:{r[0]}") == "train"]  # the training side is unchanged
    assert len(held) >= 100
    contexts = "\n".join(r[2] for r in held)
    assert not any(r[3] in contexts for r in held)  # no prompt holds another place's reference reply


def test_default_derived_data_passes_every_disjointness_check(raw_sample):
    """The default sample's held-out rows share nothing with training; the two halves share nothing."""
    split_of = _default_split_of()
    root, topics = raw_sample / "shakespeare", raw_sample / "pydoc_topics.jsonl"
    inst = [*shakespeare_instruction_records(root, 24, 220, split_of), *pydoc_instruction_records(topics)]
    comp = [*shakespeare_comparison_records(root, 24, "both", 220, split_of),
            *pydoc_comparison_records(topics, split_of=split_of)]
    rows = lambda recs, side: [{"prompt": f.get("prompt") or f["messages"][0]["content"],  # noqa: E731
                                "chosen": f.get("chosen") or f["messages"][1]["content"], "group": g}
                               for _, _, f, g, _ in recs if split_of(g) == side]
    held = rows(inst, "eval") + rows(comp, "eval")
    sides = {eval_side(r["group"]) for r in held}
    assert sides == {"dev", "test"} and sum(eval_side(r["group"]) == "test" for r in rows(inst, "eval")) >= 200
    for name, train in (("instructions", rows(inst, "train")), ("comparisons", rows(comp, "train"))):
        assert assert_disjoint(train, held, (name, "held-out"))["prompt_overlap"] == 0
    assert_disjoint(select_half(rows(comp, "train"), "half_a"), select_half(rows(comp, "train"), "half_b"),
                    ("reward half", "judge half"))


def _write_jsonl(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_every_training_stage_fails_on_an_overlap_before_loading_a_model(tmp_path):
    """No model exists at `missing`: a stage that reached any work would fail with FileNotFoundError."""
    from lmtrain.align.dpo import DPOConfig, train_dpo
    from lmtrain.align.reward import JudgeConfig, RewardConfig, train_judge, train_reward
    from lmtrain.align.sft import SFTConfig, train_sft

    missing = tmp_path / "no-model"
    pair = lambda i, split, prompt: {"id": f"c{i}", "split": split, "group": f"g:{i}", "source": "s",  # noqa: E731
                                     "prompt": prompt, "chosen": f"right {i}", "rejected": f"wrong {i}"}
    leaky = _write_jsonl(tmp_path / "leaky", [pair(0, "train", "Explain A"), pair(1, "train", "Explain B"),
                                              pair(2, "eval", "explain  b")])
    with pytest.raises(OverlapError, match=r"reward model training pairs \(all\) and held-out comparisons .* share 1 "):
        train_reward(RewardConfig(subset="all"), missing, leaky, leaky, tmp_path / "rm")
    with pytest.raises(OverlapError, match=r"DPO training pairs \(all\) and held-out comparisons"):
        train_dpo(DPOConfig(), missing, leaky, leaky, tmp_path / "dpo", subset="all")
    clean = _write_jsonl(tmp_path / "clean", [pair(0, "train", "Explain A"), pair(2, "eval", "Explain C")])
    with pytest.raises(OverlapError, match=r"judge training pairs \(all\) and the all training pairs share 1 \(prompt, "):
        train_judge(JudgeConfig(subset="all"), missing, clean, clean, tmp_path / "judge", reward_subset="all")
    conv = lambda i, split, prompt: {"id": f"i{i}", "split": split, "group": f"g:{i}", "prompt": None,  # noqa: E731
                                     "response": None, "messages": json.dumps([
                                         {"role": "user", "content": prompt}, {"role": "assistant", "content": "r"}])}
    ins = _write_jsonl(tmp_path / "ins", [conv(0, "train", "Explain C"), conv(1, "eval", "Explain D")])
    with pytest.raises(OverlapError, match=r"evaluation prompts .* share 1 prompt"):
        train_reward(RewardConfig(subset="all"), missing, clean, clean, tmp_path / "rm2", eval_prompts_dir=
                     _write_jsonl(tmp_path / "eval_ins", [conv(1, "eval", "explain A")]))
    with pytest.raises(OverlapError, match=r"SFT training conversations .* and held-out prompts .* share 1 \(prompt"):
        train_sft(SFTConfig(), missing, ins, _write_jsonl(tmp_path / "ins_eval", [conv(0, "eval", "Explain C")]),
                  tmp_path / "sft")
