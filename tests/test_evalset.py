"""The frozen evaluation set (`evalset@<dataset>`) and decontamination of the training side, on
small crafted shards: the held-out split is cleaned, deduplicated within itself and filtered
with reasons; training documents that overlap it are `eval_overlap` even with dedup switched off;
an ablation may not touch it, and every variant of the default grid gets the same bytes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest
import yaml

from lmdata import lineage
from lmdata.shards import write_shard
from tests.conftest import ROOT

NOUNS = ("river garden letter window market teacher village winter doctor bridge story harbour candle "
         "mountain kitchen soldier meadow library painter journey forest engine island lantern").split()
ADJS = ("quiet narrow golden careful ancient bright heavy gentle distant famous simple hidden").split()
VERBS = ("watched carried followed opened painted described crossed remembered visited repaired").split()
GERMAN = ("Der alte Mann ging langsam durch den stillen Wald und dachte an die Tage seiner Kindheit. "
          "Die Sonne schien warm auf die Wiese, und die Kinder spielten fröhlich am Ufer des Flusses. "
          "Am Abend kehrten alle nach Hause zurück, wo die Großmutter schon mit dem Essen wartete. "
          "Niemand wusste, dass dieser Sommer der letzte im kleinen Dorf sein würde. "
          "Später erzählten sie oft von diesen Tagen, von den Liedern und den langen Gesprächen.")


def prose(seed: int, sentences: int = 9) -> str:
    """English-looking prose that passes the Gopher and C4 rules (varied, stop words, full stops)."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        out.append(f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} "
                   f"of the {rng.choice(ADJS)} {rng.choice(NOUNS)} and then the {rng.choice(NOUNS)} with care.")
    return "\n".join(out)


def row(doc_id: str, text: str, split: str, source: str = "web") -> dict:
    return {"id": doc_id, "content_hash": hashlib.md5(text.encode()).hexdigest(), "source": source,
            "locator": f"{source}:{doc_id}", "group": doc_id, "split": split, "text": text,
            "n_bytes": len(text.encode()), "meta": "{}"}


def eval_docs() -> dict[str, str]:
    e1, e2 = prose(1), prose(2)
    words = e2.split(" ")
    words[20] = "lighthouse"  # one word changed: a near-identical copy
    return {"e1": e1, "e1-copy": e1, "e2": e2, "e2-near": " ".join(words), "e3": prose(3),
            "e-german": GERMAN, "e-short": "The river was quiet and the garden was green today.",
            "e-redirect": "#REDIRECT [[River]]",
            "e-wiki": "'''The harbour''' " + prose(4).replace("river", "[[river]]") + " {{cite web|url=x}}"}


def write_ingest(root: Path, train: dict[str, str], held: dict[str, str]) -> int:
    """Two ingest shards mixing both splits (as ingest writes them); returns the row count."""
    rows = [row(k, v, "train") for k, v in train.items()] + [row(k, v, "eval") for k, v in held.items()]
    rows.sort(key=lambda r: r["id"])
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        write_shard(pl.DataFrame(part), root / "ingest" / "corpus" / f"corpus-{i:05d}.parquet", "corpus")
    return len(rows)


def params_for(root: Path, raw_sample: Path) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["root"] = str(root)
    p["evalset"]["langid"]["model_path"] = str(raw_sample / "models" / "lid.176.ftz")
    return p


def read_all(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], how="diagonal_relaxed")


@pytest.fixture
def staged(tmp_path, monkeypatch, raw_sample, prefect_harness):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    e = eval_docs()
    train = {"t1": prose(11), "t2": prose(12), "t-copy-of-e3": e["e3"],
             "t-near-e1": e["e1"].replace("with care.", "with great care.", 1)}
    n = write_ingest(root, train, e)
    return root, params_for(root, raw_sample), n


def run_evalset(params: dict) -> dict:
    from flows.evalset import evalset

    return evalset("corpus", params)


def test_eval_split_is_filtered_and_deduplicated_with_reasons(staged):
    root, params, _ = staged
    m = run_evalset(params)
    kept = read_all(root / "evalset" / "corpus")
    rej = read_all(root / "evalset" / "corpus" / "rejected")
    reasons = dict(zip(rej["id"], rej["reason"]))
    near = next(i for i in ("e2", "e2-near") if i in reasons)  # the longer of the pair is kept
    assert sorted(kept["id"]) == sorted(["e1", "e3", "e-wiki", ({"e2", "e2-near"} - {near}).pop()])
    assert (kept["split"] == "eval").all()
    assert reasons["e1-copy"] == "exact_dup" and reasons[near] == "near_dup"
    assert reasons["e-german"] == "lang" and rej.filter(pl.col("id") == "e-german")["reason_detail"][0] == "de"
    assert reasons["e-short"].startswith("gopher_") or reasons["e-short"].startswith("c4_")
    assert reasons["e-redirect"] == "redirect"
    wiki = kept.filter(pl.col("id") == "e-wiki")["text"][0]  # markup cleaned, then kept as prose
    assert wiki.startswith("The harbour") and not any(m in wiki for m in ("{{", "[[", "'''"))
    assert m["rows_in"] == 9 and m["rows_kept"] == 4 and m["rows_rejected"] == 5
    assert m["steps"]["clean"]["rejected_by_reason"] == {"redirect": 1}
    assert m["clean_changes"]["wikitext"]["docs_changed"] == 1
    assert m["steps"]["dedup"]["rejected_by_reason"] == {"exact_dup": 1, "near_dup": 1}
    saved = json.loads((Path("metrics") / "evalset" / "corpus.json").read_text())
    assert saved["rows_kept"] == 4 and saved["kept_by_source"] == {"web": 4}
    trail = lineage.why(lineage.connect(root), "e-german")
    assert [(t[0], t[2], t[4], t[5]) for t in trail] == [("ingest", "kept", None, None),
                                                        ("evalset", "rejected", "lang", "de")]


