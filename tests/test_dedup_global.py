"""Dedup's global phase sharded by band range and key hash: the same decisions as the in-memory path."""

import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lmdata.decontaminate import find_overlaps
from lmdata.dedup import DedupConfig, band_column, find_duplicates, load_index, sign_shard
from lmdata.dedup_global import (
    EXACT,
    BucketSpec,
    bucket_specs,
    cluster_partitions,
    find_duplicates_sharded,
    find_overlaps_sharded,
    write_buckets,
)
from tests.test_dedup import BOILERPLATE, edit_words, frame, originals, planted


def signed(df: pl.DataFrame, config: DedupConfig, folder: Path, n_shards: int = 3):
    """Phase 1 over `n_shards` interleaved shards: (stems, fetch of candidate texts)."""
    shards = {f"in/shard-{i}.parquet": df[i::n_shards] for i in range(n_shards)}
    stems = []
    for i, (name, part) in enumerate(shards.items()):
        sign_shard(part, ["text"], config, folder / f"sig-{i}", shard=name)
        stems.append(folder / f"sig-{i}")

    def fetch(needed: dict[str, list[str]]) -> pl.DataFrame:
        return pl.concat([shards[s].filter(pl.col("id").is_in(ids)) for s, ids in needed.items()])
    return stems, fetch


def buckets(stems, config: DedupConfig, folder: Path) -> list[Path]:
    out = []
    for spec in bucket_specs(config):
        write_buckets(stems, spec, folder / f"buckets-{spec.name}.parquet")
        out.append(folder / f"buckets-{spec.name}.parquet")
    return out


def planted_with_eval_and_empty() -> pl.DataFrame:
    df, _ = planted()
    (eval_id, text), = originals(1).items()
    return pl.concat([df, frame({"eval-copy": text + BOILERPLATE}, "eval"),
                      frame({"empty-1": "", "empty-2": "", "exact-copy": df["text"][1]})])


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("band_ranges,hash_partitions", [(1, 1), (3, 2), (14, 4)])
def test_sharded_global_phase_gives_the_in_memory_decisions(tmp_path, verify, band_ranges, hash_partitions):
    df = planted_with_eval_and_empty()
    config = DedupConfig(verify=verify, band_ranges=band_ranges, hash_partitions=hash_partitions)
    stems, fetch = signed(df, config, tmp_path)
    expected, expected_stats = find_duplicates(load_index(stems, config), ["text"], config, fetch)
    decisions, stats, sizes = find_duplicates_sharded(stems, buckets(stems, config, tmp_path), ["text"], config, fetch)
    assert len(expected) >= 20 and set(expected["reason"]) == {"exact_dup", "near_dup", "eval_overlap"}
    assert decisions.equals(expected)
    assert stats == expected_stats
    # The union-find held the candidate documents only, never the unrelated ones.
    assert len(expected) < sizes["candidates"] < len(df) and sizes["largest_partition"] <= sizes["candidates"]


