"""Data-quality ablations (DCLM's method at our scale): a grid of data-pipeline variants, each a set
of params overrides, trained at fixed compute with one pinned tokenizer and judged on the same
evaluation split; then mean ± std over seeds, paired step-vs-previous differences and a verdict.

Pure: no Prefect, no DVC. `flows/ablate.py` turns the runs into `dvc exp run -S` experiments.
Overrides use dotted keys exactly as `dvc exp run -S` takes them (`dedup.exact`, `filter.langid.enabled`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmdata.errors import ConfigError

# The cumulative default grid, in pipeline order: each step switches one more data step on.
DEFAULT_GRID: list[tuple[str, dict[str, Any]]] = [
    ("raw", {"dedup.exact": False, "dedup.near": False, "filter.heuristics.enabled": False,
             "filter.langid.enabled": False, "filter.quality.enabled": False}),
    ("+exact", {"dedup.exact": True}),
    ("+minhash", {"dedup.near": True}),
    ("+heuristics", {"filter.heuristics.enabled": True}),
    ("+langid", {"filter.langid.enabled": True}),
    ("+quality", {"filter.quality.enabled": True}),
]
# Keys an ablation may not set: they change the frozen evaluation set (the split or its curation),
# and every variant must be judged on the same bytes.
FROZEN_KEYS = {"evalset": "the evaluation set's own curation settings",
               "ingest.eval_fraction": "which groups are held out", "ingest.eval_salt": "which groups are held out",
               "ingest.eval_groups": "which groups are held out"}
METRICS = ("eval_bpb", "mc_accuracy")  # eval_bpb: lower is better; mc_accuracy: higher is better
NOISE_SIGMAS = 2.0  # a step's effect is "real" only when |mean difference| >= 2 x the std of the differences


@dataclass(frozen=True)
class Compute:
    """Fixed compute for every run: the same model trained for the same number of tokens."""

    model: str = "gpt"
    config: str | dict = "tiny"  # a named config, or the model's config fields (a smaller model for CPU grids)
    tokens: int = 2_000_000  # minimum training tokens per run
    batch_size: int = 32
    block_size: int = 128

    @property
    def max_steps(self) -> int:
        return math.ceil(self.tokens / (self.batch_size * self.block_size))

    @property
    def training_tokens(self) -> int:
        return self.max_steps * self.batch_size * self.block_size

    def overrides(self) -> dict[str, Any]:
        """Params overrides that pin the model, steps, batch and block of every run."""
        return {"pretrain.models": [self.model], "pretrain.common.config": self.config,
                "pretrain.common.batch_size": self.batch_size, "pretrain.common.block_size": self.block_size,
                f"pretrain.{self.model}.max_steps": self.max_steps}


@dataclass(frozen=True)
class Variant:
    """A named point of the grid: its full overrides (cumulative for grid steps) and what it is compared to."""

    name: str
    overrides: dict[str, Any]
    compare_to: str | None = None  # the previous grid step, or a one-off's base step
    kind: str = "step"  # step | one-off


@dataclass(frozen=True)
class Run:
    """One experiment: a variant at one seed, with every override it needs and its params hash."""

    variant: str
    seed: int
    overrides: dict[str, Any]
    params_hash: str

    @property
    def exp_name(self) -> str:
        """A valid, unique DVC experiment name (the hash changes whenever any param does)."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "", self.variant.replace("+", "plus-")) or "variant"
        return f"abl-{slug}-s{self.seed}-{self.params_hash[:8]}"


