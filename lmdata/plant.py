"""Plant: noise of known kinds, at set rates, on a clean base — to measure what each data step removes.

The clean base is the training rows the default pipeline keeps through every quality step: the ids of
the default run's `filter` output (train split), listed one per line in the file `plant.base` (written
by `python -m flows.plant base`; ids are hashes of source, locator and text, so the list stays valid
until ingest changes, and the stage fails if too few of its ids are found). Balance is left out on
purpose: it re-weights sources, it does not judge documents.

The stage reads ingest's training rows, keeps the base (other rows are rejected as `not_in_base`;
held-out rows are left to the evaluation set, as in clean), and adds planted documents — each labelled
in `labels.parquet` beside the shards, a table no stage reads: `id, kind, origin, jaccard,
jaccard_bin, detail`. Kinds (lmdata.plant_kinds, docs/NOISE.md): exact copies (`exact_copies` of each
origin), near copies spanning Jaccard `near_jaccard` (measured with dedup's shingling), non-English
documents (ingest's `non_english_source` rows, which the base excludes, less English locales), boilerplate/spam, markup-heavy
HTML pages, code and tables, truncated fragments. Seeded per kind: same input + params → same bytes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, fields
from pathlib import Path

import polars as pl

from lmdata.atomic import atomic_file
from lmdata.errors import ConfigError
from lmdata.plant_kinds import (
    boilerplate,
    code_or_table,
    fragment,
    jaccard,
    markup_page,
    near_copy,
    vocabulary,
)
from lmdata.schema import columns_for
from lmdata.shards import REJECTED_DIR, ShardWriter, list_shards, read_shard, write_shard
from lmdata.stage import add_reason
from lmdata.text import content_hash, document_id, normalise_text

KINDS = ("exact_copy", "near_copy", "non_english", "boilerplate", "markup", "code_table", "fragment")
SYNTHETIC_SOURCE = "web"  # source of generated pages (a crawl's junk), never the curated positive source
LABEL_SCHEMA = {"id": pl.Utf8, "kind": pl.Utf8, "origin": pl.Utf8, "jaccard": pl.Float64,
                "jaccard_bin": pl.Utf8, "detail": pl.Utf8}
LABELS_FILE = "labels.parquet"


def _default_rates() -> dict[str, float]:
    return {"exact_copy": 0.2, "near_copy": 0.5, "non_english": 0.5, "boilerplate": 1.0, "markup": 0.5,
            "code_table": 0.5, "fragment": 0.5}


@dataclass
class PlantConfig:
    """The `plant` section of params.yaml. Rates are planted documents per base document."""

    enabled: bool = False
    seed: int = 0
    base: str = "lmdata/plant_base/corpus.txt"  # ids of the clean base, one per line
    rates: dict[str, float] = field(default_factory=_default_rates)
    exact_copies: int = 2                       # copies of each exact-copied origin
    near_jaccard: list[float] = field(default_factory=lambda: [0.5, 1.0])  # spread evenly over this range
    fragment_words: list[int] = field(default_factory=lambda: [5, 40])
    non_english_source: str = "django"          # ingest source whose rows are planted as non-English text
    min_base_found: float = 0.95                # fail when fewer of the base ids are in the input

    @classmethod
    def from_dict(cls, section: dict | None) -> PlantConfig:
        """Build from params.yaml `plant`; unknown keys, kinds or out-of-range values raise ConfigError."""
        section = dict(section or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"params: unknown plant setting(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**section)
        if not isinstance(cfg.enabled, bool):
            raise ConfigError(f"params: plant.enabled must be true or false, got {cfg.enabled!r}")
        if not isinstance(cfg.rates, dict) or set(cfg.rates) - set(KINDS):
            raise ConfigError(f"params: plant.rates keys must be among {list(KINDS)}, got {cfg.rates!r}")
        bad = {k: v for k, v in cfg.rates.items() if not isinstance(v, int | float) or v < 0}
        if bad:
            raise ConfigError(f"params: plant.rates must be numbers >= 0, got {bad}")
        lo, hi = _pair(cfg.near_jaccard, "near_jaccard")
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"params: plant.near_jaccard must satisfy 0 < low <= high <= 1, got {cfg.near_jaccard}")
        wlo, whi = _pair(cfg.fragment_words, "fragment_words")
        if not 1 <= wlo <= whi:
            raise ConfigError(f"params: plant.fragment_words must satisfy 1 <= low <= high, got {cfg.fragment_words}")
        if not isinstance(cfg.exact_copies, int) or cfg.exact_copies < 1:
            raise ConfigError(f"params: plant.exact_copies must be an integer >= 1, got {cfg.exact_copies!r}")
        return cfg


def _pair(value, name: str) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
        raise ConfigError(f"params: plant.{name} must be a [low, high] pair of numbers, got {value!r}")
    return value[0], value[1]


def jaccard_bin(j: float, lo: float = 0.5, width: float = 0.1) -> str:
    """The label of Jaccard `j`'s bin: `<0.5`, `0.5-0.6`, ..., `0.9-1.0` (1.0 falls in the last)."""
    if j < lo:
        return f"<{lo:g}"
    k = min(int((j - lo) / width + 1e-9), round((1 - lo) / width) - 1)
    return f"{lo + k * width:.1f}-{lo + (k + 1) * width:.1f}"


