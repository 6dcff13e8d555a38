"""The `lmforge` command: run the pipeline, open the UI, inspect status and lineage.

    lmforge run [STAGE ...] [--force]   dvc repro, all stages sharing one Prefect server
    lmforge ui [--port 4200]            start the Prefect server + UI on 127.0.0.1
    lmforge status                      which stages are up to date
    lmforge query "SQL"                 DuckDB over every stage's kept and rejected shards
    lmforge why ID                      every stage a document went through, and why it was dropped
    lmforge plots [--rev REV ...]       DVC's plots (loss curves, PPO scores) as PNG files, offline
    lmforge sample | evaluate | serve | chat | ablate   (see `lmforge COMMAND --help`)

Expected mistakes (a wrong path, an empty prompt) print one line and exit 2; any other error one
line and exit 1; `--debug` anywhere shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import flows  # noqa: F401  (sets offline, quiet environment defaults)
from flows._env import PROJECT_ROOT
from flows._errors import UsageError, checkpoint_spec, error_line
from flows._plots import add_plots_command
from flows._server import (
    DEFAULT_PORT,
    api_url,
    forget_server,
    port_in_use,
    record_server,
    run_in_foreground,
    shared_server,
    start_server,
    ui_url,
)
from flows._smoke import smoke_main


def _venv_env() -> dict:
    """Environment for child processes: the running interpreter's bin folder first on PATH, so
    `python -m flows.*` in dvc.yaml runs in the same venv."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def dvc(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dvc"
    return subprocess.run([str(exe) if exe.exists() else "dvc", *args], env=_venv_env(), check=check,
                          text=True, capture_output=capture)