@dataclass(frozen=True)
class AblationSpec:
    """An ablation: grid steps (cumulative) and one-off variants, seeds, fixed compute and fixed overrides."""

    name: str = "data-quality"
    target: str = "pretrain"  # the DVC stage each experiment reproduces (and everything upstream)
    seeds: int = 3
    seed_key: str = "pretrain.common.seed"
    first_seed: int = 0
    jobs: int = 2
    compute: Compute = field(default_factory=Compute)
    fixed: dict[str, Any] = field(default_factory=dict)  # applied to every run (e.g. the pinned tokenizer)
    variants: list[Variant] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "ablation spec") -> AblationSpec:
        raw = dict(raw or {})
        known = {"name", "target", "seeds", "seed_key", "first_seed", "jobs", "compute", "fixed", "grid", "variants"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        comp = raw.get("compute") or {}
        bad = set(comp) - {"model", "config", "tokens", "batch_size", "block_size"}
        if bad:
            raise ConfigError(f"{where}: compute: unknown key(s) {sorted(bad)}")
        grid = raw.get("grid")
        steps = [{"name": n, "set": s} for n, s in DEFAULT_GRID] if grid is None else grid
        variants = build_variants(steps, raw.get("variants") or [], where)
        spec = cls(name=str(raw.get("name", "data-quality")), target=str(raw.get("target", "pretrain")),
                   seeds=int(raw.get("seeds", 3)), seed_key=str(raw.get("seed_key", "pretrain.common.seed")),
                   first_seed=int(raw.get("first_seed", 0)), jobs=int(raw.get("jobs", 2)),
                   compute=Compute(**comp), fixed=dict(raw.get("fixed") or {}), variants=variants)
        if spec.seeds < 1 or spec.jobs < 1:
            raise ConfigError(f"{where}: seeds and jobs must be >= 1 (got seeds={spec.seeds}, jobs={spec.jobs})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
            raise ConfigError(f"{where}: name {spec.name!r} may hold only letters, digits, '_', '.', '-'")
        return spec

    @classmethod
    def load(cls, path: str | Path) -> AblationSpec:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"ablation spec not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path))

    def with_seeds(self, seeds: int) -> AblationSpec:
        return AblationSpec(**{**self.__dict__, "seeds": seeds})

    def validate(self, params: dict) -> None:
        """Every override key must exist in params.yaml (`dvc exp run -S` cannot set a missing key),
        and none may change the frozen evaluation set (see `FROZEN_KEYS`)."""
        checks = [("fixed", self.fixed), ("compute", self.compute.overrides()), ("seed_key", {self.seed_key: 0})]
        checks += [(f"variant {v.name!r}", v.overrides) for v in self.variants]
        for what, overrides in checks:
            for key in overrides:
                frozen = next((f for f in FROZEN_KEYS if key == f or key.startswith(f + ".")), None)
                if frozen:
                    raise ConfigError(f"{what}: sets {key!r}, which changes the evaluation set every run is judged "
                                      f"on ({frozen}: {FROZEN_KEYS[frozen]}); ablations vary the training side only")
                if not has_dotted(params, key):
                    raise ConfigError(f"{what}: params key {key!r} does not exist in params.yaml "
                                      "(check the spelling; an ablation can only change existing params)")

    def runs(self, params: dict) -> list[Run]:
        """Every (variant, seed), in grid order then seed order, with its resolved params hash."""
        self.validate(params)
        out = []
        for v in self.variants:
            for seed in range(self.first_seed, self.first_seed + self.seeds):
                overrides = {**self.fixed, **self.compute.overrides(), **v.overrides, self.seed_key: seed}
                out.append(Run(v.name, seed, overrides, params_hash(apply_overrides(params, overrides))))
        return out


def build_variants(steps: list[dict], one_offs: list[dict], where: str) -> list[Variant]:
    """Grid steps accumulate their overrides in order; an enabled one-off adds its own to its `base` step."""
    variants: list[Variant] = []
    acc: dict[str, Any] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "name" not in step:
            raise ConfigError(f"{where}: grid[{i}] needs a `name` and a `set` mapping")
        acc = {**acc, **(step.get("set") or {})}
        variants.append(Variant(str(step["name"]), dict(acc), variants[-1].name if variants else None))
    by_name = {v.name: v for v in variants}
    for i, one in enumerate(one_offs):
        if not isinstance(one, dict) or "name" not in one:
            raise ConfigError(f"{where}: variants[{i}] needs a `name`, a `base` step and a `set` mapping")
        if not one.get("enabled", True):
            continue
        base = one.get("base", variants[-1].name if variants else None)
        if base not in by_name:
            raise ConfigError(f"{where}: variants[{i}] ({one['name']}): base {base!r} is not a grid step "
                              f"({sorted(by_name)})")
        variants.append(Variant(str(one["name"]), {**by_name[base].overrides, **(one.get("set") or {})},
                                base, "one-off"))
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: variant names must be unique; repeated: {dupes}")
    if not variants:
        raise ConfigError(f"{where}: no variants (an empty grid and no enabled one-offs)")
    return variants


def has_dotted(params: dict, key: str) -> bool:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def apply_overrides(params: dict, overrides: dict[str, Any]) -> dict:
    """A deep copy of params with each dotted key set (what `dvc exp run -S` does to params.yaml)."""
    out = copy.deepcopy(params)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _merged(node[leaf], value)  # Hydra merges a mapping into an existing one
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def _merged(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def params_hash(params: dict) -> str:
    """sha256 of the canonical JSON of the resolved params: equal hashes = the same experiment."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def hydra_value(value: Any) -> str:
    """A value in the override grammar `dvc exp run -S` parses (Hydra): quoted strings, [lists], {maps}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"override value {value!r} ({type(value).__name__}) cannot be passed to dvc exp run -S")


def set_args(overrides: dict[str, Any]) -> list[str]:
    """`-S key=value` arguments for `dvc exp run`, in a stable order."""
    # `++` lets a mapping value bring keys the params file does not have yet (Hydra's struct mode).
    return [arg for key in sorted(overrides)
            for arg in ("-S", f"{'++' if isinstance(overrides[key], dict) else ''}{key}={hydra_value(overrides[key])}")]


# ---------------------------------------------------------------------------------------------
# Results: one row per run, from the metrics files the experiment wrote.

RESULT_COLUMNS: dict[str, str] = {
    "variant": "VARCHAR", "kind": "VARCHAR", "compare_to": "VARCHAR", "seed": "INTEGER",
    "params_hash": "VARCHAR", "base_rev": "VARCHAR", "exp_name": "VARCHAR", "exp_rev": "VARCHAR",
    "docs_kept": "BIGINT",        # corpus documents kept by filter (the evaluation set is its own stage)
    "train_docs": "BIGINT",       # training documents tokenized (balance's repeats counted)
    "unique_tokens": "DOUBLE",    # approx. tokens of the distinct training documents entering balance
    "data_tokens": "BIGINT",      # training tokens on disk (after balance's mixture and repeats)
    "training_tokens": "BIGINT",  # tokens the model was trained on (fixed by the spec's compute)
    "eval_tokens": "BIGINT", "eval_bytes": "BIGINT", "tokenizer_hash": "VARCHAR",
    "eval_bpb": "DOUBLE", "eval_loss": "DOUBLE", "mc_accuracy": "DOUBLE", "train_seconds": "DOUBLE",
    "overrides": "VARCHAR",
}


def result_row(run: Run, variant: Variant, metrics: dict[str, dict], model: str = "gpt", **ids: str) -> dict:
    """One results row from an experiment's metrics files ({path: parsed JSON}); fails naming the file."""
    def need(path: str) -> dict:
        if path not in metrics:
            raise KeyError(f"{run.exp_name}: experiment has no {path}")
        return metrics[path]

    pre = need("metrics/pretrain.json")
    if model not in pre:
        raise KeyError(f"{run.exp_name}: metrics/pretrain.json has no model {model!r} (has {sorted(pre)})")
    m, tokens = pre[model], need("metrics/pretokenize.json")
    balance = metrics.get("metrics/balance/corpus.json", {})
    return {
        "variant": run.variant, "kind": variant.kind, "compare_to": variant.compare_to, "seed": run.seed,
        "params_hash": run.params_hash, "base_rev": ids.get("base_rev"), "exp_name": run.exp_name,
        "exp_rev": ids.get("exp_rev"), "docs_kept": need("metrics/filter/corpus.json")["rows_kept"],
        "train_docs": tokens["train"]["documents"],
        "unique_tokens": float(sum(balance.get("tokens_before", {}).values())) or None,
        "data_tokens": tokens["train"]["tokens"], "training_tokens": m.get("tokens"),
        "eval_tokens": tokens["eval"]["tokens"], "eval_bytes": tokens["eval"]["bytes"],
        "tokenizer_hash": metrics.get("metrics/tokenizer.json", {}).get("hash"),
        "eval_bpb": m["eval_bpb"], "eval_loss": m.get("eval_loss"), "mc_accuracy": m.get("mc_accuracy"),
        "train_seconds": m.get("seconds"), "overrides": json.dumps(run.overrides, sort_keys=True),
    }


def write_results(path: str | Path, rows: list[dict]) -> None:
    """(Re)write the `ablation_runs` table of a DuckDB file with these rows."""
    import duckdb

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE IF EXISTS ablation_runs")
        con.execute("CREATE TABLE ablation_runs (" + ", ".join(f"{c} {t}" for c, t in RESULT_COLUMNS.items()) + ")")
        if rows:
            con.executemany(f"INSERT INTO ablation_runs VALUES ({', '.join('?' * len(RESULT_COLUMNS))})",
                            [[r.get(c) for c in RESULT_COLUMNS] for r in rows])


def read_results(path: str | Path) -> list[dict]:
    """Rows of `ablation_runs` (empty when the file does not exist yet): the resumability cache."""
    import duckdb

    if not Path(path).exists():
        return []
    with duckdb.connect(str(path), read_only=True) as con:
        cur = con.execute("SELECT * FROM ablation_runs ORDER BY variant, seed")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------
# Statistics and the report.

def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def verdict(mean_diff: float, std: float | None, lower_is_better: bool = True) -> str:
    """helped / hurt / not distinguishable from seed noise (|mean difference| < 2 x its std)."""
    if std is None:
        return "undecided (one seed: no spread)"
    if mean_diff == 0 and std == 0:
        return "no effect (identical results: the step changed no training data here)"
    if abs(mean_diff) < NOISE_SIGMAS * std or mean_diff == 0:
        return "not distinguishable from seed noise"
    return "helped" if (mean_diff < 0) == lower_is_better else "hurt"


def by_variant(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            out.setdefault(r["variant"], {})[int(r["seed"])] = float(r[metric])
    return out


def compare(variants: list[Variant], rows: list[dict], metric: str = "eval_bpb") -> list[dict]:
    """Per variant: mean ± std over seeds, and the paired (same seed) difference to what it is compared to."""
    values = by_variant(rows, metric)
    out = []
    for v in variants:
        mine = values.get(v.name, {})
        if not mine:
            continue
        mean, std = mean_std(list(mine.values()))
        row = {"variant": v.name, "kind": v.kind, "compare_to": v.compare_to, "n": len(mine), "mean": mean,
               "std": std, "diff_mean": None, "diff_std": None, "pairs": 0, "verdict": ""}
        other = values.get(v.compare_to or "", {})
        seeds = sorted(set(mine) & set(other))
        if seeds:
            d_mean, d_std = mean_std([mine[s] - other[s] for s in seeds])
            row.update(diff_mean=d_mean, diff_std=d_std, pairs=len(seeds),
                       verdict=verdict(d_mean, d_std, lower_is_better=metric != "mc_accuracy"))
        out.append(row)
    return out


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def render_report(spec: AblationSpec, rows: list[dict]) -> str:
    """The markdown report: setup, data per variant, bpb and accuracy with spreads and verdicts."""
    c = spec.compute
    bpb, mc = compare(spec.variants, rows, "eval_bpb"), {r["variant"]: r for r in compare(spec.variants, rows,
                                                                                          "mc_accuracy")}
    lines = [f"# Ablation `{spec.name}`", "",
             f"Fixed compute: `{c.model}` (`{c.config}`), {c.max_steps} steps × batch {c.batch_size} × block "
             f"{c.block_size} = {c.training_tokens:,} training tokens per run; seeds "
             f"{spec.first_seed}..{spec.first_seed + spec.seeds - 1} (`{spec.seed_key}`). Each step is compared "
             f"to the previous one with the same seed; a difference counts only when |mean| ≥ {NOISE_SIGMAS:g} × "
             "its std over seeds. Lower bits per byte is better.", ""]
    hashes = {r["tokenizer_hash"] for r in rows if r.get("tokenizer_hash")}
    evals = {(r["eval_tokens"], r["eval_bytes"]) for r in rows}
    # The comparison is fair only if every run shares the tokenizer and the evaluation split: say so.
    tok = (f"one for the whole grid (`{next(iter(hashes))[:12]}`)" if len(hashes) == 1
           else f"**{len(hashes)} different tokenizers: runs are not comparable**")
    ev = (f"identical for every run ({next(iter(evals))[1]:,} bytes)" if len(evals) == 1
          else "**differs between runs: not comparable**")
    lines.append(f"Tokenizer: {tok}; evaluation split: {ev}.")
    lines += ["", "| variant | vs | runs | docs kept | unique tokens | train tokens on disk | eval bpb | Δ bpb (paired) "
              "| verdict (bpb) | mc accuracy | Δ mc | verdict (mc) |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for b in bpb:
        mine = [r for r in rows if r["variant"] == b["variant"]]
        docs = mean_std([float(r["docs_kept"]) for r in mine])[0]
        uniq = [r["unique_tokens"] for r in mine if r.get("unique_tokens")]
        disk = mean_std([float(r["data_tokens"]) for r in mine])[0]
        m = mc.get(b["variant"], {})
        lines.append(f"| `{b['variant']}` | {b['compare_to'] or '—'} | {b['n']} | {docs:,.0f} | "
                     f"{(sum(uniq) / len(uniq)) if uniq else 0:,.0f} | {disk:,.0f} | {_pm(b['mean'], b['std'])} | "
                     f"{_pm(b['diff_mean'], b['diff_std'])} | {b['verdict'] or '—'} | "
                     f"{_pm(m.get('mean'), m.get('std'), 3)} | {_pm(m.get('diff_mean'), m.get('diff_std'), 3)} | "
                     f"{m.get('verdict') or '—'} |")
    lines += ["", "## Verdicts", ""]
    for b in bpb:
        if b["compare_to"]:
            spread = "" if b["diff_std"] is None else f" (std {b['diff_std']:.4f}, {b['pairs']} seeds)"
            lines.append(f"- `{b['variant']}` vs `{b['compare_to']}`: bpb {b['diff_mean']:+.4f}{spread}"
                         f" — **{b['verdict']}**.")
    return "\n".join(lines) + "\n"


def plot_spec(spec: AblationSpec, rows: list[dict], metric: str = "eval_bpb") -> dict:
    """A Vega-Lite spec: mean `metric` per variant (grid order) with ± std error bars and every seed."""
    order = [v.name for v in spec.variants]
    stats = {c["variant"]: c for c in compare(spec.variants, rows, metric)}
    data = [{"variant": r["variant"], "seed": int(r["seed"]), "value": float(r[metric]),
             "mean": stats[r["variant"]]["mean"], "lo": stats[r["variant"]]["mean"] - (stats[r["variant"]]["std"] or 0),
             "hi": stats[r["variant"]]["mean"] + (stats[r["variant"]]["std"] or 0)} for r in rows if r["variant"] in stats]
    x = {"field": "variant", "type": "nominal", "sort": order, "title": None, "axis": {"labelAngle": -30}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 60 * max(3, len(order)),
            "height": 260, "title": {"text": f"{spec.name}: {metric} per variant",
                                          "subtitle": "mean ± std over seeds; small dots: one per seed"},
            "data": {"values": data}, "layer": [
                {"mark": {"type": "errorbar", "ticks": True},
                 "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative", "scale": {"zero": False, "padding": 12},
                                            "title": metric}, "y2": {"field": "hi"}}},
                {"mark": {"type": "point", "filled": True, "size": 80, "color": "black"},
                 "encoding": {"x": x, "y": {"field": "mean", "type": "quantitative"}}},
                {"mark": {"type": "circle", "opacity": 0.4, "size": 30},
                 "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"}}}]}


def render_png(vega_spec: dict, path: str | Path) -> Path:
    """Render a Vega-Lite spec to PNG offline (vl-convert bundles Vega; nothing is fetched)."""
    import vl_convert

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vl_convert.vegalite_to_png(vega_spec, scale=2))
    return path