def test_decontamination_counts_direct_overlaps_only():
    """A training document that near-copies an evaluation document is `eval_overlap`; one that only
    resembles that copy (Jaccard 0.79 to it, 0.69 to the evaluation document) is left to ordinary
    dedup: no chains through training documents, as dedup's clusters would make."""
    from lmdata.decontaminate import decontamination_config, find_overlaps
    from lmdata.dedup import DedupConfig, build_index, shard_signatures

    a, n = prose(5, 40).split("\n"), prose(7, 40).split("\n")
    e, copy, drift = "\n".join(a[:30]), "\n".join(a[:28] + n[:2]), "\n".join(a[:24] + n[:2] + n[10:14])
    df = pl.DataFrame([row("e", e, "eval"), row("t-copy", copy, "train"), row("t-drift", drift, "train"),
                       row("t-other", prose(6, sentences=30), "train")])
    cfg = decontamination_config(DedupConfig(exact=False, near=False, verify=True))
    index = build_index([shard_signatures(df, ["text"], cfg)], cfg)
    decisions, stats = find_overlaps(index, ["text"], cfg, fetch=lambda _needed: df)
    assert cfg.exact and cfg.near  # forced on whatever the section says
    assert decisions["id"].to_list() == ["t-copy"]
    assert decisions.row(0)[1:3] == ("eval_overlap", "e") and 0.8 < decisions["reason_value"][0] < 0.95
    assert stats["eval_docs"] == 1 and stats["train_docs"] == 3


def test_training_copies_of_eval_documents_are_eval_overlap_even_with_dedup_off(staged):
    from flows.clean import clean
    from flows.dedup import dedup

    root, params, n = staged
    ev = run_evalset(params)
    cleaned = clean("corpus", params)
    params["dedup"].update(exact=False, near=False)
    m = dedup("corpus", params)
    rej = read_all(root / "dedup" / "corpus" / "rejected")
    got = {i: (r, d) for i, r, d in rej.select("id", "reason", "reason_detail").rows()}
    assert got["t-copy-of-e3"] == ("eval_overlap", "e3")
    assert got["t-near-e1"] == ("eval_overlap", "e1")
    assert m["rejected_by_reason"] == {"eval_overlap": 2}
    assert m["decontamination"][0]["eval_docs"] == 4  # the curated set, not the raw held-out rows
    # conservation across the fork: every ingest row is read by exactly one side
    assert m["rows_in"] == cleaned["rows_kept"] and (read_all(root / "dedup" / "corpus")["split"] == "train").all()
    assert cleaned["rows_in"] + ev["rows_in"] == n == 13


def test_dedup_refuses_to_run_without_the_evaluation_set(staged):
    from flows.clean import clean
    from flows.dedup import dedup

    _, params, _ = staged
    clean("corpus", params)
    with pytest.raises(FileNotFoundError, match="evalset@corpus"):
        dedup("corpus", params)


def test_unknown_evalset_setting_fails_before_work(staged):
    from lmdata.errors import ConfigError

    root, params, _ = staged
    params["evalset"]["langid"]["min_scor"] = 0.9
    with pytest.raises(ConfigError, match="evalset.langid"):
        run_evalset(params)
    assert not (root / "evalset").exists()


def test_every_ablation_variant_gets_a_byte_identical_evaluation_set(staged):
    from lmdata.ablation import AblationSpec, apply_overrides

    root, params, _ = staged
    spec = AblationSpec.load(ROOT / "ablations.yaml")
    seen = {}
    for variant in spec.variants:
        run_evalset(apply_overrides(params, {**spec.fixed, **variant.overrides}))
        out = root / "evalset" / "corpus"
        seen[variant.name] = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    first = next(iter(seen.values()))
    assert len(seen) == len(spec.variants) >= 6 and len(first) >= 2
    assert all(files == first for files in seen.values())


def test_ablation_refuses_a_variant_that_sets_evalset(tmp_path):
    from lmdata.ablation import AblationSpec
    from lmdata.errors import ConfigError

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = yaml.safe_load((ROOT / "ablations.yaml").read_text())
    raw["variants"] = [{"name": "looser-eval", "base": "raw", "set": {"evalset.langid.min_score": 0.1}}]
    with pytest.raises(ConfigError, match="evalset.langid.min_score"):
        AblationSpec.from_dict(raw).runs(params)
    raw["variants"] = [{"name": "eval-groups", "base": "raw", "set": {"ingest.eval_fraction": 0.5}}]
    with pytest.raises(ConfigError, match="ingest.eval_fraction"):
        AblationSpec.from_dict(raw).runs(params)


def test_short_text_preset_relaxes_the_evaluation_set_alike():
    """A profile for short texts must relax the evaluation set's size rules too, or every held-out
    quote is dropped and the models are judged on nothing."""
    preset = yaml.safe_load((ROOT / "profiles" / "short_text.yaml").read_text())
    assert preset["evalset"]["heuristics"] == preset["filter"]["heuristics"]
