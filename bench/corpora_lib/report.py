"""Scoring for bench/corpora.py: join each stage's kept and rejected shards back to the labelled
records (by the record `id` where a stage keeps it, else the JSONL line in `meta` / `locator`),
then per source and per kind outcomes, the issue-12 targets and the documents that miss them."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl

from .corpus import jaccard

WANTED = ["id", "split", "source", "text", "meta", "locator", "group", "reason", "reason_detail", "reason_value"]
PRE_DEDUP = ("ingest", "clean")
CLEAN_REASONS = ("redirect", "disambiguation", "empty_after_clean")  # also inside the evalset stage
MARKUP = {
    "{{": re.compile(r"\{\{"), "}}": re.compile(r"\}\}"), "[[": re.compile(r"\[\["), "]]": re.compile(r"\]\]"),
    "'''": re.compile(r"'''"), "&lt;": re.compile(r"&lt;"), "<ref": re.compile(r"<ref", re.I),
    "{|": re.compile(r"\{\|"), "entity": re.compile(r"&(?:[a-zA-Z]{2,8}|#\d+|#x[0-9a-fA-F]+);"),
    "html_tag": re.compile(r"</?(?:p|div|span|a|b|i|br|script|style|nav|ul|li|td|tr|table|h[1-6]|html|body|head)"
                           r"\b[^>]*>", re.I),
}
TARGETS = [  # measure, target, what it counts
    ("corpora_articles_kept_for_training", 0.90, "wiki articles in the train split kept by clean, dedup and filter"),
    ("corpora_articles_in_balanced_mix", 0.90, "the same, after balance's mixture sampling"),
    ("corpora_redirects_rejected_as_redirect", 1.00, "redirect pages rejected with reason `redirect`"),
    ("corpora_non_english_rejected", 0.99, "non-English documents neither kept for training nor in the eval set"),
    ("corpora_planted_duplicates_found", 0.95, "planted copies whose pair got a duplicate reason"),
    ("corpora_planted_exact_duplicates_found", 0.95, "byte-identical planted copies found"),
    ("corpora_planted_near_duplicates_found", 0.95, "near copies (re-wrapped, words changed; Jaccard 0.75-1) found"),
    ("corpora_kept_docs_without_markup", 1.00, "kept documents (training and eval set) with no unparsed markup"),
    ("corpora_evalset_allowed_language", 0.95, "evaluation-set documents in an allowed language (lid.176)"),
]


def is_dup_reason(reason: str | None) -> bool:
    return bool(reason) and (("dup" in reason and not reason.startswith("gopher")) or "overlap" in reason)


def read_folder(folder: Path) -> pl.DataFrame | None:
    shards = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    frames = []
    for p in shards:
        cols = [c for c in WANTED if c in pl.read_parquet_schema(p)]
        frames.append(pl.read_parquet(p, columns=cols))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


class Outcomes:
    """What happened to each labelled record: its split, every stage's kept rows, its first rejection."""

    def __init__(self, records: list[dict], corpus_name: str):
        self.records = records
        self.corpus_name = corpus_name
        self.by_id = {r["id"]: i for i, r in enumerate(records)}
        self.row_rec: dict[str, int] = {}
        self.split: dict[int, str] = {}
        self.pipeline_source: dict[int, str] = {}
        self.kept: dict[str, dict[int, tuple[str, str]]] = {}
        self.rejected: dict[int, dict] = {}
        self.unresolved: Counter[str] = Counter()
        self.stages: list[str] = []

    def resolve(self, row: dict) -> int | None:
        if row.get("id") in self.row_rec:
            return self.row_rec[row["id"]]
        meta = row.get("meta")
        meta = json.loads(meta) if isinstance(meta, str) and meta.startswith("{") else {}
        idx = None
        group = row.get("group") or ""
        extra = meta.get("fields") if isinstance(meta.get("fields"), dict) else {}
        for cand in (meta.get("id"), extra.get("id"), group, group.partition(":")[2]):
            if isinstance(cand, str) and cand in self.by_id:
                idx = self.by_id[cand]
                break
        line = meta.get("line")
        if idx is None and line is None and isinstance(row.get("locator"), str):
            m = re.search(r":(\d+)$", row["locator"])
            line = int(m.group(1)) if m else None
        if idx is None and isinstance(line, int) and 1 <= line <= len(self.records):
            idx = line - 1
        if idx is not None and row.get("id"):
            self.row_rec[row["id"]] = idx
        return idx

    def read_stage(self, stage: str, folder: Path) -> None:
        self.stages.append(stage)
        kept: dict[int, tuple[str, str]] = {}
        df = read_folder(folder)
        for row in (df.iter_rows(named=True) if df is not None else []):
            idx = self.resolve(row)
            if idx is None:
                self.unresolved[stage] += 1
                continue
            kept[idx] = (row.get("split") or "", row.get("text") or "")
            if stage == "ingest":
                self.split[idx] = row.get("split") or ""
                self.pipeline_source[idx] = row.get("source") or ""
        self.kept[stage] = kept
        rej = read_folder(folder / "rejected")
        for row in (rej.iter_rows(named=True) if rej is not None else []):
            idx = self.resolve(row)
            if idx is None:
                self.unresolved[f"{stage}/rejected"] += 1
            elif idx not in self.rejected:
                self.rejected[idx] = {"stage": stage, "reason": row.get("reason"),
                                      "detail": row.get("reason_detail"), "value": row.get("reason_value")}


