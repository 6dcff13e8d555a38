"""Data-quality ablations (DCLM's method at our scale): a grid of data-pipeline variants, each a set
of params overrides, trained at fixed compute with one pinned tokenizer and judged on the same
evaluation split. Two orders: cumulative (each step adds to the previous, pipeline order) and
leave-one-out (every step, then every step but one). Statistics: lmdata/ablation_stats.py; results
table and report: lmdata/ablation_report.py.

A run's identity is its content: the hash of its resolved params and of the code of the stages it
runs (the target stage and everything upstream), never the commit (`code_hash`, `Run.key`).
No Prefect; DVC only to read the stage graph. `flows/ablate.py` turns runs into `dvc exp run -S`
experiments. Overrides use dotted keys as `dvc exp run -S` takes them (`dedup.exact`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
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
ORDERS = ("cumulative", "leave-one-out")


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
    compare_to: str | None = None  # the previous grid step, a one-off's base, or `all` for a leave-one-out
    kind: str = "step"  # step | one-off | leave-one-out (this one LACKS its step: effect = compare_to − it)


@dataclass(frozen=True)
class Run:
    """One experiment: a variant at one seed, with every override it needs and its params hash."""

    variant: str
    seed: int
    overrides: dict[str, Any]
    params_hash: str
    code_hash: str = ""  # of the stage code the target runs (`code_hash`)

    @property
    def key(self) -> str:
        """The run's identity: its params and its code, not the commit it was queued from."""
        return hashlib.sha256(f"{self.params_hash}:{self.code_hash}".encode()).hexdigest()

    @property
    def exp_name(self) -> str:
        """A valid, unique DVC experiment name (the key changes whenever a param or the stage code does)."""
        name = self.variant.replace("+", "plus-")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "", "minus-" + name[1:] if name.startswith("-") else name) or "variant"
        return f"abl-{slug}-s{self.seed}-{self.key[:10]}"


