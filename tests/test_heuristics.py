"""Each heuristic rule fires on a crafted document and not on a clean one."""

from __future__ import annotations

import polars as pl
import pytest

from lmdata.filters.heuristics import (
    HeuristicsConfig,
    check_text,
    heuristic_filter,
    record_filter,
    rule_names,
)

# Plain prose: ~120 words, varied, full sentences ending in terminal punctuation.
CLEAN = "\n".join([
    "The river ran quietly past the old mill, and the miller watched it with a patient eye.",
    "He had lived beside the water for forty years and knew every season of its moods.",
    "In spring the current rose with melted snow, and the wheel turned faster than before.",
    "By summer the stream grew lazy, so children waded across to gather smooth stones.",
    "Autumn brought heavy rain that darkened the banks and carried leaves toward the sea.",
    "Winter froze the edges first, then the middle, until the wheel stood silent with frost.",
    "Travellers often stopped to ask the way, and he told them stories of floods long past.",
    "They listened politely, thanked him for his kindness, and walked on toward the town.",
    "Each evening he wrote a few lines in a journal that his daughter would keep.",
])

CFG = HeuristicsConfig(disabled_rules=[])  # every rule on, published thresholds
CFG_RULES = rule_names(CFG)


def words(n: int) -> str:
    pool = ("apple river stone cloud garden window silver morning quiet letter candle harbor "
            "meadow pencil thunder violet basket mirror lantern orchard").split()
    return " ".join(pool[(i * 7) % len(pool)] + str(i) for i in range(n))


def test_clean_document_passes_every_rule():
    assert check_text(CLEAN, CFG)[:2] == (None, None)


CRAFTED = {
    "empty": "   \n  ",
    "gopher_word_count": "The cat and the dog sat.",
    "gopher_mean_word_length": " ".join(["a to of is it by we be"] * 12) + " the and.",
    "gopher_symbol_ratio": CLEAN + "\n" + "#" * 40,
    "gopher_bullet_lines": "\n".join(f"- item {s}" for s in CLEAN.split("\n")),
    "gopher_ellipsis_lines": "\n".join(s[:-1] + "..." if i % 2 else s for i, s in enumerate(CLEAN.split("\n"))),
    "gopher_alpha_words": CLEAN + "\n" + " ".join(["1234 5678 99 00"] * 60),
    "gopher_stop_words": CLEAN.replace(" the ", " a ").replace(" and ", " but ").replace(" to ", " at ")
    .replace(" of ", " in ").replace(" with ", " by ").replace("The ", "A ").replace("that", "which"),
    "gopher_dup_para_frac": "\n\n".join([CLEAN] + ["A short repeated paragraph here."] * 3),
    "gopher_dup_line_frac": CLEAN + "\n" + "\n".join(["Enter the king."] * 8),
    "gopher_top_2gram": CLEAN + " " + " ".join(["quiet mill"] * 90),
    "gopher_dup_5gram": CLEAN + "\n" + CLEAN.replace("\n", " "),
    "c4_lorem_ipsum": CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing.",
    "c4_curly_bracket": CLEAN + "\nThe function returns {key: value} for each entry.",
    "c4_min_sentences": "\n".join(CLEAN.split("\n")[:4]),
}


@pytest.mark.parametrize("rule", sorted(CRAFTED))
def test_rule_fires_on_crafted_document(rule):
    reason, value, _ = check_text(CRAFTED[rule], CFG)
    assert reason == rule
    assert value is not None


def test_dup_line_char_fraction_fires_when_line_count_rule_is_off():
    cfg = HeuristicsConfig(disabled_rules=["gopher_dup_line_frac", "gopher_dup_para_frac"])
    text = CLEAN + "\n" + "\n".join([CLEAN.split("\n")[0]] * 3)
    assert check_text(text, cfg)[0] == "gopher_dup_line_char_frac"


def test_c4_line_rules_in_filter_mode():
    cfg = HeuristicsConfig(disabled_rules=[], c4_mode="filter", c4_max_bad_line_frac=0.5)
    verse = "\n".join(s.rstrip(".") for s in CLEAN.split("\n"))  # no terminal punctuation
    assert check_text(verse, cfg)[:2] == ("c4_terminal_punct", 1.0)
    short = CLEAN + "\n" + "\n".join(["Ham.", "Ay, lord."] * 8)
    reason, value, _ = check_text(short, HeuristicsConfig(disabled_rules=["c4_terminal_punct",
                                                                           "gopher_dup_line_frac"]))
    assert reason == "c4_min_words_per_line" and value > 0.5
    js = CLEAN + "\nPlease enable JavaScript to continue.\nOur javascript menu is broken today."
    assert check_text(js, HeuristicsConfig(c4_max_bad_line_frac=0.1))[:2] == ("c4_javascript", 2 / 11)


def test_c4_modifier_rewrites_text_and_rejects_emptied_document():
    cfg = HeuristicsConfig(disabled_rules=[], c4_mode="modify", c4_min_sentences=1)
    text = CLEAN + "\nClick here\nPlease enable javascript in your browser today."
    reason, _, new = check_text(text, cfg)
    assert reason is None and new == CLEAN
    verse = "\n".join(s.rstrip(".") for s in CLEAN.split("\n"))
    assert check_text(verse, cfg)[0] == "c4_min_sentences"
    assert check_text(verse, HeuristicsConfig(disabled_rules=["c4_min_sentences"], c4_mode="modify"))[0] \
        == "c4_empty"


