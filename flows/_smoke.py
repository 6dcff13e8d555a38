"""`lmforge run --profile FILE --smoke`: a profile's whole DAG on CPU at a shrunk size, in a scratch copy.

The smoke run checks a profile (e.g. profiles/gpu.yaml) before anyone pays for GPU hours: the same
stages and code paths, the profile's tokenizer vocabulary and dtype, but sources capped at a few MB,
every pretrained model shrunk to 2 layers x 64, a few steps per training stage, on the CPU. It runs
`dvc repro` in a temporary folder holding the code, dvc.yaml, the smoke params and the capped raw data,
so the user's outputs and dvc.lock are never touched.

Decisions (README "GPU profile"): bf16 is kept where the profile asks for it and this CPU runs bf16
autocast natively (AVX-512 BF16 / AMX), float32 otherwise; torch.compile is off (its first step costs
~30 s per stage on a CPU, minutes over the DAG); the tokenizer keeps the profile's vocab_size, trained
on at most `tokenizer_mb` of text (a small input may learn fewer merges than the vocabulary allows).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flows._errors import UsageError

SMOKE_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.0}
SMOKE_BLOCK = 128
SMOKE_STEPS = 3
CODE = ("lmdata", "lmtrain", "flows", "init")  # init/none: the placeholder init_from path dvc.yaml tracks
TRAINING = ("sft", "reward", "judge", "ppo", "rloo", "dpo", "align_eval", "align_curve", "evaluate")


def deep_merge(base: dict, over: dict) -> dict:
    """`base` with `over` merged in, mappings recursively (what `dvc exp run -S` does per leaf)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 autocast natively (else it is emulated and slower than float32)."""
    import torch

    probe = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return bool(native) or "AMX" in probe


def smoke_dtype(dtype: str | None, bf16_ok: bool) -> str:
    """The profile's dtype on the CPU: bfloat16 kept where the CPU supports it; auto means CUDA's bf16."""
    wanted = {"auto": "bfloat16", None: "float32"}.get(dtype, dtype)
    return "bfloat16" if wanted == "bfloat16" and bf16_ok else "float32"


def smoke_params(params: dict, profile: dict, bf16_ok: bool, steps: int = SMOKE_STEPS,
                 tokenizer_mb: float = 1.0) -> dict:
    """params.yaml with the profile merged over it, then shrunk for a CPU smoke run (a pure function)."""
    p = deep_merge(params, profile)
    p.setdefault("data", {})["shard_max_mb"] = 0.5  # a few shards, so the per-shard paths run
    for dataset in ("instructions", "comparisons"):  # a couple of derived passages per work
        for src in p.get("ingest", {}).get(dataset, {}).get("sources", []):
            if str(src.get("type", "")).startswith("shakespeare_"):
                src["options"] = {**src.get("options", {}), "per_work": 2, "eval_per_work": 2}
    quality = p.get("filter", {}).get("quality")
    if quality:  # a few MB cannot give the classifier its production minimums; train it anyway
        quality.update(min_chunks_per_class=min(quality.get("min_chunks_per_class", 20), 20),
                       min_holdout_accuracy=0.0)
    p.setdefault("tokenizer", {})["max_train_mb"] = tokenizer_mb  # vocab_size kept as the profile says

    pre = p.setdefault("pretrain", {})
    common = pre.setdefault("common", {})
    dtype = smoke_dtype(common.get("dtype"), bf16_ok)
    common.update(device="cpu", dtype=dtype, threads=1, batch_size=2, eval_batch_size=2,
                  block_size=min(common.get("block_size", SMOKE_BLOCK), SMOKE_BLOCK),
                  eval_interval=steps, eval_batches=1, mc_items=8, warmup_steps=1, resume=False)
    pre["sample_tokens"] = 8
    for model in pre.get("models", ["bigram", "mlp", "gpt"]):
        section = pre.setdefault(model, {}) or {}
        pre[model] = section
        section.update(max_steps=steps, warmup_steps=1, eval_interval=steps)
        section.pop("batch_size", None)
        section.pop("block_size", None)
        if "tokens_per_step" in section:  # one micro-batch per step: no gradient accumulation
            section["tokens_per_step"] = common["batch_size"] * common["block_size"]
        if "compile" in section or model == "gpt":
            section["compile"] = False
        if model == "gpt":
            section["config"] = {**SMOKE_GPT, "block_size": common["block_size"]}
    small = {"sft": dict(epochs=1, max_response_tokens=16, samples=1, sample_max_new_tokens=8),
             "reward": dict(epochs=1, max_response_tokens=16),
             "judge": dict(epochs=1, max_response_tokens=16),
             "dpo": dict(epochs=1, max_response_tokens=16),
             "ppo": dict(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, minibatch_size=4,
                         ppo_epochs=1, checkpoint_every=1),
             "rloo": dict(steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, minibatch_size=4,
                          update_epochs=1, checkpoint_every=1),
             "align_curve": dict(prompts=4, samples_per_prompt=1, max_new_tokens=8),
             "align_eval": dict(prompts=4, samples_per_prompt=1, max_new_tokens=8, markdown_prompts=1),
             "evaluate": dict(derived={"items": 8, "context_words": 48, "continuation_words": 8, "choices": 4},
                              batch_size=4)}
    for name in TRAINING:
        section = p.setdefault(name, {}) or {}
        p[name] = section
        section.update(device="cpu", dtype=smoke_dtype(section.get("dtype"), bf16_ok), threads=1, **small[name])
    return p


def _order(path: Path, root: Path) -> str:
    """A deterministic order that spreads a capped sample over every sub-folder (not the first few)."""
    return hashlib.sha1(str(path.relative_to(root)).encode()).hexdigest()


def copy_capped(src: Path, dst: Path, cap_bytes: int) -> int:
    """Copy `src` (a file or folder) to `dst`, at most `cap_bytes`: whole files in a hashed order that
    spreads over sub-folders; a lone file over the cap is cut at a line boundary. Returns bytes copied."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.stat().st_size <= cap_bytes:
            shutil.copy2(src, dst)
            return src.stat().st_size
        with src.open("rb") as f:
            head = f.read(cap_bytes)
        head = head[: head.rfind(b"\n") + 1] or head
        dst.write_bytes(head)
        return len(head)
    files = sorted((f for f in src.rglob("*") if f.is_file()), key=lambda f: _order(f, src))
    total = 0
    for f in files:
        size = f.stat().st_size
        if total + size > cap_bytes:
            continue
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        total += size
    dst.mkdir(parents=True, exist_ok=True)
    return total


