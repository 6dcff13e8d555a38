"""Filter-stage steps: heuristic rules, language ID and the trained quality classifier."""

from lmdata.filters.heuristics import (
    HeuristicsConfig,
    check_text,
    heuristic_filter,
    record_filter,
    rule_names,
)
from lmdata.filters.langid import LangIdConfig, langid_filter, predict_languages
from lmdata.filters.quality import (
    QualityConfig,
    keep_threshold,
    quality_filter,
    score_histogram,
    train_quality_classifier,
)

__all__ = [
    "HeuristicsConfig", "LangIdConfig", "QualityConfig", "check_text", "heuristic_filter", "keep_threshold",
    "langid_filter", "predict_languages", "quality_filter", "record_filter", "rule_names", "score_histogram",
    "train_quality_classifier",
]