def sample_pieces(raw_sample: Path, n: int = 1500) -> pl.DataFrame:
    """Sample texts (Shakespeare in two editions, Milton with its byte-identical twins) cut into
    ~2 KB pieces, plus edited copies of a fifth of them."""
    rng = random.Random(0)
    docs = {}
    for path in sorted((raw_sample / "shakespeare").rglob("*.txt")):
        text = path.read_bytes().decode("latin-1").replace("\r\n", "\n")
        for k, start in enumerate(range(0, len(text), 2000)):
            docs[f"{path.parent.name}/{path.name}#{k}"] = text[start:start + 2000]
    ids = sorted(docs)[:n]
    chosen = {i: docs[i] for i in ids}
    for i in rng.sample(ids, n // 5):
        chosen[f"{i}-edit"] = edit_words(chosen[i], 0.02, rng)
    return frame(chosen)


def test_sharded_global_phase_equals_in_memory_on_the_sample(tmp_path, raw_sample):
    df = sample_pieces(raw_sample)
    config = DedupConfig(verify=True, band_ranges=4, hash_partitions=3)
    stems, fetch = signed(df, config, tmp_path, n_shards=4)
    expected, expected_stats = find_duplicates(load_index(stems, config), ["text"], config, fetch)
    decisions, stats, _ = find_duplicates_sharded(stems, buckets(stems, config, tmp_path), ["text"], config, fetch)
    assert expected_stats["rejected_by_reason"]["near_dup"] >= 250 and expected_stats["clusters"] >= 250
    assert decisions.equals(expected) and stats == expected_stats


def test_a_bucket_task_reads_only_its_own_band_range(tmp_path):
    df, _ = planted()
    config = DedupConfig(band_ranges=7, hash_partitions=2)
    stems, _ = signed(df, config, tmp_path)
    spec = BucketSpec(4, 6, 1, 2)
    full = write_buckets(stems, spec, tmp_path / "full.parquet")
    for stem in stems:  # leave only bands 4 and 5 in the band files
        bands = stem.with_name(stem.name + ".bands.parquet")
        pl.read_parquet(bands, columns=[band_column(4), band_column(5)]).write_parquet(bands)
    alone = write_buckets(stems, spec, tmp_path / "alone.parquet")
    got = pl.read_parquet(tmp_path / "alone.parquet")
    assert full["members"] == alone["members"] > 0 and got.equals(pl.read_parquet(tmp_path / "full.parquet"))
    assert set(got["band"]) <= {4, 5} and (got["key"] % 2 == 1).all()
    exact = write_buckets(stems, BucketSpec(EXACT, EXACT, 0, 1), tmp_path / "exact.parquet")
    assert exact["members"] == 0  # no exact copies planted; the exact task never opened a band file


def test_bucket_specs_cover_every_band_and_partition_once():
    config = DedupConfig(band_ranges=5, hash_partitions=3)
    specs = bucket_specs(config)
    lsh = [s for s in specs if s.first != EXACT]
    assert sorted((b, s.part) for s in lsh for b in range(s.first, s.stop)) == [
        (b, p) for b in range(14) for p in range(3)]
    assert len({(s.first, s.stop) for s in lsh}) == 5 and len(specs) == 3 + 5 * 3
    assert len(bucket_specs(DedupConfig(band_ranges=99))) == 1 + 14  # at most one range per band
    with pytest.raises(ValueError, match="band_ranges"):
        DedupConfig.from_dict({"band_ranges": 0})
    # one pair / cluster partition per LSH bucket task unless set; exact-only passes: per key partition
    assert cluster_partitions(config) == 15 and cluster_partitions(DedupConfig(near=False, hash_partitions=3)) == 3
    assert cluster_partitions(DedupConfig.from_dict({"cluster_partitions": 2, "band_ranges": 7})) == 2
    assert DedupConfig.from_dict({"cluster_partitions": None}).cluster_partitions is None
    with pytest.raises(ValueError, match="cluster_partitions"):
        DedupConfig.from_dict({"cluster_partitions": 0})


def test_sharded_decontamination_equals_in_memory(tmp_path):
    (eval_id, text), *rest = originals(4).items()
    df = pl.concat([frame({eval_id: text}, "eval"),
                    frame({"train-copy": text + BOILERPLATE, "train-edit": edit_words(text, 0.02, random.Random(2)),
                           **dict(rest)})])
    config = DedupConfig(verify=True, band_ranges=3, hash_partitions=2)
    stems, fetch = signed(df, config, tmp_path, n_shards=2)
    expected, expected_stats = find_overlaps(load_index(stems, config), ["text"], config, fetch)
    decisions, stats = find_overlaps_sharded(stems, buckets(stems, config, tmp_path), ["text"], config, fetch)
    assert set(expected["id"]) == {"train-copy", "train-edit"}
    assert decisions.equals(expected) and stats == expected_stats


def chained_mixed_and_eval() -> tuple[pl.DataFrame, list[str]]:
    """A chain of edits (each 1% of words from the previous: neighbours near, ends not), a cluster
    mixing an exact copy (other whitespace) with near copies, an evaluation document with a near
    training copy, and unrelated originals; the chain's ids."""
    rng = random.Random(3)
    (a_id, a), (b_id, b), (c_id, c), *rest = originals(10).items()
    chain = {f"chain-{k}": a for k in range(1)}
    for k in range(1, 9):
        chain[f"chain-{k}"] = edit_words(chain[f"chain-{k - 1}"], 0.01, rng)
    mixed = {b_id: b, f"{b_id}-ws": b.replace(" ", "  ").replace("\n", "\r\n"), f"{b_id}-edit": edit_words(b, 0.02, rng),
             f"{b_id}-boiler": b + BOILERPLATE}
    train = frame({**chain, **mixed, f"{c_id}-copy": edit_words(c, 0.02, rng), **dict(rest)})
    return pl.concat([train, frame({c_id: c}, "eval")]), list(chain)


@pytest.mark.parametrize("band_ranges,hash_partitions,cluster_partitions", [(1, 1, 1), (3, 2, 5), (14, 1, None)])
def test_transitive_chains_mixed_clusters_and_eval_keepers_across_partitions(tmp_path, band_ranges, hash_partitions,
                                                                             cluster_partitions):
    df, chain = chained_mixed_and_eval()
    config = DedupConfig(verify=True, band_ranges=band_ranges, hash_partitions=hash_partitions,
                         cluster_partitions=cluster_partitions)
    stems, fetch = signed(df, config, tmp_path, n_shards=4)
    expected, expected_stats = find_duplicates(load_index(stems, config), ["text"], config, fetch)
    decisions, stats, sizes = find_duplicates_sharded(stems, buckets(stems, config, tmp_path), ["text"], config, fetch)
    assert decisions.equals(expected) and stats == expected_stats
    # What the planted case holds: one cluster of the whole chain though its ends are far apart ...
    by_id = {r["id"]: r for r in decisions.iter_rows(named=True)}
    in_chain = [by_id[i] for i in chain if i in by_id]
    assert len(in_chain) == len(chain) - 1 and len({r["reason_detail"] for r in in_chain}) == 1
    assert min(r["reason_value"] for r in in_chain) < 0.6 < 0.72 < max(r["reason_value"] for r in in_chain)
    # ... exact and near copies in one cluster, and the evaluation document keeps its training copy out.
    assert {r["reason"] for r in by_id.values() if r["id"] not in chain} == {"exact_dup", "near_dup", "eval_overlap"}
    assert stats["cluster_size_histogram"] == {"2": 1, "4": 1, "9": 1}
    assert sizes["candidates"] == 2 + 4 + 9 and sizes["largest_partition"] >= 9


def test_union_find_over_pair_partitions_equals_connected_components(tmp_path):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from lmdata.dedup_global import PAIR_SCHEMA, connected_rows
    rng = np.random.default_rng(0)
    n = 5000
    a, b = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    chain = np.arange(1000, 1600)  # a long path, and a star: many hooking rounds
    a, b = np.concatenate([a, chain[:-1], np.full(300, 4321)]), np.concatenate([b, chain[1:], rng.integers(0, n, 300)])
    a, b = np.minimum(a, b) * 7, np.maximum(a, b) * 7  # global rows need not be dense
    keep = a != b
    a, b = a[keep], b[keep]
    files = []
    for q in range(3):
        sel = (a % 3) == q
        files.append(tmp_path / f"pairs{q}.parquet")
        pl.DataFrame({"a": a[sel], "b": b[sel], "exact": np.zeros(sel.sum(), bool)}, schema=PAIR_SCHEMA
                     ).write_parquet(files[-1])
    out, st = connected_rows(files, 4, tmp_path / "c")
    got = pl.concat([pl.read_parquet(f).with_columns(part=pl.lit(q)) for q, f in enumerate(out)]).sort("row")
    rows = np.unique(np.concatenate([a, b]))
    _, label = connected_components(coo_matrix((np.ones(len(a)), (np.searchsorted(rows, a), np.searchsorted(rows, b))),
                                               shape=(len(rows), len(rows))), directed=False)
    assert got["row"].to_list() == rows.tolist() and st["candidates"] == len(rows)
    smallest = pl.DataFrame({"label": label, "row": rows}).group_by("label").agg(pl.col("row").min())
    expected = dict(zip(smallest["label"], smallest["row"]))
    assert got["cluster"].to_list() == [expected[x] for x in label]  # the component's smallest row
    assert (got["part"] == got["cluster"] % 4).all() and st["clusters"] == len(expected)
