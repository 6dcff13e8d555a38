"""Data-quality ablation: every variant of the spec × seeds as a DVC experiment (`dvc exp run --queue
-S …`, then `dvc queue start`), at fixed compute with one pinned tokenizer; then a DuckDB table, a
markdown report with each step's effect, 95% intervals, p-values and verdicts, and PNG plots in
`reports/<spec name>/`, also as Prefect artifacts.

    python -m flows.ablate [--spec ablations.yaml] [--order leave-one-out] [--seeds 3] [--jobs 2]

Finished runs are not recomputed: a run is keyed by its params and the code of the stages it runs,
not by the commit, so an experiment of the same name (variant, seed, key) on any base commit is
collected as it is; DVC's run-cache restores the stages variants share. `dvc exp show` lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows._artifacts import publish_image
from flows._stage import load_params
from lmdata.ablation import ORDERS, AblationSpec, Run, Variant, code_hash, set_args
from lmdata.ablation_report import (
    effects_plot_spec,
    orders_plot_spec,
    plot_spec,
    read_results,
    render_orders,
    render_png,
    render_report,
    result_row,
    write_results,
)

METRIC_FILES = ("metrics/pretrain.json", "metrics/pretokenize.json", "metrics/tokenizer.json",
                "metrics/filter/corpus.json", "metrics/dedup/corpus.json", "metrics/balance/corpus.json")
ACTIVE = ("Queued", "Running")
DEFAULT_IDENTITY = {"GIT_AUTHOR_NAME": "lmforge ablate", "GIT_AUTHOR_EMAIL": "lmforge-ablate@localhost"}


def ablation_env() -> dict:
    """Environment for git and DVC: venv first on PATH, offline, and a git identity from the
    environment (GIT_AUTHOR_*/GIT_COMMITTER_*; a neutral default when neither they nor git config
    give one), so the user's git config is never changed."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DVC_NO_UPDATER", "1")
    for role in ("AUTHOR", "COMMITTER"):
        for what, cfg_key in (("NAME", "user.name"), ("EMAIL", "user.email")):
            key = f"GIT_{role}_{what}"
            if env.get(key):
                continue
            configured = subprocess.run(["git", "config", cfg_key], capture_output=True, text=True, env=env)
            env[key] = (configured.stdout.strip() or env.get(f"GIT_AUTHOR_{what}")
                        or DEFAULT_IDENTITY[f"GIT_AUTHOR_{what}"])
    return env


def sh(*cmd: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc_exe() -> str:
    exe = Path(sys.executable).parent / "dvc"
    return str(exe) if exe.exists() else "dvc"


def ensure_repo(env: dict, extra: tuple[str, ...] = ()) -> str:
    """The base commit experiments start from. DVC needs a git repo with at least one commit: in a
    fresh repo, commit the pipeline (never anything else) with the identity from `env`."""
    if sh("git", "rev-parse", "--is-inside-work-tree", env=env, check=False).returncode != 0:
        raise RuntimeError(f"{Path.cwd()} is not a git repository: `git init && dvc init` first")
    if not Path(".dvc").is_dir():
        raise RuntimeError(f"{Path.cwd()} is not a DVC repository: `dvc init` first")
    head = sh("git", "rev-parse", "--verify", "-q", "HEAD", env=env, check=False)
    if head.returncode != 0:
        paths = [p for p in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
                             ".gitignore", "data/.gitignore", "metrics", "flows", "lmdata", "lmtrain", "init", *extra)
                 if Path(p).exists()]
        sh("git", "add", "--", *paths, env=env)
        sh("git", "commit", "-q", "-m", "lmforge ablate: base commit for DVC experiments", "--", *paths, env=env)
        head = sh("git", "rev-parse", "HEAD", env=env)
    return head.stdout.strip()


