"""Language identification with fastText `lid.176` (the .ftz from `fetch`, or a user's .bin).

The model is loaded once per process and documents are predicted in one batch. fastText reads
one line per example, so newlines are replaced by spaces before prediction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lmdata.errors import ConfigError
from lmdata.filters.heuristics import check_field_types, config_from_dict
from lmdata.stage import REJECT_COLUMNS, StepResult, add_reason, empty_rejects

_MODELS: dict[str, object] = {}


@dataclass
class LangIdConfig:
    """Maps 1:1 to params.yaml `filter.langid`."""

    enabled: bool = True
    model_path: str = "data/raw/models/lid.176.ftz"  # lid.176.ftz from fetch, or your own lid.176.bin
    allowed: list[str] = field(default_factory=lambda: ["en"])  # ISO codes as lid.176 labels them
    min_score: float = 0.5  # probability of the top language; below it a document is rejected
    # Columns whose language is checked, in order; instructions: [prompt, response],
    # comparisons: [prompt, chosen, rejected]. The first failing field is reported.
    fields: list[str] = field(default_factory=lambda: ["text"])
    # Predict on the first `max_chars` characters of each text (0: the whole text, the default).
    # fastText's cost grows with the text, so long documents cost less; decisions can move on
    # borderline texts (docs/LOG.md, issue 17: at 2,000 characters 3 of 2,348 generated documents
    # and 2 of 79 pydoc topics changed side; the sample's plays and Django locales did not).
    max_chars: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "filter.langid")
        if not self.allowed:
            raise ConfigError("filter.langid.allowed: name at least one language code")
        if self.max_chars < 0:
            raise ConfigError(f"filter.langid.max_chars: expected 0 (whole text) or a positive count, got {self.max_chars}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"filter.langid.min_score: expected 0..1, got {self.min_score}")

    @classmethod
    def from_dict(cls, d: dict | None) -> LangIdConfig:
        return config_from_dict(cls, d or {}, "filter.langid")


def load_langid_model(path: str | Path):
    """The fastText model at `path`, loaded once per process."""
    import fasttext

    key = str(Path(path).resolve())
    if key not in _MODELS:
        if not os.path.exists(key):
            raise FileNotFoundError(f"language-ID model not found: {path} (run the fetch stage, or set "
                                    "filter.langid.model_path to your lid.176.bin)")
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model deprecation notice
        _MODELS[key] = fasttext.load_model(key)
    return _MODELS[key]


def predict_languages(texts: list[str], model_path: str | Path, max_chars: int = 0) -> tuple[list[str], list[float]]:
    """(language code, probability) of each text (of its first `max_chars` characters, when
    positive); empty texts get ("", 0.0)."""
    model = load_langid_model(model_path)
    lines = [" ".join((t[:max_chars] if max_chars else t).split()) for t in texts]
    nonempty = [i for i, t in enumerate(lines) if t]
    langs, scores = [""] * len(texts), [0.0] * len(texts)
    if nonempty:
        labels, probs = model.predict([lines[i] for i in nonempty], k=1)
        for i, lab, p in zip(nonempty, labels, probs):
            langs[i] = lab[0].removeprefix("__label__")
            scores[i] = min(1.0, float(p[0]))  # fastText can return 1.00001
    return langs, scores


def langid_filter(df: pl.DataFrame, cfg: LangIdConfig) -> StepResult:
    """Reject rows whose checked fields are not in an allowed language with enough confidence.

    Kept rows gain `lang` and `lang_score` (of the first checked field). Rejects: reason `lang`,
    reason_detail the predicted code (`field:code` for fields other than `text`), reason_value
    the score."""
    missing = [f for f in cfg.fields if f not in df.columns]
    if missing:
        raise ValueError(f"filter.langid.fields: columns {missing} not in the data ({df.columns})")
    if not cfg.enabled or df.is_empty():
        return StepResult(df, empty_rejects(df))
    allowed = set(cfg.allowed)
    n = df.height
    first_lang, first_score = None, None
    detail: list[str | None] = [None] * n
    value: list[float | None] = [None] * n
    for name in cfg.fields:
        langs, scores = predict_languages(df[name].to_list(), cfg.model_path, cfg.max_chars)
        if first_lang is None:
            first_lang, first_score = langs, scores
        for i, (lang, score) in enumerate(zip(langs, scores)):
            if detail[i] is None and (lang not in allowed or score < cfg.min_score):
                detail[i] = lang if name == "text" else f"{name}:{lang}"
                value[i] = score
    tagged = df.with_columns(pl.Series("lang", first_lang, dtype=pl.Utf8),
                             pl.Series("lang_score", first_score, dtype=pl.Float64))
    fails = pl.Series([d is not None for d in detail])
    kept = tagged.filter(~fails)
    rejected = add_reason(tagged.filter(fails), reason="lang",
                          detail=pl.lit(pl.Series([d for d in detail if d is not None], dtype=pl.Utf8)),
                          value=pl.lit(pl.Series([v for v in value if v is not None], dtype=pl.Float64)))
    return StepResult(kept, rejected.select(*tagged.columns, *REJECT_COLUMNS))