def outcome_of(i: int, o: Outcomes, train_final: set[int], eval_set: set[int]) -> str:
    if i in train_final:
        return "kept_train"
    if i in eval_set:
        return "eval_set"
    if i in o.rejected:
        r = o.rejected[i]
        return f"{r['stage']}:{r['reason']}"
    return "not_reached"


def build_report(o: Outcomes, params: dict, log: list[dict]) -> dict:
    recs = o.records
    ok = [e["stage"] for e in log if e["status"] == "ok"]
    last = ok[-1] if ok else None
    final = o.kept.get(last, {}) if last else {}
    train_final = {i for i, (s, _) in final.items() if s == "train"}
    quality = [s for s in ok if s != "balance"]  # the last stage that judges documents
    judged = o.kept.get(quality[-1], {}) if quality else {}
    train_kept = {i for i, (s, _) in judged.items() if s == "train"}
    if "evalset" in o.kept:
        eval_docs = dict(o.kept["evalset"])
    else:
        eval_docs = {i: v for i, v in final.items() if v[0] == "eval"}
    eval_set = set(eval_docs)
    copies: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        if r["plant_of"]:
            copies[o.by_id[r["plant_of"]]].append(i)

    table: dict[str, dict] = {}
    for i, r in enumerate(recs):
        for key in (f"source={r['source']}", f"kind={r['plant_kind']}"):
            t = table.setdefault(key, {"in": 0, "train": 0, "eval": 0, "kept_filter": 0, "kept_train": 0,
                                       "eval_set": 0, "rejected": Counter()})
            t["in"] += 1
            t["train"] += o.split.get(i) == "train"
            t["eval"] += o.split.get(i) == "eval"
            t["kept_filter"] += i in train_kept
            out = outcome_of(i, o, train_final, eval_set)
            if out == "kept_train":
                t["kept_train"] += 1
            elif out == "eval_set":
                t["eval_set"] += 1
            else:
                t["rejected"][out] += 1
    for t in table.values():
        t["rejected"] = dict(t["rejected"].most_common())
        t["kept_filter_of_train"] = round(t["kept_filter"] / t["train"], 4) if t["train"] else None

    failures: dict[str, list] = {}
    values: dict[str, tuple[float, int]] = {}

    def share(name: str, members: list[int], good, describe) -> None:
        hits = [i for i in members if good(i)]
        values[name] = (len(hits) / len(members) if members else float("nan"), len(members))
        failures[name] = [describe(i) for i in members if not good(i)][:40]

    def brief(i: int) -> dict:
        r = recs[i]
        rej = o.rejected.get(i, {})
        return {"id": r["id"], "kind": r["plant_kind"], "split": o.split.get(i),
                "outcome": outcome_of(i, o, train_final, eval_set), "detail": rej.get("detail"),
                "value": rej.get("value"), "title": r["title"][:60]}

    def article_kept(i: int, kept: set[int]) -> bool:  # or dropped as a duplicate of its kept planted copy
        rej = o.rejected.get(i, {})
        return i in kept or (is_dup_reason(rej.get("reason")) and
                             any(c in kept or c in eval_set for c in copies.get(i, [])))

    articles = [i for i, r in enumerate(recs) if r["plant_kind"] == "article" and o.split.get(i) == "train"]
    share("corpora_articles_kept_for_training", articles, lambda i: article_kept(i, train_kept), brief)
    share("corpora_articles_in_balanced_mix", articles, lambda i: article_kept(i, train_final), brief)
    redirects = [i for i, r in enumerate(recs) if r["plant_kind"] == "redirect"]
    share("corpora_redirects_rejected_as_redirect", redirects,
          lambda i: o.rejected.get(i, {}).get("reason") == "redirect", brief)
    foreign = [i for i, r in enumerate(recs) if r["plant_lang"] != "en"]
    share("corpora_non_english_rejected", foreign, lambda i: i not in train_kept and i not in eval_set,
          lambda i: {**brief(i), "lang": recs[i]["plant_lang"], "text": recs[i]["text"][:80]})

    dedup_input = {**o.kept.get("evalset", {}), **next((o.kept[s] for s in ("clean", "ingest") if s in o.kept), {})}

    def reached(i: int) -> bool:  # not dropped by ingest or clean (nor by the evalset's own clean)
        rej = o.rejected.get(i, {})
        return rej.get("stage") not in PRE_DEDUP and rej.get("reason") not in CLEAN_REASONS

    def comparable(c: int) -> bool:
        """Both reach a dedup that compares them. Across splits the reference is the curated
        evaluation set (where one exists): an evaluation original it dropped leaves nothing to overlap."""
        orig = o.by_id[recs[c]["plant_of"]]
        if not (reached(c) and reached(orig)):
            return False
        if o.split.get(c) != o.split.get(orig) and "evalset" in o.kept:
            return (c if o.split.get(c) == "eval" else orig) in eval_set
        return True

    def found(c: int) -> bool:
        orig = o.by_id[recs[c]["plant_of"]]
        return any(is_dup_reason(o.rejected.get(j, {}).get("reason")) for j in (c, orig))

    def describe_pair(c: int) -> dict:
        orig = o.by_id[recs[c]["plant_of"]]
        a, b = dedup_input.get(c, ("", ""))[1], dedup_input.get(orig, ("", ""))[1]
        return {"copy": brief(c), "original": brief(orig), "variant": recs[c]["plant_variant"],
                "prose_jaccard": recs[c]["plant_jaccard"], "measured_jaccard": round(jaccard(a, b), 4) if a and b else None}

    planted = [i for i, r in enumerate(recs) if r["plant_of"]]
    applicable = [c for c in planted if comparable(c)]
    share("corpora_planted_duplicates_found", applicable, found, describe_pair)
    share("corpora_planted_exact_duplicates_found", [c for c in applicable if recs[c]["plant_kind"] == "dup_exact"],
          found, describe_pair)
    near = [c for c in applicable if recs[c]["plant_kind"] == "dup_near"]
    share("corpora_planted_near_duplicates_found", near, found, describe_pair)
    by_bin: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in near:
        d = describe_pair(c)
        j = d["measured_jaccard"] if d["measured_jaccard"] is not None else recs[c]["plant_jaccard"]
        key = f"{recs[c]['plant_variant']} J~{min(0.95, int(j * 20) / 20):.2f}"
        by_bin[key][0] += found(c)
        by_bin[key][1] += 1

    kept_texts = {**{i: judged[i][1] for i in train_kept}, **{i: t for i, (_, t) in eval_docs.items()}}
    pattern_counts: Counter[str] = Counter()
    marked: dict[int, list[str]] = {}
    for i, text in kept_texts.items():
        hits = [name for name, rx in MARKUP.items() if rx.search(text)]
        pattern_counts.update(hits)
        if hits:
            marked[i] = hits

    def markup_example(i: int) -> dict:
        text = kept_texts[i]
        m = next(rx.search(text) for name, rx in MARKUP.items() if name in marked[i])
        return {**brief(i), "patterns": marked[i], "snippet": text[max(0, m.start() - 60):m.end() + 60]}

    share("corpora_kept_docs_without_markup", sorted(kept_texts), lambda i: i not in marked, markup_example)

    lang_cfg = params.get("filter", {}).get("langid", {})
    allowed = set(lang_cfg.get("allowed", ["en"]))
    eval_ids = sorted(eval_docs)
    langs: dict[int, tuple[str, float]] = {}
    if eval_ids:
        from lmdata.filters.langid import predict_languages

        codes, scores = predict_languages([eval_docs[i][1] for i in eval_ids], lang_cfg["model_path"])
        langs = dict(zip(eval_ids, zip(codes, scores)))
    min_score = float(lang_cfg.get("min_score", 0.5))
    share("corpora_evalset_allowed_language", eval_ids,
          lambda i: langs[i][0] in allowed and langs[i][1] >= min_score,
          lambda i: {**brief(i), "lid": langs[i][0], "score": round(langs[i][1], 3), "label": recs[i]["plant_lang"],
                     "text": eval_docs[i][1][:80]})

    rows = []
    for name, target, what in TARGETS:
        v, n = values[name]
        rows.append({"measure": name, "ours": round(v, 4) if v == v else None, "baseline": f"issue 12 target ({what})",
                     "baseline_value": target, "unit": f"share of {n} documents",
                     "ratio": round(v / target, 4) if v == v and target else None})
    extra = {
        "evalset_documents": len(eval_ids),
        "evalset_english_by_label": round(sum(recs[i]["plant_lang"] == "en" for i in eval_ids) / len(eval_ids), 4)
        if eval_ids else None,
        "evalset_kinds": dict(Counter(recs[i]["plant_kind"] for i in eval_ids).most_common()),
        "training_documents_after_filter": len(train_kept),
        "training_documents_after_balance": len(train_final),
        "record_source_kept": round(sum(o.pipeline_source.get(i) == r["source"] for i, r in enumerate(recs))
                                    / len(recs), 4),
        "disambiguation_rejected_as_disambiguation": round(
            sum(o.rejected.get(i, {}).get("reason") == "disambiguation" for i, r in enumerate(recs)
                if r["plant_kind"] == "disambiguation") / max(1, sum(r["plant_kind"] == "disambiguation" for r in recs)), 4),
        "planted_pairs_not_compared": len(planted) - len(applicable),
        "near_duplicates_found_by_variant_and_jaccard": {k: f"{a}/{b}" for k, (a, b) in sorted(by_bin.items())},
        "markup_pattern_counts": dict(pattern_counts.most_common()),
        "unresolved_rows": dict(o.unresolved),
        "last_stage": last,
    }
    return {"benchmark": "corpora", "rows": rows, "stages": log, "summary": extra,
            "by_source_and_kind": table, "failures": failures}


