"""Ablation spec (both orders), report on hand-made numbers; and one 2-variant × 1-seed grid run end
to end as DVC experiments in a temporary git repo. Statistics: tests/test_ablation_stats.py."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from lmdata.ablation import (
    DEFAULT_GRID,
    AblationSpec,
    Compute,
    Run,
    apply_overrides,
    hydra_value,
    params_hash,
    set_args,
)
from lmdata.ablation_report import (
    effects_plot_spec,
    orders_plot_spec,
    plot_spec,
    read_results,
    render_orders,
    render_png,
    render_report,
    write_results,
)
from lmdata.ablation_stats import effects
from lmdata.readers import ConfigError
from tests.conftest import ROOT, copy_project, python_env

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def row(variant: str, seed: int, bpb: float, mc: float = 0.5, tok: str = "t0", **extra) -> dict:
    return {"variant": variant, "seed": seed, "eval_bpb": bpb, "mc_accuracy": mc, "tokenizer_hash": tok,
            "eval_tokens": 100, "eval_bytes": 300, "docs_kept": 10, "data_tokens": 1000, "unique_tokens": 900.0,
            **extra}


def test_default_grid_is_cumulative_in_pipeline_order():
    spec = AblationSpec.from_dict({})
    names = [v.name for v in spec.variants]
    assert names == ["raw", "+exact", "+minhash", "+heuristics", "+langid", "+quality"]
    raw, last = spec.variants[0].overrides, spec.variants[-1].overrides
    assert not any(raw.values())  # raw: dedup and every filter off
    assert all(last.values())     # +quality: everything on
    for prev, step in zip(spec.variants, spec.variants[1:]):
        changed = {k for k in step.overrides if step.overrides[k] != prev.overrides.get(k)}
        assert changed == set(dict(DEFAULT_GRID)[step.name]) and step.compare_to == prev.name


def test_every_default_override_key_exists_in_params():
    spec = AblationSpec.load(ROOT / "ablations.yaml")
    spec.validate(PARAMS)
    with_one_offs = yaml.safe_load((ROOT / "ablations.yaml").read_text())
    for v in with_one_offs["variants"]:
        v["enabled"] = True
    AblationSpec.from_dict(with_one_offs).validate(PARAMS)


def test_unknown_param_key_fails_naming_variant_and_key():
    spec = AblationSpec.from_dict({"grid": [{"name": "raw", "set": {"dedup.exakt": False}}]})
    with pytest.raises(ConfigError, match=r"variant 'raw'.*dedup\.exakt"):
        spec.validate(PARAMS)


def test_one_off_builds_on_its_base_and_disabled_ones_are_skipped():
    spec = AblationSpec.from_dict({"variants": [
        {"name": "augment", "base": "+exact", "set": {"augment.enabled": True}},
        {"name": "off", "enabled": False, "set": {"augment.enabled": True}}]})
    one = spec.variants[-1]
    assert [v.name for v in spec.variants][-2:] == ["+quality", "augment"]
    assert one.kind == "one-off" and one.compare_to == "+exact"
    assert one.overrides["dedup.exact"] is True and one.overrides["dedup.near"] is False
    with pytest.raises(ConfigError, match="base 'nope'"):
        AblationSpec.from_dict({"variants": [{"name": "x", "base": "nope", "set": {}}]})


def test_fixed_compute_same_for_every_run_and_at_least_the_tokens_asked():
    spec = AblationSpec.load(ROOT / "ablations.yaml")
    c = spec.compute
    assert c.training_tokens >= 2_000_000 > c.training_tokens - c.batch_size * c.block_size
    runs = spec.runs(PARAMS)
    assert len(runs) == len(spec.variants) * spec.seeds
    for r in runs:
        p = apply_overrides(PARAMS, r.overrides)
        assert p["pretrain"]["models"] == ["gpt"] and p["pretrain"]["gpt"]["max_steps"] == c.max_steps
        assert p["tokenizer"]["input"] == "data/ingest/corpus"  # one tokenizer for the whole grid
    assert len({r.params_hash for r in runs}) == len(runs) == len({r.exp_name for r in runs})
    assert Compute(tokens=1000, batch_size=4, block_size=32).max_steps == 8  # ceil(1000 / 128)


def test_set_args_mean_to_dvc_what_the_hash_was_computed_on(tmp_path):
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    raw = yaml.safe_load((ROOT / "ablations.yaml").read_text())
    for v in raw["variants"]:
        v["enabled"] = True
    for run in AblationSpec.from_dict(raw).runs(PARAMS):
        path = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", path)
        dvc_apply_overrides(path, set_args(run.overrides)[1::2])
        assert params_hash(yaml.safe_load(path.read_text())) == run.params_hash, run.variant


def test_hydra_values():
    assert hydra_value(None) == "null" and hydra_value(True) == "true" and hydra_value(0.5) == "0.5"
    assert hydra_value("data/x") == "'data/x'" and hydra_value(["gpt"]) == "['gpt']"
    assert hydra_value({"a": 1, "b": [True]}) == "{a:1,b:[true]}"


def test_leave_one_out_leaves_out_exactly_one_step_each():
    spec = AblationSpec.from_dict({"order": "leave-one-out"})
    full = AblationSpec.from_dict({}).variants[-1].overrides
    assert [v.name for v in spec.variants] == ["all", "-exact", "-minhash", "-heuristics", "-langid", "-quality"]
    assert spec.variants[0].overrides == full and spec.variants[0].compare_to is None
    for v, (step, step_set) in zip(spec.variants[1:], DEFAULT_GRID[1:]):
        assert v.kind == "leave-one-out" and v.compare_to == "all" and v.name == "-" + step.lstrip("+")
        changed = {k for k in full if v.overrides.get(k) != full[k]}
        assert changed == set(step_set) and all(v.overrides[k] is False for k in step_set)  # raw's value
    assert AblationSpec.from_dict({"order": "cumulative"}, order="leave-one-out").order == "leave-one-out"
    with pytest.raises(ConfigError, match="order 'random'"):
        AblationSpec.from_dict({"order": "random"})


def test_leave_one_out_step_that_adds_a_new_key_falls_back_to_params():
    spec = AblationSpec.from_dict({"order": "leave-one-out", "grid": [
        {"name": "base", "set": {"dedup.exact": False}}, {"name": "+aug", "set": {"augment.enabled": True}},
        {"name": "+exact", "set": {"dedup.exact": True}}]})
    by = {v.name: v.overrides for v in spec.variants}
    assert by["-aug"] == {"dedup.exact": True} and by["-exact"] == {"dedup.exact": False, "augment.enabled": True}


def test_run_names_carry_the_content_key():
    a = Run("-exact", 0, {}, "p" * 64, "c1")
    assert a.exp_name.startswith("abl-minus-exact-s0-") and a.key != Run("-exact", 0, {}, "p" * 64, "c2").key
    assert Run("+exact", 1, {}, "p" * 64, "c1").exp_name.startswith("abl-plus-exact-s1-")


def test_paired_difference_cancels_seed_effects():
    spec = AblationSpec.from_dict({"grid": [{"name": "a", "set": {}}, {"name": "b", "set": {}}]})
    # Seeds move bpb a lot (±0.3), but b is 0.05 better than a at every seed: paired, that is clear.
    rows = [row("a", 0, 2.00), row("a", 1, 2.30), row("a", 2, 1.70),
            row("b", 0, 1.95), row("b", 1, 2.26), row("b", 2, 1.64)]
    a, b = effects(spec.variants, rows)
    assert a["compare_to"] is None and a["n"] == 3 and a["mean"] == pytest.approx(2.0)
    assert a["std"] == pytest.approx(0.3)
    assert b["pairs"] == 3 and b["effect"] == pytest.approx(-0.05) and b["t"]["std"] == pytest.approx(0.01)
    assert b["t"]["p"] == pytest.approx(0.0131, abs=1e-4) and b["boot"] is None  # t = -8.66, df 2; no blocks
    assert b["verdict"] == "not significant (no per-block losses)"  # the rule needs both tests


def test_report_states_spread_verdicts_and_fairness():
    spec = AblationSpec.from_dict({"grid": [{"name": "raw", "set": {}}, {"name": "+exact", "set": {}}]})
    rows = [row("raw", 0, 2.0), row("raw", 1, 2.1), row("+exact", 0, 2.05), row("+exact", 1, 2.0)]
    md = render_report(spec, rows)
    assert "| `raw` | 2 |" in md and "2.0500 ± 0.0707" in md  # raw: mean ± std
    assert "`+exact` (vs `raw`): Δ bpb -0.0250 (2 seeds, std over seeds 0.1061) — **not significant" in md
    assert "p < 0.05 and the 95% paired bootstrap interval" in md  # the rule is stated
    assert "one for the whole grid" in md and "identical for every run" in md
    unfair = render_report(spec, rows[:-1] + [row("+exact", 1, 2.0, tok="t1")])
    assert "2 different tokenizers" in unfair


def test_results_round_trip_and_plot(tmp_path):
    spec = AblationSpec.from_dict({"grid": [{"name": "raw", "set": {}}, {"name": "+exact", "set": {}}]})
    rows = [row("raw", 0, 2.0, params_hash="h0"), row("+exact", 0, 1.9, params_hash="h1")]
    write_results(tmp_path / "r.duckdb", rows)
    back = read_results(tmp_path / "r.duckdb")
    assert [(r["variant"], r["eval_bpb"], r["params_hash"]) for r in back] == [("+exact", 1.9, "h1"), ("raw", 2.0, "h0")]
    png = render_png(plot_spec(spec, rows), tmp_path / "bpb.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert render_png(effects_plot_spec(spec, rows), tmp_path / "fx.png").read_bytes()[:4] == b"\x89PNG"


def test_both_orders_side_by_side(tmp_path):
    grid = [{"name": "raw", "set": {}}, {"name": "+exact", "set": {}}, {"name": "+langid", "set": {}}]
    cum, loo = AblationSpec.from_dict({"grid": grid}), AblationSpec.from_dict({"grid": grid}, order="leave-one-out")
    # 4 seeds shift bpb by 0.1 each; per block the losses differ by step only. Cumulative: exact helps by
    # 0.05 and langid hurts by 0.01 (seed spread 0.002); leave-one-out: langid helps by 0.02 (all − -langid).
    def run(v, s, bpb):
        jitter = 0.002 * (s % 2)
        return row(v, s, bpb + 0.1 * s + jitter, eval_tokens=1024, eval_bytes=4096,
                   eval_blocks={"block_tokens": 512, "nats": [(bpb + jitter) * 2048 * math.log(2) + i for i in (0, 1)]})
    cr = [run(v, s, b) for v, b in [("raw", 2.0), ("+exact", 1.95), ("+langid", 1.96)] for s in range(4)]
    lr = [run(v, s, b) for v, b in [("all", 1.90), ("-exact", 1.95), ("-langid", 1.92)] for s in range(4)]
    md = render_orders([(cum, cr), (loo, lr)], n_boot=200)
    lines = {ln.split(" | ")[0]: ln.split(" | ")[1:] for ln in md.splitlines() if ln.startswith("| `")}
    assert list(lines) == ["| `exact`", "| `langid`"]
    assert lines["| `exact`"][0].startswith("-0.0500 [") and lines["| `exact`"][4] == "**helped**"
    assert lines["| `exact`"][5].startswith("-0.0500 [") and lines["| `exact`"][9] == "**helped** |"
    assert lines["| `langid`"][0].startswith("+0.0100 [") and lines["| `langid`"][4] == "**hurt**"
    assert lines["| `langid`"][5].startswith("-0.0200 [") and lines["| `langid`"][9] == "**helped** |"
    assert "Same verdict in both orders: 1 of 2 steps (`exact`)." in md
    # a step measured in one order only says so
    one = render_orders([(cum, cr), (loo, [r for r in lr if r["variant"] != "-langid"])], n_boot=0)
    assert "| `langid` | +0.0100" in one and one.rstrip().splitlines()[-3].endswith("— | — | — | — | not run |")
    png = render_png(orders_plot_spec("t", [(cum, cr), (loo, lr)]), tmp_path / "orders.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_runs_found_by_content_key_under_another_name():
    from flows.ablate import run_experiments

    grid = [{"name": "raw", "set": {"dedup.exact": False}}, {"name": "+exact", "set": {"dedup.exact": True}}]
    cum = AblationSpec.from_dict({"grid": grid, "seeds": 1}).runs(PARAMS, "c")
    loo = AblationSpec.from_dict({"grid": grid, "seeds": 1}, order="leave-one-out").runs(PARAMS, "c")
    by_variant = {r.variant: r for r in cum + loo}
    assert by_variant["all"].key == by_variant["+exact"].key and by_variant["-exact"].key == by_variant["raw"].key
    refs = {r.exp_name: f"sha-{r.variant}" for r in cum}
    refs["abl-other-s0-" + "0" * 10] = "sha-unrelated"
    found = run_experiments(loo, refs)
    assert found == {by_variant["all"].exp_name: "sha-+exact", by_variant["-exact"].exp_name: "sha-raw"}
    assert run_experiments(AblationSpec.from_dict({"grid": grid, "seeds": 1}).runs(PARAMS, "other code"), refs) == {}


# ---------------------------------------------------------------------------------------------
# End to end: a 2-variant × 1-seed grid as DVC experiments in a temporary git repo.

TINY_SPEC = {
    "name": "tiny", "seeds": 1, "jobs": 2,
    "compute": {"model": "gpt", "config": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
                "tokens": 640, "batch_size": 4, "block_size": 32},
    "fixed": {"tokenizer.input": "data/ingest/corpus", "pretrain.common.threads": 1},
    "grid": [{"name": "raw", "set": {"dedup.exact": False, "dedup.near": False, "filter.heuristics.enabled": False,
                                     "filter.langid.enabled": False, "filter.quality.enabled": False}},
             {"name": "+exact", "set": {"dedup.exact": True}}],
}


def tiny_repo(repo: Path, raw_sample: Path, env: dict) -> Path:
    """The project in a fresh git + DVC repo: pydoc topics only, tiny tokenizer and training; the
    fetched sample copied in and committed to DVC as the `fetch` stage's output (no network)."""
    copy_project(repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["ingest"]["corpus"]["sources"] = [{"type": "pydoc_topics", "source": "pydoc", "eval_fraction": 0.2,
                                         "path": "data/raw/pydoc_topics.jsonl"}]
    p["tokenizer"]["vocab_size"] = 300
    p["pretrain"].update(sample_tokens=8)
    p["pretrain"]["common"].update(eval_interval=5, eval_batches=1, mc_items=10, warmup_steps=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (repo / "ablations.yaml").write_text(yaml.safe_dump(TINY_SPEC, sort_keys=False))
    (repo / ".gitignore").write_text("__pycache__/\n.prefect/\nreports/\n")
    shutil.copytree(raw_sample, repo / "data" / "raw")
    manifest = json.loads((raw_sample / "MANIFEST.json").read_text())["sources"]
    (repo / "metrics").mkdir()
    (repo / "metrics" / "fetch.json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "sha256"} for k, v in manifest.items()}, indent=2))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                [dvc, "commit", "-q", "-f", "fetch"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~70-130 s on 2 idle cores; headroom for a busy box (it hit 300 s at load 14)
def test_two_variant_grid_end_to_end(tmp_path, prefect_server, raw_sample):
    env = python_env(PREFECT_API_URL=prefect_server, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                     GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t", PREFECT_HOME=str(tmp_path / "ph"))
    repo = tiny_repo(tmp_path / "repo", raw_sample, env)  # no commit yet: the flow makes the base commit
    cmd = [sys.executable, "-m", "flows.ablate", "--spec", "ablations.yaml"]
    first = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=540)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "2 runs (2 variants × 1 seeds), 0 already done, 2 to run" in first.stdout + first.stderr

    with duckdb.connect(str(repo / "reports/tiny/results.duckdb"), read_only=True) as con:
        got = {r[0]: r[1:] for r in con.execute("SELECT variant, docs_kept, training_tokens, tokenizer_hash, "
                                                "eval_bytes, eval_bpb, eval_blocks FROM ablation_runs").fetchall()}
    assert set(got) == {"raw", "+exact"}
    assert got["+exact"][0] < got["raw"][0]                  # exact dedup dropped documents
    assert got["raw"][1] == got["+exact"][1] == 5 * 4 * 32  # fixed compute: 5 steps × 4 × 32
    assert got["raw"][2:4] == got["+exact"][2:4]             # same tokenizer, same evaluation split
    blocks = json.loads(got["raw"][5])                       # per-block losses, read from the DVC cache
    assert blocks["block_tokens"] == 512 and len(blocks["nats"]) == -(-blocks["eval_tokens"] // 512)
    report = (repo / "reports/tiny/report.md").read_text()
    assert "`+exact` (vs `raw`)" in report and "undecided (one seed" in report and "bootstrap" in report
    assert (repo / "reports/tiny/bpb.png").read_bytes()[:4] == b"\x89PNG"
    listed = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "list", "--name-only"], cwd=repo,
                            env=env, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(n.rsplit("-", 2)[0] for n in listed) == ["abl-plus-exact", "abl-raw"]  # seen by `dvc exp`

    # finished runs are not recomputed; --report-only queues nothing and lists what has not run
    second = subprocess.run([*cmd, "--seeds", "2", "--report-only"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "4 runs (2 variants × 2 seeds), 2 already done, 0 to run" in second.stdout + second.stderr
    unfinished = (repo / "reports/tiny/report.md").read_text().split("## Not finished")[1]
    assert "abl-raw-s1-" in unfinished and "abl-plus-exact-s1-" in unfinished and "-s0-" not in unfinished

    # leave-one-out's `all` and `-exact` are the cumulative `+exact` and `raw`: found by content key, and
    # its report shows both orders side by side
    loo = subprocess.run([*cmd, "--order", "leave-one-out", "--report-only"], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert loo.returncode == 0, loo.stderr[-3000:]
    assert "2 runs (2 variants × 1 seeds), 2 already done, 0 to run" in loo.stdout + loo.stderr
    assert "2 done as another variant's experiment" in loo.stdout + loo.stderr
    both = (repo / "reports/tiny-leave-one-out/report.md").read_text()
    assert "## Both orders" in both and "| `exact` |" in both and "Not finished" not in both
    assert (repo / "reports/tiny-leave-one-out/orders.png").read_bytes()[:4] == b"\x89PNG"


def test_queueing_forces_only_when_the_cache_lacks_the_lock_outputs(tmp_path):
    from flows.ablate import lock_outputs_cached

    cache = tmp_path / "cache"
    assert lock_outputs_cached(tmp_path / "dvc.lock", cache) == []  # no lock yet: nothing to miss
    lock = {"schema": "2.0", "stages": {
        "plant": {"cmd": "x", "outs": [{"path": "data/plant", "hash": "md5", "md5": "4428a6754a775849bd970d0c12f53818.dir"}]},
        "fetch": {"cmd": "y", "outs": [{"path": "metrics/fetch.json", "hash": "md5", "md5": "ab" + "0" * 30}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (cache / "files" / "md5" / "ab").mkdir(parents=True)
    (cache / "files" / "md5" / "ab" / ("0" * 30)).write_text("{}")
    assert lock_outputs_cached(tmp_path / "dvc.lock", cache) == ["plant: data/plant"]
    (cache / "files" / "md5" / "44").mkdir()
    (cache / "files" / "md5" / "44" / "28a6754a775849bd970d0c12f53818.dir").write_text("[]")
    assert lock_outputs_cached(tmp_path / "dvc.lock", cache) == []


def test_force_check_counts_only_the_targets_upstream_stages(tmp_path):
    from flows.ablate import lock_outputs_cached

    cache = tmp_path / "cache"
    md5 = {n: f"{i:02d}" + "0" * 30 for i, n in enumerate(["ingest", "filter", "pretrain", "side"])}
    lock = {"schema": "2.0", "stages": {
        "ingest": {"cmd": "a", "deps": [{"path": "data/raw"}], "outs": [{"path": "data/ingest", "md5": md5["ingest"]}]},
        "filter": {"cmd": "b", "deps": [{"path": "data/ingest/corpus"}],
                   "outs": [{"path": "data/filter", "md5": md5["filter"]}]},
        "pretrain": {"cmd": "c", "deps": [{"path": "data/filter"}], "outs": [{"path": "models/pretrain", "md5": md5["pretrain"]}]},
        "side": {"cmd": "d", "deps": [{"path": "data/ingest"}], "outs": [{"path": "data/side", "md5": md5["side"]}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    def missing(target=None):
        return sorted(lock_outputs_cached(tmp_path / "dvc.lock", cache, target))

    everything = ["filter: data/filter", "ingest: data/ingest", "pretrain: models/pretrain", "side: data/side"]
    assert missing() == everything
    # pretrain needs filter (its out folder) and ingest (a file inside ingest's out folder), not `side`
    assert missing("pretrain") == everything[:3]
    assert missing("filter") == everything[:2]
    assert missing("not-locked") == everything