def experiment_refs(env: dict) -> dict[str, str]:
    """{experiment name: commit} of the experiments on any base commit (names carry the run's content
    key, so an experiment queued before an unrelated commit is still found)."""
    out = sh("git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps", env=env).stdout
    found = {}
    for ref, sha in (line.split() for line in out.splitlines()):
        parts = ref.split("/")  # refs/exps/<2 hex>/<38 hex>/<name>
        if len(parts) == 5 and len(parts[2]) == 2 and len(parts[3]) == 38:
            found[parts[4]] = sha
    return found


def run_experiments(runs: list[Run], existing: dict[str, str]) -> dict[str, str]:
    """{run's experiment name: commit} of the runs that have an experiment: under its own name, or under
    another name with the same content key (names end in the key's first 10 hex digits), e.g. the
    cumulative `+quality` run is leave-one-out's `all`: same params, same code, one experiment."""
    by_key = {name.rsplit("-", 1)[-1]: sha for name, sha in sorted(existing.items()) if name.startswith("abl-")}
    found = {}
    for r in runs:
        sha = existing.get(r.exp_name) or by_key.get(r.key[:10])
        if sha:
            found[r.exp_name] = sha
    return found


def report_dir(reports: str, spec: AblationSpec, order: str | None = None) -> Path:
    order = order or spec.order
    return Path(reports) / (spec.name if order == "cumulative" else f"{spec.name}-{order}")


def orders_section(spec: AblationSpec, spec_path: str, rows: list[dict], reports: str, out_dir: Path) -> str:
    """When the other order has results too (`reports/<name>[-leave-one-out]/results.duckdb`): both
    orders side by side (markdown) and `orders.png`; an empty string otherwise."""
    other = next(o for o in ORDERS if o != spec.order)
    other_rows = read_results(report_dir(reports, spec, other) / "results.duckdb")
    if not rows or not other_rows:
        return ""
    pairs = sorted([(spec, rows), (AblationSpec.load(spec_path, order=other), other_rows)],
                   key=lambda p: ORDERS.index(p[0].order))
    render_png(orders_plot_spec(spec.name, pairs), out_dir / "orders.png")
    publish_image(f"ablate-{spec.name}-orders".lower().replace("_", "-"), out_dir / "orders.png",
                  f"{spec.name}: both orders", f"ablation {spec.name}: each step's Δ bpb, cumulative and leave-one-out")
    return "\n" + render_orders(pairs) + "\n![both orders](orders.png)\n"


def queue_status(env: dict) -> dict[str, str]:
    """{experiment name: status} from `dvc queue status`. A name can be listed twice (an earlier run on
    another base commit): it counts as active while any of its rows is queued or running."""
    out = sh(dvc_exe(), "queue", "status", env=env).stdout
    status: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in (*ACTIVE, "Success", "Failed"):
            if status.get(parts[1]) not in ACTIVE:
                status[parts[1]] = parts[-1]
    return status


def upstream_stages(stages: dict, target: str | None) -> set[str]:
    """`target` and every locked stage it depends on, through dvc.lock's deps and outs paths (a dep
    inside an out folder, or an out inside a dep folder, links them); all stages when the target is not
    in the lock."""
    if not target or target not in stages:
        return set(stages)
    outs = {name: [o["path"] for o in st.get("outs") or []] for name, st in stages.items()}

    def produces(path: str, out: str) -> bool:
        return path == out or path.startswith(out + "/") or out.startswith(path + "/")

    seen, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for dep in stages[name].get("deps") or []:
            todo += [m for m, paths in outs.items() if m not in seen and any(produces(dep["path"], o) for o in paths)]
    return seen


def lock_outputs_cached(lock_path: Path, cache_dir: Path, target: str | None = None) -> list[str]:
    """The outputs of `target` and its upstream stages (all stages without a target) that the base
    commit's dvc.lock names and the local DVC cache lacks ([] = all there, or no lock). Unforced
    experiments need them: DVC loads a skipped stage's outputs from the cache, and a missing one fails
    the run ("failed to load directory"), as in a clone that never ran the pipeline. Stages the target
    does not need (e.g. `dedup@instructions` for `pretrain`) are not counted."""
    import yaml

    if not lock_path.exists():
        return []
    missing = []
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages") or {}
    needed = upstream_stages(stages, target)
    for name, stage in stages.items():
        if name not in needed:
            continue
        for out in stage.get("outs") or []:
            md5 = out.get("md5")
            if md5 and not (cache_dir / "files" / "md5" / md5[:2] / md5[2:]).exists():
                missing.append(f"{name}: {out.get('path')}")
    return missing