def print_report(rep: dict) -> None:
    print("\nstages: " + ", ".join(f"{e['stage']} {e['status']}" for e in rep["stages"]))
    for e in rep["stages"]:
        if e["status"] == "failed":
            print(f"INCOMPLETE: {e['stage']} failed ({e['error']}); outcomes below stop at the stage before it")
    print(f"\n{'group':26s} {'in':>5s} {'train':>5s} {'eval':>5s} {'filt':>5s} {'bal':>5s} {'evset':>5s}  "
          "rejected (stage:reason)")
    for key, t in sorted(rep["by_source_and_kind"].items()):
        rej = ", ".join(f"{k} {v}" for k, v in list(t["rejected"].items())[:5])
        print(f"{key:26s} {t['in']:5d} {t['train']:5d} {t['eval']:5d} {t['kept_filter']:5d} {t['kept_train']:5d} "
              f"{t['eval_set']:5d}  {rej}")
    before = rep.get("compared", {}).get("rows", {})

    def fmt(v) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(f"\n{'measure':44s} {'ours':>7s} {'target':>7s}" + (f" {'compared':>8s}" if before else ""))
    for r in rep["rows"]:
        flag = "" if r["ours"] is None else ("ok  " if r["ours"] >= r["baseline_value"] else "MISS")
        was = f" {fmt(before.get(r['measure'])):>8s}" if before else ""
        print(f"{r['measure']:44s} {fmt(r['ours']):>7s} {r['baseline_value']:7.2f}{was}  {flag}  ({r['unit']})")
    print("\n" + json.dumps(rep["summary"], indent=1, ensure_ascii=False))