def test_default_config_keeps_verse_without_terminal_punctuation():
    verse = "\n".join(s.rstrip(".") + ("," if i % 2 else "") for i, s in enumerate(CLEAN.split("\n")))
    assert check_text(verse + "\nThus ends the tale.", HeuristicsConfig())[0] is None


def test_step_conserves_rows_and_reports_first_failure():
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [CLEAN, "too short", CRAFTED["c4_lorem_ipsum"]],
                       "n_bytes": [1, 1, 1]})
    res = heuristic_filter(df, CFG)
    assert res.kept["id"].to_list() == ["a"]
    assert res.rejected["reason"].to_list() == ["gopher_word_count", "c4_lorem_ipsum"]
    assert res.rejected["reason_value"][0] == 2.0
    assert res.kept["n_bytes"][0] == len(CLEAN.encode())
    assert res.kept.height + res.rejected.height == df.height


@pytest.mark.parametrize("bad, match", [
    ({"disabled_rules": ["gopher_nonsense"]}, "unknown rule"),
    ({"min_doc_words": "50"}, "min_doc_words"),
    ({"max_top_ngram_char_frac": {2: "x"}}, "max_top_ngram_char_frac"),
    ({"min_stop_words": 2.5}, "min_stop_words"),
    ({"min_words": 3}, "unknown setting"),
    ({"c4_mode": "rewrite"}, "c4_mode"),
])
def test_bad_config_fails_before_work(bad, match):
    with pytest.raises(ValueError, match=match):
        HeuristicsConfig.from_dict(bad)


def test_record_rules_for_instructions_and_comparisons():
    ins = pl.DataFrame({"id": ["1", "2"], "prompt": ["Explain x", "Explain y"], "response": ["An answer.", "  "]})
    res = record_filter(ins, "instructions")
    assert res.rejected["reason"].to_list() == ["empty_response"]
    cmp_ = pl.DataFrame({"id": ["1", "2"], "prompt": ["p", "p"], "chosen": ["a", "same"],
                         "rejected": ["b", "same "]})
    assert record_filter(cmp_, "comparisons").rejected["reason"].to_list() == ["chosen_equals_rejected"]


ALONE = {  # documents for rules that other rules would catch first: each checked with only its rule on
    "gopher_dup_para_char_frac": "\n\n".join([CLEAN, CLEAN.split("\n")[0], "Short note.", CLEAN]),
    "gopher_top_3gram": CLEAN + " " + " ".join(["quiet old mill"] * 40),
    "gopher_top_4gram": CLEAN + " " + " ".join(["the quiet old mill"] * 30),
    **{f"gopher_dup_{n}gram": CLEAN + "\n" + CLEAN.replace("\n", " ") for n in range(6, 11)},
    "c4_long_word": CLEAN + "\n" + "\n".join(f"Line {i} holds {'x' * 1001} as one word." for i in range(12)),
}


@pytest.mark.parametrize("rule", sorted(ALONE))
def test_rule_fires_alone_and_can_be_switched_off(rule):
    others = [r for r in CFG_RULES if r not in (rule, "empty")]
    only = HeuristicsConfig(disabled_rules=others)
    assert check_text(CLEAN, only)[:2] == (None, None)
    reason, value, _ = check_text(ALONE[rule], only)
    assert reason == rule and value is not None
    assert check_text(ALONE[rule], HeuristicsConfig(disabled_rules=[*others, rule]))[0] is None


# One-line quotes, a chat turn and titles: what a short-text corpus holds.
SHORT_TEXTS = [
    "Brevity is the soul of wit.",
    "All that glitters is not gold.",
    "The better part of valour is discretion.",
    "We know what we are, but know not what we may be.",
    "To be, or not to be, that is the question.",
    "Sure, I can help with that: which file do you want to open?",
    "A Midsummer Night's Dream",
    "Notes on the history of the printing press",
]


def short_text_config() -> HeuristicsConfig:
    """params.yaml's filter.heuristics with profiles/short_text.yaml on top (as `lmforge run --profile`)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    base = yaml.safe_load((root / "params.yaml").read_text())["filter"]["heuristics"]
    preset = yaml.safe_load((root / "profiles" / "short_text.yaml").read_text())["filter"]["heuristics"]
    return HeuristicsConfig.from_dict({**base, **preset})


def test_default_rules_drop_every_short_text():
    cfg = HeuristicsConfig()
    assert {check_text(t, cfg)[0] for t in SHORT_TEXTS} <= {"gopher_word_count"}
    assert all(check_text(t, cfg)[0] for t in SHORT_TEXTS)


def test_short_text_preset_keeps_one_line_quotes_and_still_rejects_junk():
    cfg = short_text_config()
    res = heuristic_filter(pl.DataFrame({"id": [str(i) for i in range(len(SHORT_TEXTS))], "text": SHORT_TEXTS}), cfg)
    assert res.kept["text"].to_list() == SHORT_TEXTS, res.rejected.select("text", "reason")
    assert check_text("", cfg)[0] == "empty"
    assert check_text("{{Infobox | name = x}}", cfg)[0] is not None  # markup still fails (alpha words)
    assert check_text("# # # # # # buy now # # #", cfg)[0] == "gopher_symbol_ratio"
    assert check_text("\n".join(["spam spam spam spam"] * 6), cfg)[0] is not None  # repetition, from 20 words
    assert check_text("We know what we are, but know not what we may be.", HeuristicsConfig(
        min_doc_words=1, min_stop_words=0, c4_min_sentences=1))[0] == "gopher_top_2gram"  # "what we" x2: 28%