@task(name="queue-experiment", cache_policy=NO_CACHE)
def queue_run(run: Run, target: str, env: dict, force: bool = False) -> None:
    """Queue one experiment, without `--force` unless asked: forced, DVC reruns every stage and skips
    its run-cache, so each run recomputes fetch, ingest, plant, … (measured: 7 of 15 min per pair of
    runs under load); unforced, a stage an earlier run ran with the same command, deps and params is
    restored from the cache."""
    sh(dvc_exe(), "exp", "run", "--queue", *(["--force"] if force else []), "-n", run.exp_name,
       *set_args(run.overrides), target, env=env)


@task(name="run-queue", cache_policy=NO_CACHE)
def run_queue(names: list[str], jobs: int, env: dict, poll_s: float = 5.0) -> None:
    """Start `jobs` queue workers and wait until none of `names` is queued or running."""
    progress = create_progress_artifact(progress=0.0, key="ablate-progress", description="ablation experiments")
    sh(dvc_exe(), "queue", "start", "-j", str(jobs), env=env)
    while True:
        status = {n: s for n, s in queue_status(env).items() if n in names}
        done = sum(s not in ACTIVE for s in status.values())
        update_progress_artifact(progress, progress=100.0 * done / max(1, len(names)))
        if all(s not in ACTIVE for s in status.values()):
            return
        time.sleep(poll_s)


@task(name="collect-experiment", cache_policy=NO_CACHE)
def collect_run(run: Run, variant: Variant, model: str, base_rev: str, exp_rev: str, env: dict) -> dict:
    """Read the experiment's metrics files from its commit (they are git-tracked: `cache: false`)."""
    metrics = {}
    for path in METRIC_FILES:
        shown = sh("git", "show", f"{exp_rev}:{path}", env=env, check=False)
        if shown.returncode == 0:
            metrics[path] = json.loads(shown.stdout)
    return result_row(run, variant, metrics, model=model, blocks=eval_blocks(exp_rev, model, run.exp_name),
                      base_rev=base_rev, exp_rev=exp_rev)


def eval_blocks(exp_rev: str, model: str, name: str) -> dict | None:
    """The run's per-block evaluation losses: models/pretrain/<model>/eval_blocks.json is a DVC output,
    read from the shared cache at the experiment's commit (None, said, when the run has none)."""
    import dvc.api

    path = f"models/pretrain/{model}/eval_blocks.json"
    try:
        return json.loads(dvc.api.read(path, repo=".", rev=exp_rev))
    except Exception as e:  # an experiment from before per-block losses: the t-test still runs
        print(f"ablate: {name}: no {path} ({type(e).__name__}: {e}); no block bootstrap for this run")
        return None


NOISE_DATA = ("plant", "clean/corpus", "dedup/corpus", "filter/corpus", "balance/corpus")


@task(name="noise-recall", cache_policy=NO_CACHE)
def noise_recall(exp_rev: str, data_root: str, out: Path) -> dict:
    """Per-step recall/precision on the planted noise (lmdata.plant_recall), from one experiment's
    data stage outputs, read from the DVC cache at its commit into a scratch folder."""
    import tempfile

    from dvc.api import DVCFileSystem

    from lmdata.plant_recall import plant_report

    fs = DVCFileSystem(".", rev=exp_rev)
    with tempfile.TemporaryDirectory(prefix="ablate-noise-") as tmp:
        for sub in NOISE_DATA:
            fs.get(f"{data_root}/{sub}", str(Path(tmp) / sub), recursive=True)
        return plant_report(Path(tmp), out)


