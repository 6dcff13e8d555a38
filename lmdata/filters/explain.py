"""Which setting decides each filter rule: `(setting, comparison, threshold)` from the config that
ran. The one map from rule names to settings, read by the filter stage's report ("this rule drops
most of a source: change X") and by `lmforge why` ("12 < filter.heuristics.min_doc_words 50").

Settings are named relative to a params section (`filter.heuristics`, `evalset.heuristics`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from lmdata.filters.heuristics import HeuristicsConfig
from lmdata.filters.langid import LangIdConfig

# Rules that fire on short documents: a corpus of quotes, titles or chat turns loses them all.
SHORT_TEXT_RULES = ("gopher_word_count", "gopher_stop_words", "c4_min_sentences", "c4_min_words_per_line",
                    "c4_terminal_punct")
SHORT_TEXT_HINT = ("short documents: see the README's short-text preset (profiles/short_text.yaml: "
                   "lmforge run --profile profiles/short_text.yaml)")

# rule -> (lower-bound field, upper-bound field); a measured value below the first or above the second fails.
_BOUNDS: dict[str, tuple[str | None, str | None]] = {
    "gopher_word_count": ("min_doc_words", "max_doc_words"),
    "gopher_mean_word_length": ("min_mean_word_length", "max_mean_word_length"),
    "gopher_symbol_ratio": (None, "max_symbol_word_ratio"),
    "gopher_bullet_lines": (None, "max_bullet_lines_ratio"),
    "gopher_ellipsis_lines": (None, "max_ellipsis_lines_ratio"),
    "gopher_alpha_words": ("min_alpha_words_ratio", None),
    "gopher_stop_words": ("min_stop_words", None),
    "gopher_dup_para_frac": (None, "max_dup_para_frac"),
    "gopher_dup_para_char_frac": (None, "max_dup_para_char_frac"),
    "gopher_dup_line_frac": (None, "max_dup_line_frac"),
    "gopher_dup_line_char_frac": (None, "max_dup_line_char_frac"),
    "c4_curly_bracket": (None, "c4_max_curly_line_frac"),
    "c4_min_sentences": ("c4_min_sentences", None),
    # C4 line rules in filter mode: the share of lines failing the rule is measured.
    "c4_long_word": (None, "c4_max_bad_line_frac"),
    "c4_terminal_punct": (None, "c4_max_bad_line_frac"),
    "c4_min_words_per_line": (None, "c4_max_bad_line_frac"),
    "c4_javascript": (None, "c4_max_bad_line_frac"),
}
# The line-level threshold behind a C4 line rule, named beside the share.
_LINE_SETTING = {"c4_long_word": "c4_max_word_length", "c4_min_words_per_line": "c4_min_words_per_line"}


@dataclass
class RuleSetting:
    """How a rule decided: `measured <op> setting threshold`, and what else to change."""

    setting: str  # full dotted params key, e.g. filter.heuristics.min_doc_words
    op: str  # "<", ">", "not in", or "" when the rule has no threshold
    threshold: object  # the value that ran (None when the rule has none)
    also: str = ""  # a further setting worth naming (the line rule behind a C4 share)

    def describe(self, value: float | None, prefix: str = "") -> str:
        """`"12 < filter.heuristics.min_doc_words 50"` (value first when there is one)."""
        measured = "" if value is None else f"{_fmt(value)} "
        if not self.op:
            return f"{prefix}{measured}{self.setting}".strip()
        out = f"{prefix}{measured}{self.op} {self.setting} {_fmt(self.threshold)}"
        return out + (f" ({self.also})" if self.also else "")


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def heuristic_setting(rule: str, value: float | None, cfg: HeuristicsConfig,
                      section: str = "filter.heuristics") -> RuleSetting:
    """The setting that decided heuristic `rule` for a document that measured `value`."""
    if rule.startswith(("gopher_top_", "gopher_dup_")) and rule.endswith("gram"):
        n = int(rule.removeprefix("gopher_top_").removeprefix("gopher_dup_").removesuffix("gram"))
        field = "max_top_ngram_char_frac" if rule.startswith("gopher_top_") else "max_dup_ngram_char_frac"
        return RuleSetting(f"{section}.{field}.{n}", ">", getattr(cfg, field).get(n))
    if rule not in _BOUNDS:  # empty, c4_lorem_ipsum, c4_empty: no threshold, only the switch
        return RuleSetting(f"{section}.disabled_rules", "", None)
    low, high = _BOUNDS[rule]
    use_low = low is not None and (high is None or value is None or value < getattr(cfg, low))
    field = low if use_low else high
    also = f"{section}.{_LINE_SETTING[rule]} {getattr(cfg, _LINE_SETTING[rule])}" if rule in _LINE_SETTING else ""
    return RuleSetting(f"{section}.{field}", "<" if use_low else ">", getattr(cfg, field), also)


def langid_setting(detail: str | None, value: float | None, cfg: LangIdConfig,
                   section: str = "filter.langid") -> RuleSetting:
    """Rule `lang`: the language was not allowed, or its score was below `min_score`."""
    lang = (detail or "").split(":")[-1]
    if lang not in cfg.allowed:
        return RuleSetting(f"{section}.allowed", "not in", list(cfg.allowed))
    return RuleSetting(f"{section}.min_score", "<", cfg.min_score)


def setting_to_change(rule: str, heur: HeuristicsConfig, section: str = "filter") -> str:
    """The setting a user changes to stop `rule` dropping documents (for the stage report)."""
    if rule == "lang":
        return f"{section}.langid.allowed / {section}.langid.min_score"
    if rule == "quality":
        return f"{section}.quality.top_fraction (or keep_mode/threshold, or enabled: false)"
    if rule.startswith(("empty_", "chosen_equals")):
        return "(record rule: fix the data)"
    s = heuristic_setting(rule, None, heur, f"{section}.heuristics")
    switch = f"{section}.heuristics.disabled_rules"
    return switch if s.setting == switch else f"{s.setting} or {switch}"


def rules_dropping_most(rows_by_source: dict[str, int], rejected_by_source_rule: dict[tuple[str, str], int],
                        heur: HeuristicsConfig, min_share: float = 0.5, section: str = "filter") -> list[dict]:
    """Per source, every rule that dropped more than `min_share` of its training documents, with
    the setting to change (and a hint when the rule is one that short documents fail)."""
    out = []
    for (source, rule), n in sorted(rejected_by_source_rule.items()):
        total = rows_by_source.get(source, 0)
        if total and n / total > min_share:
            row = {"source": source, "rule": rule, "dropped": n, "of": total, "share": round(n / total, 4),
                   "setting": setting_to_change(rule, heur, section)}
            if rule in SHORT_TEXT_RULES:
                row["hint"] = SHORT_TEXT_HINT
            out.append(row)
    return out


def source_rule_counts(in_dir: Path, out_dir: Path) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(training rows per source in a stage's input, rejected rows per (source, reason) in its output)."""
    rows = [pl.read_parquet(p, columns=["source", "split"]) for p in sorted(Path(in_dir).glob("*.parquet"))]
    rej = [pl.read_parquet(p, columns=["source", "reason"]) for p in sorted((Path(out_dir) / "rejected").glob("*.parquet"))]
    by_source = (dict(pl.concat(rows).filter(pl.col("split") == "train").group_by("source").len().iter_rows())
                 if rows else {})
    by_rule = ({(s, r): n for s, r, n in pl.concat(rej).group_by("source", "reason").len().iter_rows()}
               if rej else {})
    return by_source, by_rule