def stage_raw(raw: Path, dst: Path, cap_mb: float) -> dict[str, int]:
    """The raw folder capped per top-level entry (`models/`, the language-ID model, copied whole)."""
    copied = {}
    for entry in sorted(raw.iterdir()):
        cap = 1 << 40 if entry.name == "models" else int(cap_mb * 1e6)
        copied[entry.name] = copy_capped(entry, dst / entry.name, cap)
    return copied


@dataclass
class SmokeResult:
    scratch: Path
    returncode: int
    stages: dict[str, str] = field(default_factory=dict)  # stage -> ok | failed | skipped | not run
    raw_bytes: dict[str, int] = field(default_factory=dict)


def stage_states(listed: list[str], output: str, returncode: int) -> dict[str, str]:
    """Each stage's outcome from `dvc repro`'s output: the stage running when it failed is `failed`."""
    ran = re.findall(r"^Running stage '([^']+)'", output, flags=re.M)
    skipped = set(re.findall(r"^Stage '([^']+)' didn't change", output, flags=re.M))
    states = {}
    for name in listed:
        if name in ran:
            states[name] = "failed" if returncode != 0 and name == ran[-1] else "ok"
        elif name in skipped:
            states[name] = "skipped (up to date)"
        else:
            states[name] = "not run"
    return states