def noise_section(spec: AblationSpec, runs: list[Run], params: dict, existing: dict[str, str], out_dir: Path) -> str:
    """With planted noise (`plant.enabled` in the runs): the planted-noise table and each step's recall
    and precision, measured before any training on the data of the run with every step on (its first
    seed); an empty string otherwise."""
    from lmdata.ablation import apply_overrides
    from lmdata.plant_recall import markdown

    full = "all" if spec.order == "leave-one-out" else [v for v in spec.variants if v.kind == "step"][-1].name
    run = next((r for r in runs if r.variant == full and r.exp_name in existing), None)
    if run is None or not apply_overrides(params, run.overrides).get("plant", {}).get("enabled"):
        return ""
    root = str(apply_overrides(params, run.overrides).get("data", {}).get("root", "data"))
    try:
        result = noise_recall.with_options(task_run_name=f"noise-recall-{run.exp_name}")(
            existing[run.exp_name], root, out_dir / "noise")
    except Exception as e:  # the effects above stand without it: say why it is missing
        return f"\n## Planted noise: recall and precision\n\nNot measured: {type(e).__name__}: {e}\n"
    publish_image(f"ablate-{spec.name}-recall".lower().replace("_", "-"), out_dir / "noise" / "recall.png",
                  f"{spec.name}: recall and precision", f"ablation {spec.name}: per-step recall on planted noise")
    planted = sh("git", "show", f"{existing[run.exp_name]}:metrics/plant.json", env=ablation_env(), check=False)
    table = ""
    if planted.returncode == 0:
        from flows.plant import report_markdown

        table = report_markdown(json.loads(planted.stdout)).replace("# plant / corpus\n\n", "What was planted: ") + "\n\n"
    return (f"\n## Planted noise: recall and precision (variant `{full}`, seed {run.seed}, before training)\n\n"
            f"{table}{markdown(result)}\n\n![recall per step and kind](noise/recall.png)\n")


def failure_log(name: str, env: dict) -> str:
    logs = sh(dvc_exe(), "queue", "logs", name, env=env, check=False)
    return (logs.stdout + logs.stderr)[-1500:]