def override_value(value) -> str:
    """A value in the Hydra override grammar `dvc exp run -S` parses: JSON scalars and lists, but a dict as
    `{key: value}` with bare keys (JSON's quoted keys are a parse error there, e.g. a list of sources)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(override_value, value)) + "]"
    return json.dumps(value)


def profile_overrides(path: str) -> list[str]:
    """`key.sub=value` for every leaf of a profile YAML (what `dvc exp run -S` takes)."""
    import yaml

    def leaves(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix[:-1]}={override_value(node)}"

    return list(leaves(yaml.safe_load(Path(path).read_text()) or {}, ""))


def cmd_run(args: argparse.Namespace) -> int:
    log = Path(os.environ["PREFECT_HOME"]) / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.profile and not Path(args.profile).is_file():
        raise UsageError(f"--profile {args.profile}: no such file; profiles live in profiles/ (e.g. profiles/gpu.yaml)")
    if args.smoke and (not args.profile or args.stages or args.force):
        raise UsageError("--smoke runs a whole profile's DAG: give --profile FILE and no stages or --force")
    with shared_server(log_path=log, keep=args.keep_server) as url:
        print(f"lmforge: Prefect UI at {ui_url(url)} (API {url})", flush=True)
        if args.smoke:
            rc = smoke_main(args.profile, keep=args.keep, raw=args.raw)
        elif args.profile:
            sets = [a for kv in profile_overrides(args.profile) for a in ("-S", kv)]
            rc = dvc("exp", "run", *sets, *args.stages, check=False).returncode
        else:
            repro = ["repro", *(["--force"] if args.force else []), *args.stages]
            rc = dvc(*repro, check=False).returncode
        if url.kept_pid is not None:
            print(f"lmforge: the Prefect UI stays up at {ui_url(url)} (server pid {url.kept_pid}; later runs "
                  f"land there; stop it with `kill -- -{url.kept_pid}`)", flush=True)
        elif url.started:
            print(f"lmforge: run finished; its Prefect server at {ui_url(url)} stops now. To keep watching, start "
                  "`lmforge ui` in another terminal before the run (runs land there), or run "
                  "`lmforge run --keep-server` (`LMFORGE_KEEP_SERVER=1 make run`)", flush=True)
        return rc


def cmd_ui(args: argparse.Namespace) -> int:
    url = api_url(args.port)
    if port_in_use(args.port):
        raise UsageError(f"port {args.port} on 127.0.0.1 is already in use (a Prefect server already running? "
                         f"open {ui_url(url)}); choose another with --port")
    print(f"lmforge: Prefect UI at {ui_url(url)}  (export PREFECT_API_URL={url}; Ctrl-C stops it)", flush=True)
    proc = start_server(args.port, inherit_output=True)
    record_server(url, proc.pid)  # `lmforge run` finds it on any port
    try:
        rc = run_in_foreground(proc)
    finally:
        forget_server(proc.pid)
    print("lmforge: Prefect server stopped", flush=True)
    return rc


def stage_status() -> dict[str, str]:
    """{stage: 'up to date' | 'changed: ...'} from `dvc status --json`."""
    out = dvc("status", "--json", capture=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or out.stdout.strip())
    changed = json.loads(out.stdout or "{}")
    listed = dvc("stage", "list", "--name-only", capture=True).stdout.split()
    result = {}
    for name in listed:
        if name in changed:
            reasons = []
            for item in changed[name]:
                if isinstance(item, dict):
                    for kind, what in item.items():
                        reasons.append(f"{kind} {', '.join(what) if isinstance(what, dict) else what}")
                else:
                    reasons.append(str(item))
            result[name] = "changed: " + "; ".join(reasons)
        else:
            result[name] = "up to date"
    for name, state in list(result.items()):  # a source's fingerprint stage changed: its ingest will rerun
        if name.startswith("sources-") and state != "up to date":
            ingest = "ingest@" + name.removeprefix("sources-").split("@")[0]
            if ingest in result:
                prior = "" if result[ingest] == "up to date" else result[ingest].removeprefix("changed: ") + "; "
                result[ingest] = f"changed: {prior}source files ({name}: {state.removeprefix('changed: ')})"
    return result


def cmd_status(args: argparse.Namespace) -> int:
    status = stage_status()
    width = max(map(len, status), default=0)
    for name, state in status.items():
        print(f"{name:<{width}}  {state}")
    return 0


def _print_rows(cur) -> None:
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    cells = [[("" if v is None else str(v))[:80] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    print(f"({len(rows)} rows)")


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from lmdata import lineage

    con = lineage.connect(Path(args.data))
    if not args.sql:
        print("views:", ", ".join(lineage.views(con)))
        return 0
    try:
        cur = con.execute(args.sql)
    except duckdb.Error as e:  # a typo in the SQL: one line, no traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"lmforge query: {first} (views: {', '.join(lineage.views(con))})", file=sys.stderr)
        return 2
    _print_rows(cur)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from lmdata import lineage

    con = lineage.connect(Path(args.data))
    lines = lineage.explain(con, args.id, Path(args.params), Path(args.params).with_name("dvc.lock"))
    if not lines:
        print(f"no document with id starting {args.id!r} under {args.data}/", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmforge", description="Raw text to a GPT through a reproducible DAG.")
    ap.add_argument("--debug", action="store_true", help="show the Python traceback of an error (anywhere on "
                    "the command line; also LMFORGE_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="dvc repro with one shared Prefect server")
    p.add_argument("stages", nargs="*", help="stages to reproduce (default: all)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--profile", help="a profile YAML (e.g. profiles/gpu.yaml) run as a DVC experiment")
    p.add_argument("--keep-server", action="store_true", default=os.environ.get("LMFORGE_KEEP_SERVER") == "1",
                   help="leave the Prefect server this run starts up afterwards, so its UI links keep working "
                        "(also LMFORGE_KEEP_SERVER=1)")
    p.add_argument("--smoke", action="store_true", help="the profile's DAG on CPU at a shrunk size in a scratch "
                   "copy (minutes; never touches this workspace's outputs or dvc.lock)")
    p.add_argument("--keep", action="store_true", help="with --smoke: keep the scratch copy after a pass")
    p.add_argument("--raw", help="with --smoke: the raw data folder to cap (default: this workspace's data/raw)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("ui", help="start the Prefect server and UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("status", help="which stages are up to date")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("query", help="SQL over all shards and rejects (DuckDB); no SQL lists the views")
    p.add_argument("sql", nargs="?")
    p.add_argument("--data", default="data")
    p.set_defaults(func=cmd_query)
    p = sub.add_parser("why", help="trace one document (id or id prefix) through the stages: rule, value, "
                       "threshold, setting")
    p.add_argument("id")
    p.add_argument("--data", default="data")
    p.add_argument("--params", default="params.yaml", help="thresholds: this file, overlaid by its dvc.lock")
    p.set_defaults(func=cmd_why)
    for register in EXTRA_COMMANDS:
        register(sub)
    return ap


def cmd_sample(args: argparse.Namespace) -> int:
    from lmtrain.inference.generate import stream_text
    from lmtrain.models.bundle import load_bundle

    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to continue, e.g. --prompt 'ROMEO:'")
    checkpoint_spec(args.checkpoint, "sample")
    model, tok = load_bundle(args.checkpoint)
    print(args.prompt, end="", flush=True)
    for piece in stream_text(model, tok, args.prompt, max_new_tokens=args.max_tokens, temperature=args.temperature,
                             top_k=args.top_k or None, top_p=args.top_p, seed=args.seed):
        print(piece, end="", flush=True)
    print()
    return 0


def add_sample_command(sub) -> None:
    p = sub.add_parser("sample", help="stream a continuation of a prompt from a checkpoint")
    p.add_argument("--checkpoint", default="models/pretrain/gpt/checkpoint")
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_sample)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """One checkpoint on one local task file, read and scored as the `evaluate` stage does (lmtrain.evaluate)."""
    from lmtrain.config import ConfigError
    from lmtrain.evaluate.scoring import score_task
    from lmtrain.evaluate.tasks import read_task, task_spec
    from lmtrain.models.init import load_pretrained

    path, fmt = (args.hellaswag, "hellaswag") if args.hellaswag else (args.task, args.format)
    option = "--hellaswag" if args.hellaswag else "--task"
    if not Path(path).is_file():
        raise UsageError(f"{option} {path}: no such file; give a local JSONL in the {fmt} shape (README \"The "
                         'evaluation suite"; HellaSwag\'s hellaswag_val.jsonl has one {"ctx", "endings", "label"} a line)')
    folder = Path(args.checkpoint)
    if not ((folder / "config.json").is_file() and not (folder / "model.json").exists()):  # a HF GPT-2 folder
        checkpoint_spec(args.checkpoint, "evaluate")
    try:
        spec = task_spec({"name": Path(path).stem.replace(" ", "_") or "task", "format": fmt, "path": path}, option)
        items = read_task(spec, args.max_items)
        model, tok = load_pretrained(args.checkpoint, setting="--checkpoint")
    except ConfigError as e:  # a bad row names file:line and field
        raise UsageError(str(e)) from e
    result = {"checkpoint": args.checkpoint, "file": path, "format": fmt,
              **score_task(model, tok, items, spec.kind, args.batch_size)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_evaluate_command(sub) -> None:
    from lmtrain.evaluate.tasks import FORMATS

    p = sub.add_parser("evaluate", help="score a checkpoint on a local task file (HellaSwag, ARC, OpenBookQA, "
                       "PIQA, LAMBADA or generic JSONL) as the evaluate stage does")
    p.add_argument("--checkpoint", default="models/pretrain/gpt/checkpoint",
                   help="an lmforge checkpoint folder or a HF GPT-2 folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--hellaswag", help="JSONL file: one {ctx, endings, label} per line (= --task FILE)")
    which.add_argument("--task", help="JSONL file in the shape --format names")
    p.add_argument("--format", default="hellaswag", choices=FORMATS, help="the --task file's shape (default hellaswag)")
    p.add_argument("--max-items", type=int, default=0, help="score only the first N items (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.set_defaults(func=cmd_evaluate)


def add_serve(sub) -> None:
    from lmtrain.inference.serve import add_serve_command

    p = add_serve_command(sub)
    serve = p.get_default("func")

    def checked_serve(args: argparse.Namespace) -> int:
        checkpoint_spec(args.checkpoint, "serve", gpt_only=True)
        return serve(args)

    p.set_defaults(func=checked_serve)


def cmd_chat(args: argparse.Namespace) -> int:
    from lmtrain.inference.chat import chat_loop

    block_size = checkpoint_spec(args.checkpoint, "chat", gpt_only=True)["block_size"]
    fits = chat_reply_tokens(block_size)
    if args.max_tokens is None:
        args.max_tokens = fits
    elif not 0 < args.max_tokens < block_size:
        raise UsageError(f"--max-tokens {args.max_tokens}: a reply must be 1 to {block_size - 1} tokens (the model's "
                         f"context is {block_size}, shared with the conversation); the default is {fits}")
    chat_loop(args.checkpoint, max_new_tokens=args.max_tokens, temperature=args.temperature, system=args.system)
    return 0


def chat_reply_tokens(block_size: int) -> int:
    """Default reply length: at most 128 tokens and half the context, so the conversation keeps the rest."""
    return max(1, min(128, block_size // 2))


def add_chat_command(sub) -> None:
    p = sub.add_parser("chat", help="a terminal conversation with a chat checkpoint (/reset, /exit)")
    p.add_argument("--checkpoint", default="models/ppo/checkpoint")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="reply length in tokens (default: min(128, half the model's context))")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", default=None)
    p.set_defaults(func=cmd_chat)


def add_ablate(sub) -> None:
    p = sub.add_parser("ablate", help="data-quality ablation grid as DVC experiments, with a report")
    p.add_argument("--spec", default="ablations.yaml")
    p.add_argument("--order", choices=("cumulative", "leave-one-out"), default=None,
                   help="cumulative (pipeline order) or leave-one-out (default: the spec's `order`)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--reports", default="reports")
    p.add_argument("--report-only", action="store_true",
                   help="queue nothing: report the experiments that have finished (e.g. while the grid runs)")

    def run(args: argparse.Namespace) -> int:
        from flows.ablate import cmd_ablate  # imports Prefect: only when the command runs

        return cmd_ablate(args)

    p.set_defaults(func=run)


def add_plant_report(sub) -> None:
    p = sub.add_parser("plant-report", help="per-step recall and precision on the planted noise (docs/NOISE.md)")
    p.add_argument("--data", default="data", help="the data root holding plant/, clean/, dedup/, filter/")
    p.add_argument("--out", default="reports/noise", help="folder for recall.md, recall.json, recall.png")

    def run(args: argparse.Namespace) -> int:
        from lmdata.plant_recall import markdown, plant_report

        print(markdown(plant_report(Path(args.data), Path(args.out))))
        return 0

    p.set_defaults(func=run)


EXTRA_COMMANDS: list = [add_sample_command, add_evaluate_command, add_serve, add_chat_command, add_ablate,
                        add_plant_report, lambda sub: add_plots_command(sub, dvc)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LMFORGE_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    os.chdir(os.environ.get("LMFORGE_ROOT", os.getcwd()))
    if not Path("dvc.yaml").exists() and (PROJECT_ROOT / "dvc.yaml").exists():
        os.chdir(PROJECT_ROOT)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lmforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every command: one line, not a traceback (--debug re-raises)
        if debug:
            raise
        print(f"lmforge {args.command}: {error_line(e)}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