def input_paths(params: dict) -> list[str]:
    """The relative paths of models and task files the user brings (every `init_from`, `evaluate.models`
    and `evaluate.tasks` path), which the scratch copy needs beside the code. Paths under `models/` are
    the DAG's own outputs (an init is copied out of there first: README "Start from a model you already
    have"), absolute ones are read where they are."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "init_from" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(params)
    evaluate = params.get("evaluate") or {}
    found += [e["path"] for key in ("models", "tasks") for e in evaluate.get(key) or []
              if isinstance(e, dict) and isinstance(e.get("path"), str)]
    return sorted({p for p in found if p and not Path(p).is_absolute() and Path(p).parts[0] != "models"})


def prepare_scratch(workspace: Path, profile: Path, raw: Path, scratch: Path, cap_mb: float,
                    bf16_ok: bool) -> dict[str, int]:
    """The scratch copy: code, dvc.yaml, smoke params, capped raw data, the models and task files the
    params name (`input_paths`); a git + DVC repo with `fetch` recorded as done (its download is replaced
    by the capped copy of the raw data)."""
    for name in CODE:
        shutil.copytree(workspace / name, scratch / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(workspace / "dvc.yaml", scratch / "dvc.yaml")
    params = yaml.safe_load((workspace / "params.yaml").read_text()) or {}
    smoke = smoke_params(params, yaml.safe_load(profile.read_text()) or {}, bf16_ok)
    (scratch / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    for rel in input_paths(smoke):
        src, dst = workspace / rel, scratch / rel
        if dst.exists():
            continue  # init/none: part of the code
        if not src.exists():
            raise UsageError(f"{rel}: named in the params (an init_from or an evaluate entry) but not in "
                             f"{workspace}; put the model or file there first (see the profile's header)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    root = scratch / smoke.get("data", {}).get("root", "data")
    copied = stage_raw(raw, root / "raw", cap_mb)
    (scratch / "metrics").mkdir(exist_ok=True)  # what the fetch stage would have written
    (scratch / "metrics" / "fetch.json").write_text(json.dumps({k: {"bytes": v} for k, v in copied.items()}))
    return copied


def run_smoke(profile: Path, workspace: Path, raw: Path | None = None, cap_mb: float = 2.0,
              scratch: Path | None = None, env: dict | None = None) -> SmokeResult:
    """Build the scratch copy and `dvc repro` it; the caller prints the result and removes the copy."""
    params = yaml.safe_load((workspace / "params.yaml").read_text()) or {}
    raw = raw or workspace / params.get("data", {}).get("root", "data") / "raw"
    if not raw.is_dir():
        raise UsageError(f"no raw data at {raw}: run `lmforge run fetch` once (it downloads the sample) "
                                "or pass --raw DIR")
    if scratch is None and os.environ.get("LMFORGE_SMOKE_SCRATCH"):  # a chosen place (tests); must not exist
        scratch = Path(os.environ["LMFORGE_SMOKE_SCRATCH"])
        scratch.mkdir(parents=True)
    scratch = scratch or Path(tempfile.mkdtemp(prefix="lmforge-smoke-"))
    copied = prepare_scratch(workspace, profile, raw, scratch, cap_mb, cpu_supports_bf16())
    exe = Path(sys.executable).parent / "dvc"
    dvc = str(exe) if exe.exists() else "dvc"
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                [dvc, "commit", "-f", "-q", "fetch"]):
        subprocess.run(cmd, cwd=scratch, env=env, check=True, capture_output=True, text=True)
    log = (scratch / "smoke.log").open("w")
    proc = subprocess.Popen([dvc, "repro"], cwd=scratch, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # progress live
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log.write(line)
        log.flush()
        if line.startswith(("Running stage", "ERROR")):
            print(f"lmforge smoke: {line.rstrip()}", flush=True)
    rc = proc.wait()
    log.close()
    listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=scratch, env=env, capture_output=True,
                            text=True, check=True).stdout.split()
    states = stage_states(listed, "".join(lines), rc)
    if states.get("fetch", "").startswith("skipped"):
        states["fetch"] = f"replaced by a capped copy of {raw}"
    return SmokeResult(scratch, rc, states, copied)


def report(result: SmokeResult, keep: bool) -> str:
    """What ran, per stage, and where the scratch copy is."""
    width = max(map(len, result.stages), default=0)
    lines = ["lmforge smoke: per stage"] + [f"  {name:<{width}}  {state}" for name, state in result.stages.items()]
    raw = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in result.raw_bytes.items())
    lines.append(f"lmforge smoke: raw data capped to {raw}")
    failed = [n for n, s in result.stages.items() if s == "failed"]
    if result.returncode != 0:
        lines.append(f"lmforge smoke: FAILED{' at ' + failed[0] if failed else ''}; scratch copy kept for "
                     f"inspection at {result.scratch} (log: {result.scratch / 'smoke.log'})")
    elif keep:
        lines.append(f"lmforge smoke: passed; scratch copy kept at {result.scratch}")
    else:
        lines.append(f"lmforge smoke: passed; scratch copy {result.scratch} removed (--keep keeps it)")
    return "\n".join(lines)


def smoke_main(profile: str, keep: bool = False, raw: str | None = None, workspace: Path | None = None) -> int:
    """Run the smoke DAG (inside the caller's shared Prefect server), print the report, tidy up."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = run_smoke(Path(profile), (workspace or Path.cwd()).resolve(), Path(raw) if raw else None, env=env)
    print(report(result, keep), flush=True)
    if result.returncode == 0 and not keep:
        shutil.rmtree(result.scratch, ignore_errors=True)
    return result.returncode