@dataclass(frozen=True)
class AblationSpec:
    """An ablation: grid steps (cumulative or leave-one-out) and one-off variants, seeds, fixed compute
    and fixed overrides."""

    name: str = "data-quality"
    order: str = "cumulative"  # cumulative | leave-one-out
    target: str = "pretrain"  # the DVC stage each experiment reproduces (and everything upstream)
    seeds: int = 3
    seed_key: str = "pretrain.common.seed"
    first_seed: int = 0
    jobs: int = 2
    compute: Compute = field(default_factory=Compute)
    fixed: dict[str, Any] = field(default_factory=dict)  # applied to every run (e.g. the pinned tokenizer)
    variants: list[Variant] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "ablation spec", order: str | None = None) -> AblationSpec:
        """The spec from its YAML mapping; `order` (e.g. from the command line) replaces the spec's."""
        raw = dict(raw or {})
        known = {"name", "target", "order", "seeds", "seed_key", "first_seed", "jobs", "compute", "fixed", "grid",
                 "variants"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        comp = raw.get("compute") or {}
        bad = set(comp) - {"model", "config", "tokens", "batch_size", "block_size"}
        if bad:
            raise ConfigError(f"{where}: compute: unknown key(s) {sorted(bad)}")
        order = str(order or raw.get("order", "cumulative"))
        if order not in ORDERS:
            raise ConfigError(f"{where}: order {order!r} is not one of {list(ORDERS)}")
        grid = raw.get("grid")
        steps = [{"name": n, "set": s} for n, s in DEFAULT_GRID] if grid is None else grid
        variants = build_variants(steps, raw.get("variants") or [], where, order)
        spec = cls(name=str(raw.get("name", "data-quality")), order=order, target=str(raw.get("target", "pretrain")),
                   seeds=int(raw.get("seeds", 3)), seed_key=str(raw.get("seed_key", "pretrain.common.seed")),
                   first_seed=int(raw.get("first_seed", 0)), jobs=int(raw.get("jobs", 2)),
                   compute=Compute(**comp), fixed=dict(raw.get("fixed") or {}), variants=variants)
        if spec.seeds < 1 or spec.jobs < 1:
            raise ConfigError(f"{where}: seeds and jobs must be >= 1 (got seeds={spec.seeds}, jobs={spec.jobs})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name):
            raise ConfigError(f"{where}: name {spec.name!r} may hold only letters, digits, '_', '.', '-'")
        return spec

    @classmethod
    def load(cls, path: str | Path, order: str | None = None) -> AblationSpec:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"ablation spec not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, where=str(path), order=order)

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

    def runs(self, params: dict, code: str = "") -> list[Run]:
        """Every (variant, seed), in grid order then seed order, with its resolved params hash and
        `code` (the target's `code_hash`), which together key the run."""
        self.validate(params)
        out = []
        for v in self.variants:
            for seed in range(self.first_seed, self.first_seed + self.seeds):
                overrides = {**self.fixed, **self.compute.overrides(), **v.overrides, self.seed_key: seed}
                out.append(Run(v.name, seed, overrides, params_hash(apply_overrides(params, overrides)), code))
        return out


def build_variants(steps: list[dict], one_offs: list[dict], where: str, order: str = "cumulative") -> list[Variant]:
    """Cumulative: grid steps accumulate their overrides in order, each compared to the previous.
    Leave-one-out: `all` (every step's overrides, in order), then `-<step>` for every step after the
    first (the base): every step's overrides but that one's, compared to `all`. An enabled one-off
    adds its own overrides to its `base` variant (default: the last step, or `all`)."""
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "name" not in step:
            raise ConfigError(f"{where}: grid[{i}] needs a `name` and a `set` mapping")
    variants: list[Variant] = []
    if order == "leave-one-out":
        if len(steps) < 2:
            raise ConfigError(f"{where}: leave-one-out needs a base step and at least one step to leave out")
        variants.append(Variant("all", _accumulate(steps)))
        for k, step in enumerate(steps[1:], 1):
            name = "-" + str(step["name"]).lstrip("+")
            variants.append(Variant(name, _accumulate(steps[:k] + steps[k + 1:]), "all", "leave-one-out"))
    else:
        for k, step in enumerate(steps):
            variants.append(Variant(str(step["name"]), _accumulate(steps[:k + 1]),
                                    variants[-1].name if variants else None))
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


def _accumulate(steps: list[dict]) -> dict[str, Any]:
    acc: dict[str, Any] = {}
    for step in steps:
        acc = {**acc, **(step.get("set") or {})}
    return acc


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
# Content keys: the code a target stage runs.

def stage_code(target: str, root: str | Path = ".") -> tuple[list[str], list[str]]:
    """(code files, stage commands) of `target` and every stage upstream of it, from dvc.yaml: each
    dependency that no stage or .dvc file produces (code, configuration, a user's source files),
    directories expanded to their files (caches skipped), sorted; and `stage: cmd` lines."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        # DVC resolves a bare stage name against the working directory: name the dvc.yaml under root
        stages = repo.stage.collect(target if ":" in target else f"{root / 'dvc.yaml'}:{target}", with_deps=True)
        produced = [Path(o.fs_path) for o in repo.index.outs]
        commands = sorted(f"{s.addressing}: {s.cmd}" for s in stages)
        # params files are not code: the resolved params are hashed on their own (params_hash)
        deps = {Path(d.fs_path) for s in stages for d in s.deps if not isinstance(d, ParamsDependency)}

    def produced_by_a_stage(path: Path) -> bool:
        return any(path == out or out in path.parents for out in produced)

    files = set()
    for dep in deps:
        if produced_by_a_stage(dep):
            continue
        if dep.is_dir():
            for folder, dirs, names in os.walk(dep):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                files.update(Path(folder) / n for n in names if not n.endswith((".pyc", ".pyo")))
        else:
            files.add(dep)  # a missing file hashes as missing: the stage would fail anyway
    return sorted(str(f.relative_to(root)) for f in files if not produced_by_a_stage(f)), commands


def code_hash(target: str, root: str | Path = ".") -> str:
    """sha256 over the target's stage commands and the path and bytes of every code file it runs: an
    unrelated change (docs, another stage's code, a commit) leaves it unchanged."""
    root = Path(root)
    files, commands = stage_code(target, root)
    h = hashlib.sha256("\n".join(commands).encode())
    for rel in files:
        path = root / rel
        h.update(f"\0{rel}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"<missing>")
    return h.hexdigest()