@flow(name="ablate", log_prints=True)
def ablate(spec_path: str = "ablations.yaml", seeds: int | None = None, jobs: int | None = None,
           params_path: str = "params.yaml", reports: str = "reports", order: str | None = None,
           report_only: bool = False) -> list[dict]:
    """Queue and run every missing experiment, then collect all and write the report; with
    report_only, queue nothing: report what has finished (e.g. while a grid is still running)."""
    spec = AblationSpec.load(spec_path, order=order)
    spec = spec.with_seeds(seeds) if seeds else spec
    jobs = jobs or spec.jobs
    env = ablation_env()
    base_rev = ensure_repo(env, extra=(spec_path,))
    # Seed-major order: runs side by side are different variants, and a variant's later seeds find
    # its data stages in the run-cache (the seed only changes `pretrain`).
    runs = sorted(spec.runs(load_params(params_path), code_hash(spec.target)), key=lambda r: r.seed)
    variants = {v.name: v for v in spec.variants}
    out_dir = report_dir(reports, spec)
    db = out_dir / "results.duckdb"
    cached = {r["run_key"]: r for r in read_results(db)}
    refs = experiment_refs(env)
    existing = run_experiments(runs, refs)
    shared = sum(r.exp_name in existing and r.exp_name not in refs for r in runs)
    done = [r for r in runs if r.key in cached or r.exp_name in existing]
    pending = [] if report_only else [r for r in runs if r not in done]
    print(f"ablate {spec.name} ({spec.order}): {len(runs)} runs ({len(spec.variants)} variants × {spec.seeds} seeds), "
          f"{len(done)} already done, {len(pending)} to run, {jobs} at a time; "
          f"{spec.compute.training_tokens:,} training tokens each"
          + (f"; {shared} done as another variant's experiment (same content key: same params and code)"
             if shared else ""))
    missing = []
    if pending:
        cache_dir = sh(dvc_exe(), "cache", "dir", env=env).stdout.strip()
        missing = lock_outputs_cached(Path("dvc.lock"), Path(cache_dir), spec.target)
    if missing:
        print(f"ablate: the DVC cache lacks {len(missing)} output(s) dvc.lock names (e.g. {missing[0]}): "
              "runs are queued with --force, so every stage reruns (`lmforge run` first fills the cache)")
    for r in pending:
        queue_run.with_options(task_run_name=f"queue-{r.exp_name}")(r, spec.target, env, bool(missing))
    if pending:
        run_queue([r.exp_name for r in pending], jobs, env)
        existing = run_experiments(runs, experiment_refs(env))
    rows, failed, missing = [], [], []
    for r in runs:
        if r.key in cached:
            rows.append(cached[r.key])
        elif r.exp_name in existing:
            rows.append(collect_run.with_options(task_run_name=f"collect-{r.exp_name}")(
                r, variants[r.variant], spec.compute.model, base_rev, existing[r.exp_name], env))
        else:
            (missing if report_only else failed).append(r.exp_name)
    write_results(db, rows)
    report = (render_report(spec, rows) + orders_section(spec, spec_path, rows, reports, out_dir)
              + noise_section(spec, runs, load_params(params_path), existing, out_dir))
    if failed:
        report += "\n## Failed runs\n\n" + "\n".join(f"- `{n}`" for n in failed) + "\n"
    if missing:
        report += ("\n## Not finished when this report was written (`--report-only`)\n\n"
                   + "\n".join(f"- `{n}`" for n in missing) + "\n")
    (out_dir / "report.md").write_text(report)
    png = render_png(plot_spec(spec, rows), out_dir / "bpb.png") if rows else None
    if rows:
        render_png(effects_plot_spec(spec, rows), out_dir / "effects.png")
        publish_image(f"ablate-{spec.name}-effects".lower().replace("_", "-"), out_dir / "effects.png",
                      f"{spec.name}: effects", f"ablation {spec.name}: each step's Δ bits per byte with its 95% CI")
    create_markdown_artifact(key=f"ablate-{spec.name}".lower().replace("_", "-"), markdown=report,
                             description=f"ablation {spec.name}: verdicts per step")
    create_table_artifact(key=f"ablate-{spec.name}-runs".lower().replace("_", "-"),
                          table=[{k: v for k, v in r.items() if k != "overrides"} for r in rows],
                          description=f"ablation {spec.name}: one row per experiment (variant x seed)")
    print(f"ablate {spec.name}: report {out_dir / 'report.md'}, plot {png}, table {db} (ablation_runs)")
    if failed:
        raise RuntimeError(f"{len(failed)} experiment(s) failed: {failed}; the first one's log:\n"
                           + failure_log(failed[0], env))
    return rows


def add_ablate_command(subparsers) -> None:
    """`lmforge ablate --spec ablations.yaml --seeds 3 --jobs 2` (registered by flows/cli.py)."""
    p = subparsers.add_parser("ablate", help="data-quality ablation: variants × seeds as DVC experiments → report")
    add_arguments(p)
    p.set_defaults(func=cmd_ablate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", default="ablations.yaml", help="ablation spec (YAML)")
    p.add_argument("--order", choices=ORDERS, default=None,
                   help="cumulative (pipeline order) or leave-one-out (default: the spec's `order`)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the spec's)")
    p.add_argument("--jobs", type=int, default=None, help="experiments run at once (default: the spec's)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--reports", default="reports")
    p.add_argument("--report-only", action="store_true",
                   help="queue nothing: report the experiments that have finished (e.g. while the grid runs)")


def cmd_ablate(args: argparse.Namespace) -> int:
    """Run the flow with one shared Prefect server, so every stage of every experiment reports to it."""
    from flows._server import shared_server

    log = Path(os.environ.get("PREFECT_HOME", ".prefect")) / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with shared_server(log_path=log) as url:
        print(f"lmforge ablate: Prefect API at {url}", flush=True)
        ablate(args.spec, args.seeds, args.jobs, args.params, args.reports, getattr(args, "order", None),
               getattr(args, "report_only", False))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    return cmd_ablate(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
