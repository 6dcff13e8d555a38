"""Augmentation: off by default, deterministic, labels kept correct."""

from __future__ import annotations

import json

import polars as pl
import pytest

from lmdata.augment import PROMPT_TEMPLATES, AugmentConfig, prompt_variants, shuffle_pairs, upsample_source

ON = AugmentConfig(enabled=True, upsample_source="hq", upsample_factor=3, prompt_variants=2)


def instructions() -> pl.DataFrame:
    rows = []
    for i in range(6):
        p, r = f"Explain topic {i}.", f"Topic {i} is about thing {i}."
        rows.append({"id": f"i{i}", "source": "pydoc", "split": "eval" if i == 0 else "train",
                     "prompt": p, "response": r, "text": f"{p}\n\n{r}",
                     "messages": json.dumps([{"role": "user", "content": p}, {"role": "assistant", "content": r}])})
    return pl.DataFrame(rows)


def comparisons() -> pl.DataFrame:
    rows = [{"id": f"c{i}", "source": "pydoc", "split": "eval" if i == 0 else "train", "prompt": f"Q{i}?",
             "chosen": f"right {i}", "rejected": f"wrong {i}", "text": f"Q{i}?\n\nright {i}\n\nwrong {i}"}
            for i in range(40)]
    return pl.DataFrame(rows)


def test_off_by_default_changes_nothing():
    cfg = AugmentConfig()
    ins = instructions()
    assert prompt_variants(ins, cfg).drop("augmented", "augmented_from").equals(ins)
    out = shuffle_pairs(comparisons(), cfg)
    assert out["label"].unique().to_list() == [0] and out["text"].equals(comparisons()["text"])
    df = pl.DataFrame({"id": ["a"], "source": ["hq"], "split": ["train"], "repeats": [2]})
    assert upsample_source(df, cfg)["repeats"].to_list() == [2]


def test_upsampling_multiplies_repeats_of_train_rows_of_the_source():
    df = pl.DataFrame({"id": ["a", "b", "c"], "source": ["hq", "hq", "web"], "split": ["train", "eval", "train"],
                       "repeats": [2, 1, 1]})
    assert upsample_source(df, ON)["repeats"].to_list() == [6, 1, 1]
    with pytest.raises(ValueError, match="not a source"):
        upsample_source(df, AugmentConfig(enabled=True, upsample_source="wiki"))


def test_prompt_variants_are_deterministic_and_keep_responses():
    ins = instructions()
    out = prompt_variants(ins, ON)
    assert out.height == ins.height + 2 * 5  # two variants per train row, none for eval
    assert out.equals(prompt_variants(ins, ON))
    new = out.filter(pl.col("augmented") > 0)
    assert new["id"].n_unique() == new.height and not set(new["id"]) & set(ins["id"])
    assert set(new["split"]) == {"train"}
    for row in new.iter_rows(named=True):
        original = ins.filter(pl.col("id") == row["augmented_from"])
        assert row["prompt"] == PROMPT_TEMPLATES[row["augmented"]].format(prompt=original["prompt"][0])
        assert row["response"] == original["response"][0]
        assert json.loads(row["messages"])[0]["content"] == row["prompt"]
        assert row["text"].startswith(row["prompt"]) and row["text"].endswith(row["response"])


def test_pair_shuffling_keeps_the_label_correct():
    df = comparisons()
    out = shuffle_pairs(df, ON)
    chosen_is_a = out["response_a"] == out["chosen"]
    assert ((out["label"] == 0) == chosen_is_a).all()
    assert (out["chosen"] == df["chosen"]).all() and (out["rejected"] == df["rejected"]).all()
    train = out.filter(pl.col("split") == "train")
    assert 0.25 < train["label"].mean() < 0.75  # roughly half swapped
    assert out.filter(pl.col("split") == "eval")["label"].to_list() == [0]
    swapped = train.filter(pl.col("label") == 1).row(0, named=True)
    assert swapped["text"] == f"{swapped['prompt']}\n\n{swapped['rejected']}\n\n{swapped['chosen']}"
    assert out.equals(shuffle_pairs(df, ON))


def test_bad_config():
    with pytest.raises(ValueError, match="prompt_variants"):
        AugmentConfig.from_dict({"prompt_variants": 99})
    with pytest.raises(ValueError, match="enabled"):
        AugmentConfig.from_dict({"enabled": "yes"})