def english_locale(meta: pl.Expr) -> pl.Expr:
    """Rows whose `meta.locale` is English (Django's en, en_AU, en_GB catalogs are English text)."""
    locale = meta.str.json_path_match("$.locale").fill_null("")
    return locale.str.to_lowercase().str.contains(r"^en([_-]|$)")


def read_base_ids(path: str | Path) -> list[str]:
    """The base ids file: one id per line; blank lines and `#` comments ignored."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"plant.base: no id list at {path} (write one with `python -m flows.plant base`)")
    return [s.strip() for s in path.read_text().splitlines() if s.strip() and not s.startswith("#")]


def _planted_row(source: str, locator: str, text: str, meta: str) -> dict:
    text = normalise_text(text)
    return {"id": document_id(source, locator, text), "content_hash": content_hash(text), "source": source,
            "locator": locator, "group": locator, "split": "train", "text": text,
            "n_bytes": len(text.encode("utf-8")), "meta": meta}


def plant_documents(base: pl.DataFrame, foreign: pl.DataFrame, cfg: PlantConfig) -> tuple[list[dict], list[dict]]:
    """The planted rows and their labels. `base`: the clean base's rows; `foreign`: candidate
    non-English rows. Each kind draws from its own RNG (seed, kind), so one kind's rate leaves the
    others' documents as they were."""
    base = base.sort("id")
    docs = base.select("id", "source", "locator", "text", "meta").to_dicts()
    n_base = len(docs)
    rows: list[dict] = []
    labels: list[dict] = []

    def add(kind: str, i: int, source: str, text: str, meta: str, origin: str | None = None,
            j: float | None = None, detail: str = "") -> None:
        row = _planted_row(source, f"plant/{kind}/{i:05d}", text, meta)
        rows.append(row)
        labels.append({"id": row["id"], "kind": kind, "origin": origin, "jaccard": j,
                       "jaccard_bin": jaccard_bin(j) if j is not None else None, "detail": detail})

    def count(kind: str) -> int:
        return round(cfg.rates.get(kind, 0.0) * n_base)

    def origins(rng: random.Random, n: int, pool: list[dict] | None = None) -> list[dict]:
        pool = pool or docs
        picks: list[dict] = []
        while len(picks) < n:
            picks += rng.sample(pool, min(n - len(picks), len(pool)))
        return picks

    if n_base == 0:
        return rows, labels
    rng = random.Random(f"{cfg.seed}:exact_copy")
    n = count("exact_copy")
    exact_origins = origins(rng, -(-n // cfg.exact_copies)) if n else []
    for i in range(n):
        d = exact_origins[i // cfg.exact_copies]
        add("exact_copy", i, d["source"], d["text"], d["meta"], origin=d["id"], j=1.0,
            detail=f"copy {i % cfg.exact_copies + 1} of {cfg.exact_copies}")
    rng = random.Random(f"{cfg.seed}:near_copy")
    n = count("near_copy")
    lo, hi = cfg.near_jaccard
    # near copies never share an origin with exact copies (while the base allows): dedup names a cluster's
    # removals by its keeper, so a longer near copy would turn the exact copies' `exact_dup` into `near_dup`
    taken = {d["id"] for d in exact_origins}
    for i, d in enumerate(origins(rng, n, [d for d in docs if d["id"] not in taken])):
        target = lo + (hi - lo) * (i + 0.5) / n
        text, detail = near_copy(d["text"], target, rng)
        add("near_copy", i, d["source"], text, d["meta"], origin=d["id"], j=round(jaccard(d["text"], text), 4),
            detail=detail)
    rng = random.Random(f"{cfg.seed}:non_english")
    pool = foreign.sort("id").to_dicts()
    for d in rng.sample(pool, min(count("non_english"), len(pool))):
        rows.append(d)
        labels.append({"id": d["id"], "kind": "non_english", "origin": None, "jaccard": None,
                       "jaccard_bin": None, "detail": d["locator"]})
    for kind in ("boilerplate", "markup", "code_table", "fragment"):
        rng = random.Random(f"{cfg.seed}:{kind}")
        for i, host in enumerate(origins(rng, count(kind))):
            vocab = vocabulary(host["text"])
            if kind == "boilerplate":
                text, detail = boilerplate(rng, vocab)
            elif kind == "markup":
                text, detail = markup_page(rng, vocab, host["text"])
            elif kind == "code_table":
                text, detail = code_or_table(rng, vocab)
            else:
                text, detail = fragment(host["text"], rng, tuple(cfg.fragment_words))
            add(kind, i, SYNTHETIC_SOURCE, text, "{}", origin=host["id"], detail=detail)
    return rows, labels


def plant_corpus(in_dir: Path, out_dir: Path, cfg: PlantConfig, max_bytes: int) -> dict:
    """The stage on ingest's corpus shards: base rows to `out_dir/<shard>`, other training rows to
    `out_dir/rejected/` (`not_in_base`), planted rows to `out_dir/plant-NNNNN.parquet`, labels to
    `out_dir/../labels.parquet`. Returns the stats (rows_in = rows_kept + rows_rejected; planted rows
    are `rows_added`)."""
    base_ids = set(read_base_ids(cfg.base))
    out_dir = Path(out_dir)
    kept_parts, foreign_parts = [], []
    stats = {"rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "eval_rows_skipped": 0}
    for path in list_shards(in_dir):
        df = read_shard(path)
        train = df.filter(pl.col("split") == "train")
        stats["eval_rows_skipped"] += df.height - train.height
        in_base = pl.col("id").is_in(list(base_ids))
        kept, rest = train.filter(in_base), train.filter(~in_base)
        stats["rows_in"] += train.height
        stats["rows_kept"] += kept.height
        stats["rows_rejected"] += rest.height
        if kept.height:
            write_shard(kept, out_dir / path.name, "corpus")
        write_shard(add_reason(rest, "not_in_base", detail=pl.lit(cfg.base)), out_dir / REJECTED_DIR / path.name,
                    "corpus", rejected=True)
        kept_parts.append(kept.select(list(columns_for("corpus"))))
        foreign_parts.append(rest.filter((pl.col("source") == cfg.non_english_source) & ~english_locale(pl.col("meta")))
                             .select(list(columns_for("corpus"))))
    found = stats["rows_kept"]
    if base_ids and found < cfg.min_base_found * len(base_ids):
        raise ConfigError(f"plant.base {cfg.base}: only {found} of its {len(base_ids)} ids are among ingest's "
                          f"training rows in {in_dir} (ingest changed?): rewrite it with `python -m flows.plant base`")
    base = pl.concat(kept_parts) if kept_parts else pl.DataFrame(schema=columns_for("corpus"))
    foreign = pl.concat(foreign_parts) if foreign_parts else pl.DataFrame(schema=columns_for("corpus"))
    rows, labels = plant_documents(base, foreign, cfg)
    writer = ShardWriter(out_dir, "plant", "corpus", max_bytes)
    for r in rows:
        writer.add(r, r["n_bytes"])
    writer.close()
    write_labels(labels, out_dir.parent / LABELS_FILE)
    by_kind: dict[str, int] = {k: 0 for k in KINDS}
    for lab in labels:
        by_kind[lab["kind"]] += 1
    bins: dict[str, int] = {}
    for lab in labels:
        if lab["kind"] == "near_copy":
            bins[lab["jaccard_bin"]] = bins.get(lab["jaccard_bin"], 0) + 1
    return {**stats, "rows_added": len(rows), "rows_out": found + len(rows), "base_ids": len(base_ids),
            "planted_by_kind": by_kind, "near_copy_bins": dict(sorted(bins.items())),
            "planted_bytes": sum(r["n_bytes"] for r in rows), "base_bytes": int(base["n_bytes"].sum()),
            "rejected_by_reason": {"not_in_base": stats["rows_rejected"]} if stats["rows_rejected"] else {}}


def write_labels(labels: list[dict], path: Path) -> Path:
    """The label side table (sorted by id), written atomically."""
    df = pl.DataFrame(labels, schema=LABEL_SCHEMA).sort("id")
    if df["id"].n_unique() != df.height:
        raise ValueError(f"{path}: planted ids are not unique")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=False)
    return path


def base_ids_from(folder: Path) -> list[str]:
    """The training ids a stage output folder keeps (its kept shards, train split), sorted."""
    ids: list[str] = []
    for path in list_shards(folder):
        ids += pl.read_parquet(path, columns=["id", "split"]).filter(pl.col("split") == "train")["id"].to_list()
    return sorted(ids)


def describe(labels_path: Path) -> str:
    """A one-line summary of a label table (kinds and counts), for logs."""
    df = pl.read_parquet(labels_path)
    return json.dumps(dict(df.group_by("kind").len().sort("kind").iter_rows()))

