"""Plant: planted noise is deterministic, labelled and accounted for; recall/precision on a hand-made case."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from lmdata.errors import ConfigError
from lmdata.plant import KINDS, LABELS_FILE, PlantConfig, jaccard_bin, plant_corpus
from lmdata.plant_kinds import jaccard
from lmdata.plant_recall import markdown, plant_report, recall_precision, step_events
from lmdata.shards import REJECTED_DIR, list_shards, write_shard
from lmdata.text import content_hash, document_id

WORDS = ("the of and to in that it with as for his this but be have not by from they what king lord love "
         "night sword crown river house letter morning promise honour friend brother garden winter").split()


def doc(source: str, locator: str, text: str, split: str = "train") -> dict:
    return {"id": document_id(source, locator, text), "content_hash": content_hash(text), "source": source,
            "locator": locator, "group": locator, "split": split, "text": text,
            "n_bytes": len(text.encode()), "meta": "{}"}


def prose(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "." for _ in range(words // 9)]
    return "\n".join(lines)


@pytest.fixture
def ingested(tmp_path):
    """Two ingest shards: 8 English base documents, 4 'django' rows outside the base (one English), 1 held-out row."""
    rows = [doc("shakespeare", f"play{i}.txt", prose(i)) for i in range(8)]
    rows += [doc("django", f"django/locale/x{i}", f"Bonjour le monde numéro {i}, merci beaucoup.") for i in range(3)]
    rows.append({**doc("django", "django/locale/en_GB", "Colour settings and favourite organisations."),
                 "meta": '{"locale": "en_GB"}'})   # English: never planted as non-English
    rows.append(doc("shakespeare", "held.txt", prose(99), split="eval"))
    ingest = tmp_path / "ingest" / "corpus"
    write_shard(pl.DataFrame(rows[:6]), ingest / "a-00000.parquet", "corpus")
    write_shard(pl.DataFrame(rows[6:]), ingest / "a-00001.parquet", "corpus")
    base = tmp_path / "base.txt"
    base.write_text("# base\n" + "\n".join(r["id"] for r in rows[:8]) + "\n")
    cfg = PlantConfig.from_dict({"enabled": True, "base": str(base), "seed": 3,
                                 "rates": {"exact_copy": 0.5, "near_copy": 1.0, "non_english": 0.25,
                                           "boilerplate": 0.25, "markup": 0.25, "code_table": 0.25,
                                           "fragment": 0.25}})
    return ingest, cfg, rows


def run(ingest, cfg, out):
    return plant_corpus(ingest, out / "corpus", cfg, max_bytes=20_000)


def test_planting_is_deterministic(ingested, tmp_path):
    ingest, cfg, _ = ingested
    run(ingest, cfg, tmp_path / "one")
    run(ingest, cfg, tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.parquet"))
    assert len(files) >= 4
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    other = PlantConfig.from_dict({**cfg.__dict__, "seed": 4})
    run(ingest, other, tmp_path / "three")
    texts = lambda root: sorted(pl.read_parquet(list_shards(root / "corpus"))["text"].to_list())  # noqa: E731
    assert texts(tmp_path / "three") != texts(tmp_path / "one")


def test_planted_documents_are_labelled_and_accounted_for(ingested, tmp_path):
    ingest, cfg, rows = ingested
    stats = run(ingest, cfg, tmp_path)
    assert stats["rows_in"] == 12 == stats["rows_kept"] + stats["rows_rejected"]   # the held-out row is left out
    assert (stats["rows_kept"], stats["eval_rows_skipped"]) == (8, 1)
    assert stats["planted_by_kind"] == {"exact_copy": 4, "near_copy": 8, "non_english": 2, "boilerplate": 2,
                                        "markup": 2, "code_table": 2, "fragment": 2}
    out = pl.concat([pl.read_parquet(p) for p in list_shards(tmp_path / "corpus")])
    labels = pl.read_parquet(tmp_path / LABELS_FILE)
    assert out["id"].n_unique() == out.height == 8 + labels.height == 8 + stats["rows_added"]
    assert set(labels["id"]) == set(out["id"]) - {r["id"] for r in rows[:8]}
    assert set(labels["kind"]) == set(KINDS)
    rejected = pl.read_parquet(list((tmp_path / "corpus" / REJECTED_DIR).glob("*.parquet")))
    assert set(rejected["reason"]) == {"not_in_base"} and rejected.height == 4
    text_of = dict(zip(out["id"], out["text"], strict=True))
    for lab in labels.to_dicts():
        if lab["kind"] == "exact_copy":
            assert text_of[lab["id"]] == text_of[lab["origin"]]
        if lab["kind"] == "near_copy":
            assert 0 < lab["jaccard"] < 1 and lab["jaccard_bin"] == jaccard_bin(lab["jaccard"])
            assert lab["jaccard"] == pytest.approx(jaccard(text_of[lab["origin"]], text_of[lab["id"]]), abs=1e-4)
        if lab["kind"] == "non_english":
            assert text_of[lab["id"]].startswith("Bonjour")
        if lab["kind"] == "markup":
            assert text_of[lab["id"]].startswith("<!DOCTYPE html>")
    near = labels.filter(pl.col("kind") == "near_copy").sort("jaccard")["jaccard"].to_list()
    assert near[0] < 0.65 and near[-1] > 0.9   # spread over 0.5-1.0


def test_jaccard_bins():
    assert [jaccard_bin(j) for j in (0.42, 0.5, 0.69, 0.7, 0.9, 0.999, 1.0)] == \
        ["<0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.9-1.0", "0.9-1.0", "0.9-1.0"]


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="plant.rates"):
        PlantConfig.from_dict({"rates": {"typos": 0.1}})
    with pytest.raises(ConfigError, match="near_jaccard"):
        PlantConfig.from_dict({"near_jaccard": [0.9, 0.5]})
    with pytest.raises(ConfigError, match="unknown plant setting"):
        PlantConfig.from_dict({"rate": 0.1})
    assert not PlantConfig().enabled


def rejects(folder, rows):
    """A reject shard with only the columns recall reads."""
    df = pl.DataFrame(rows, schema={"id": pl.Utf8, "reason": pl.Utf8, "reason_detail": pl.Utf8}, orient="row")
    (folder / REJECTED_DIR).mkdir(parents=True, exist_ok=True)
    df.write_parquet(folder / REJECTED_DIR / "s-00000.parquet")


def test_recall_and_precision_on_a_hand_made_case(tmp_path):
    """Base b1..b6. Planted: e1,e2 exact copies of b1; n1 (bin 0.9-1.0) and n2 (0.5-0.6) near copies of b2;
    f1 non-English; m1 markup; s1, s2 boilerplate. Known outcome:
    clean rewrites m1 (html); exact dedup drops e2 and b1 (pointing at e1: the pair resolved the other way);
    minhash drops n1 and b3 (a false positive); langid drops f1 and b4; heuristics drop s1, m1 and b5."""
    labels = pl.DataFrame([
        ("e1", "exact_copy", "b1", 1.0, "0.9-1.0"), ("e2", "exact_copy", "b1", 1.0, "0.9-1.0"),
        ("n1", "near_copy", "b2", 0.95, "0.9-1.0"), ("n2", "near_copy", "b2", 0.55, "0.5-0.6"),
        ("f1", "non_english", None, None, None), ("m1", "markup", "b6", None, None),
        ("s1", "boilerplate", "b6", None, None), ("s2", "boilerplate", "b6", None, None)],
        schema=["id", "kind", "origin", "jaccard", "jaccard_bin"], orient="row")
    clean = tmp_path / "clean" / "corpus"
    clean.mkdir(parents=True)
    pl.DataFrame({"id": ["b1", "m1", "s1"], "clean": ["{}", json.dumps({"html": 900}), "{}"]}).write_parquet(
        clean / "s-00000.parquet")
    rejects(clean, [])
    rejects(tmp_path / "dedup" / "corpus", [("e2", "exact_dup", "e1"), ("b1", "exact_dup", "e1"),
                                            ("n1", "near_dup", "b2"), ("b3", "near_dup", "b2")])
    rejects(tmp_path / "filter" / "corpus", [("f1", "lang", "fr"), ("b4", "lang", "de"), ("s1", "gopher_top_2gram", None),
                                             ("m1", "gopher_word_count", None), ("b5", "c4_curly_bracket", None)])
    (tmp_path / "plant").mkdir()
    labels.write_parquet(tmp_path / "plant" / LABELS_FILE)
    result = plant_report(tmp_path, tmp_path / "report")
    assert recall_precision(labels, step_events(tmp_path)) == result
    assert (tmp_path / "report" / "recall.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "report" / "recall.json").read_text()) == result
    steps = {r["step"]: r for r in result["steps"]}
    assert list(steps) == ["clean: html", "exact dedup", "minhash", "langid", "heuristics"]
    assert steps["clean: html"]["kinds"]["markup"] == {"planted": 1, "reached": 1, "caught": 1, "recall": 1.0}
    assert steps["clean: html"]["precision"] == 1.0   # rewrites only: planted share of what it rewrote
    assert steps["exact dedup"]["kinds"]["exact_copy"]["recall"] == 1.0 and steps["exact dedup"]["precision"] == 1.0
    assert steps["minhash"]["kinds"]["near_copy 0.9-1.0"]["recall"] == 1.0
    assert steps["minhash"]["kinds"]["near_copy 0.5-0.6"]["recall"] == 0.0
    assert steps["minhash"]["precision"] == 0.5
    assert steps["langid"]["kinds"]["non_english"]["recall"] == 1.0 and steps["langid"]["precision"] == 0.5
    assert steps["heuristics"]["kinds"]["boilerplate"] == {"planted": 2, "reached": 2, "caught": 1, "recall": 0.5}
    assert steps["heuristics"]["kinds"]["markup"]["recall"] == 1.0   # reached: a rewrite removes nothing
    assert steps["heuristics"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["survived"]["near_copy 0.5-0.6"] == 1 and result["survived"]["boilerplate"] == 1
    aims = {a["kind"]: a for a in result["aims"]}
    assert aims["exact_copy"]["met"] and not aims["near_copy"]["met"] and aims["near_copy"]["recall"] == 0.5
    assert aims["markup"]["recall"] == 1.0 and aims["markup"]["precision"] == 1.0
    assert "| minhash | 2 | 0.50 |" in markdown(result)


def test_off_writes_only_an_empty_label_table(tmp_path, monkeypatch):
    import yaml

    from flows.plant import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"root": "d"}, "plant": {"enabled": False}}))
    main(["--params", "params.yaml"])
    assert sorted(p.name for p in (tmp_path / "d" / "plant").iterdir()) == [LABELS_FILE]
    assert pl.read_parquet(tmp_path / "d" / "plant" / LABELS_FILE).is_empty()
    assert json.loads((tmp_path / "metrics" / "plant.json").read_text())["enabled"] is False


def test_default_dag_does_not_route_through_plant():
    """Off by default, and nothing reads plant's output unless `clean.input: plant` (the noise study)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["plant"]["enabled"] is False and params["clean"]["input"] == "ingest"
    assert PlantConfig.from_dict(params["plant"]) == PlantConfig()   # defaults equal params.yaml
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert stages["clean"]["do"]["deps"][0].startswith("data/${clean.input}/${item}")
    readers = [name for name, st in stages.items() for d in (st.get("do", st).get("deps") or [])
               if str(d).startswith("data/plant")]
    assert readers == []


def test_near_copies_do_not_share_an_origin_with_exact_copies(ingested, tmp_path):
    ingest, cfg, _ = ingested
    run(ingest, cfg, tmp_path)
    labels = pl.read_parquet(tmp_path / LABELS_FILE)
    origins = {k: set(labels.filter(pl.col("kind") == k)["origin"]) for k in ("exact_copy", "near_copy")}
    assert len(origins["exact_copy"]) == 2 and not origins["exact_copy"] & origins["near_copy"]


def test_clean_input_names_a_stage():
    from flows.clean import clean

    with pytest.raises(ConfigError, match="clean.input"):
        clean.fn("corpus", {"data": {"root": "nowhere"}, "clean": {"input": "data/plant"}})
