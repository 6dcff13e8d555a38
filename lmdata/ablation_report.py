"""An ablation's results: one row per run (DuckDB table `ablation_runs`), the markdown report with each
step's effect, 95% intervals, p-values and verdicts (lmdata/ablation_stats.py), and its plots
(Vega-Lite specs rendered to PNG offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmdata.ablation import AblationSpec, Run, Variant
from lmdata.ablation_stats import ALPHA, POWER, RULE, effects, mean_std

RESULT_COLUMNS: dict[str, str] = {
    "variant": "VARCHAR", "kind": "VARCHAR", "compare_to": "VARCHAR", "seed": "INTEGER",
    "run_key": "VARCHAR",         # params + stage code (Run.key): the cache key, never the commit
    "params_hash": "VARCHAR", "code_hash": "VARCHAR", "base_rev": "VARCHAR", "exp_name": "VARCHAR",
    "exp_rev": "VARCHAR",
    "docs_kept": "BIGINT",        # corpus documents kept by filter (the evaluation set is its own stage)
    "train_docs": "BIGINT",       # training documents tokenized (balance's repeats counted)
    "unique_tokens": "DOUBLE",    # approx. tokens of the distinct training documents entering balance
    "data_tokens": "BIGINT",      # training tokens on disk (after balance's mixture and repeats)
    "training_tokens": "BIGINT",  # tokens the model was trained on (fixed by the spec's compute)
    "eval_tokens": "BIGINT", "eval_bytes": "BIGINT", "tokenizer_hash": "VARCHAR",
    "eval_bpb": "DOUBLE", "eval_loss": "DOUBLE", "mc_accuracy": "DOUBLE", "train_seconds": "DOUBLE",
    "overrides": "VARCHAR",
    "eval_blocks": "VARCHAR",     # JSON: nats per fixed 512-token evaluation block (the paired bootstrap)
}


def result_row(run: Run, variant: Variant, metrics: dict[str, dict], model: str = "gpt",
               blocks: dict | None = None, **ids: str) -> dict:
    """One results row from an experiment's metrics files ({path: parsed JSON}) and its
    eval_blocks.json payload (None when the run has none); fails naming the file."""
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
        "run_key": run.key, "params_hash": run.params_hash, "code_hash": run.code_hash,
        "base_rev": ids.get("base_rev"), "exp_name": run.exp_name, "exp_rev": ids.get("exp_rev"),
        "docs_kept": need("metrics/filter/corpus.json")["rows_kept"],
        "train_docs": tokens["train"]["documents"],
        "unique_tokens": float(sum(balance.get("tokens_before", {}).values())) or None,
        "data_tokens": tokens["train"]["tokens"], "training_tokens": m.get("tokens"),
        "eval_tokens": tokens["eval"]["tokens"], "eval_bytes": tokens["eval"]["bytes"],
        "tokenizer_hash": metrics.get("metrics/tokenizer.json", {}).get("hash"),
        "eval_bpb": m["eval_bpb"], "eval_loss": m.get("eval_loss"), "mc_accuracy": m.get("mc_accuracy"),
        "train_seconds": m.get("seconds"), "overrides": json.dumps(run.overrides, sort_keys=True),
        "eval_blocks": json.dumps(blocks, separators=(",", ":")) if blocks else None,
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
    """Rows of `ablation_runs` (empty when the file does not exist yet, or was written before runs had
    content keys): the resumability cache."""
    import duckdb

    if not Path(path).exists():
        return []
    with duckdb.connect(str(path), read_only=True) as con:
        cols = [r[0] for r in con.execute("DESCRIBE ablation_runs").fetchall()]
        if "run_key" not in cols:
            return []
        cur = con.execute("SELECT * FROM ablation_runs ORDER BY variant, seed")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _ci(ci: tuple[float, float] | None, digits: int = 4) -> str:
    return "—" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _p(p: float | None) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _seeds(e: dict) -> str:
    if e["t"] is None or e["effect"] is None or e["t"]["std"] is None:
        return "—"
    return f"{e['seeds_needed']:,}" if e["seeds_needed"] else "> 10,000"


def _step(e: dict) -> str:
    """What a row measures: with the step − without it."""
    if e["kind"] == "leave-one-out":
        return f"`{e['variant'].lstrip('-')}` (`{e['compare_to']}` − `{e['variant']}`)"
    return f"`{e['variant']}` (vs `{e['compare_to']}`)"


def render_report(spec: AblationSpec, rows: list[dict], n_boot: int | None = None) -> str:
    """The markdown report: setup, the rule, each step's effect with intervals, p-values, verdict and
    the seeds a paired t-test needs; per variant the data kept and bits per byte."""
    c = spec.compute
    kw = {} if n_boot is None else {"n_boot": n_boot}
    bpb = effects(spec.variants, rows, "eval_bpb", **kw)
    mc = {e["variant"]: e for e in effects(spec.variants, rows, "mc_accuracy", **kw)}
    order = ("cumulative: each step is compared to the previous one" if spec.order == "cumulative" else
             "leave-one-out: every step on (`all`) against every step but one (`-<step>`)")
    lines = [f"# Ablation `{spec.name}`", "",
             f"Fixed compute: `{c.model}` (`{c.config}`), {c.max_steps} steps × batch {c.batch_size} × block "
             f"{c.block_size} = {c.training_tokens:,} training tokens per run; seeds "
             f"{spec.first_seed}..{spec.first_seed + spec.seeds - 1} (`{spec.seed_key}`). Order: {order}. "
             "A step's effect is Δ = bits per byte with the step − without it, paired by seed (negative: the "
             "step helped). Tested two ways: a paired t-test across seeds (95% t interval) and a paired bootstrap "
             "over the evaluation set's fixed 512-token blocks (per-block differences averaged over seeds; 95% "
             f"percentile interval). Rule: {RULE}.", ""]
    hashes = {r["tokenizer_hash"] for r in rows if r.get("tokenizer_hash")}
    evals = {(r["eval_tokens"], r["eval_bytes"]) for r in rows}
    # The comparison is fair only if every run shares the tokenizer and the evaluation split: say so.
    tok = (f"one for the whole grid (`{next(iter(hashes))[:12]}`)" if len(hashes) == 1
           else f"**{len(hashes)} different tokenizers: runs are not comparable**")
    ev = (f"identical for every run ({next(iter(evals))[1]:,} bytes)" if len(evals) == 1
          else "**differs between runs: not comparable**")
    lines += [f"Tokenizer: {tok}; evaluation split: {ev}.", "", "## Effects", "",
              "| step | seeds | Δ bpb | t 95% CI | p (t) | bootstrap 95% CI | p (boot) | verdict "
              f"| seeds for {POWER:.0%} power | Δ mc acc | p (mc) |",
              "|---|---:|---:|---|---:|---|---:|---|---:|---:|---:|"]
    for e in bpb:
        if e["compare_to"] is None:
            continue
        m = mc.get(e["variant"], {})
        t, b = e["t"] or {}, e["boot"] or {}
        lines.append(f"| {_step(e)} | {e['pairs']} | {_pm(e['effect'], None)} | {_ci(t.get('ci'))} | "
                     f"{_p(t.get('p'))} | {_ci(b.get('ci'))} | {_p(b.get('p'))} | **{e['verdict']}** | {_seeds(e)} | "
                     f"{_pm(m.get('effect'), None, 3)} | {_p((m.get('t') or {}).get('p'))} |")
    lines += ["", "## Variants", "",
              "| variant | runs | docs kept | unique tokens | train tokens on disk | eval bpb | mc accuracy |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for e in bpb:
        mine = [r for r in rows if r["variant"] == e["variant"]]
        docs = mean_std([float(r["docs_kept"]) for r in mine])[0]
        uniq = [r["unique_tokens"] for r in mine if r.get("unique_tokens")]
        disk = mean_std([float(r["data_tokens"]) for r in mine])[0]
        m = mc.get(e["variant"], {})
        lines.append(f"| `{e['variant']}` | {e['n']} | {docs:,.0f} | {(sum(uniq) / len(uniq)) if uniq else 0:,.0f} | "
                     f"{disk:,.0f} | {_pm(e['mean'], e['std'])} | {_pm(m.get('mean'), m.get('std'), 3)} |")
    lines += ["", "## Verdicts", ""]
    for e in bpb:
        if e["compare_to"] is None:
            continue
        t = e["t"]
        spread = "" if t["std"] is None else f", std over seeds {t['std']:.4f}"
        need = ""
        if e["seeds_needed"]:
            need = (f"; a paired t-test would need {e['seeds_needed']} seeds for {POWER:.0%} power at this effect "
                    f"and spread (α = {ALPHA:g})")
        elif t["std"] is not None and e["effect"]:
            need = "; the effect is too small against its spread for any practical number of seeds"
        lines.append(f"- {_step(e)}: Δ bpb {e['effect']:+.4f} ({e['pairs']} seed{'s' if e['pairs'] != 1 else ''}{spread}) — **{e['verdict']}**{need}.")
    return "\n".join(lines) + "\n"


ORDER_LABELS = {"cumulative": "cumulative (vs the previous step)", "leave-one-out": "leave-one-out (`all` − without it)"}


def step_of(e: dict) -> str:
    """The step an effect row measures, the same in both orders (`+exact` and `-exact` are `exact`)."""
    return e["variant"].lstrip("+-")


def order_effects(orders: list[tuple[AblationSpec, list[dict]]], n_boot: int | None = None) -> dict[str, dict]:
    """{order: {step: effect row}} of each (spec, rows) pair's compared grid steps (one-offs left out)."""
    kw = {} if n_boot is None else {"n_boot": n_boot}
    return {spec.order: {step_of(e): e for e in effects(spec.variants, rows, "eval_bpb", **kw)
                         if e["compare_to"] is not None and e["kind"] != "one-off"} for spec, rows in orders}


def render_orders(orders: list[tuple[AblationSpec, list[dict]]], n_boot: int | None = None) -> str:
    """Both orders side by side: per step, its effect in pipeline order (with it − the previous step)
    and left out of everything (`all` − every step but it), each with its t interval, both p-values and
    the verdict. `orders` are (spec, rows) pairs, one per order; steps follow the first spec's grid."""
    by_order = order_effects(orders, n_boot)
    steps = list(dict.fromkeys(s for fx in by_order.values() for s in fx))
    head = "| step | " + " | ".join(f"{ORDER_LABELS.get(o, o)}: Δ bpb [t 95% CI] | p (t) | bootstrap 95% CI | "
                                    "p (boot) | verdict" for o in by_order) + " |"
    lines = ["## Both orders", "",
             "Each step's effect measured two ways (Δ = bits per byte with the step − without, paired by seed; "
             "negative: the step helped). Cumulative: added to the steps before it, in pipeline order. "
             "Leave-one-out: taken out of the full pipeline, so an earlier step cannot hide it. "
             f"Rule, both orders: {RULE}.", "", head,
             "|---|" + "---:|---:|---|---:|---|" * len(by_order)]
    for step in steps:
        cells = []
        for fx in by_order.values():
            e = fx.get(step)
            if e is None or e["effect"] is None:
                cells.append("— | — | — | — | not run")
                continue
            t, b = e["t"] or {}, e["boot"] or {}
            cells.append(f"{e['effect']:+.4f} {_ci(t.get('ci'))} | {_p(t.get('p'))} | {_ci(b.get('ci'))} | "
                         f"{_p(b.get('p'))} | **{e['verdict']}**")
        lines.append(f"| `{step}` | " + " | ".join(cells) + " |")
    agree = [s for s in steps if len({(fx.get(s) or {}).get("verdict") for fx in by_order.values()}) == 1]
    lines += ["", f"Same verdict in both orders: {len(agree)} of {len(steps)} steps"
              + (f" ({', '.join(f'`{s}`' for s in agree)})." if agree else ".")]
    return "\n".join(lines) + "\n"


def orders_plot_spec(name: str, orders: list[tuple[AblationSpec, list[dict]]]) -> dict:
    """A Vega-Lite spec: each step's Δ bits per byte in both orders side by side, with bootstrap 95%
    intervals (the t interval where a run has no per-block losses)."""
    data = []
    for order, fx in order_effects(orders).items():
        for step, e in fx.items():
            if e["effect"] is None:
                continue
            ci = (e["boot"] or {}).get("ci") or (e["t"] or {}).get("ci") or (e["effect"], e["effect"])
            data.append({"step": step, "order": order, "effect": e["effect"], "lo": ci[0], "hi": ci[1],
                         "verdict": e["verdict"]})
    steps = list(dict.fromkeys(d["step"] for d in data))
    x = {"field": "step", "type": "nominal", "sort": steps, "title": None, "axis": {"labelAngle": -30}}
    off = {"field": "order", "type": "nominal"}
    color = {"field": "order", "type": "nominal", "title": "order"}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 90 * max(3, len(steps)),
            "height": 260, "title": {"text": f"{name}: effect of each step on eval bits per byte, both orders",
                                          "subtitle": "Δ = with the step − without (below 0: helped); bars: bootstrap "
                                                      "95% CI; hollow: not significant"},
            "data": {"values": data}, "layer": [
                {"mark": {"type": "rule", "strokeDash": [4, 4], "color": "gray"}, "encoding": {"y": {"datum": 0}}},
                {"mark": {"type": "errorbar", "ticks": True},
                 "encoding": {"x": x, "xOffset": off, "color": color,
                              "y": {"field": "lo", "type": "quantitative", "title": "Δ bits per byte"},
                              "y2": {"field": "hi"}}},
                {"mark": {"type": "point", "size": 80},
                 "encoding": {"x": x, "xOffset": off, "color": color,
                              "y": {"field": "effect", "type": "quantitative"},
                              "fill": {"condition": {"test": "datum.verdict === 'helped' || datum.verdict === 'hurt'",
                                                     "field": "order", "type": "nominal", "legend": None},
                                       "value": "white"}}}]}


def plot_spec(spec: AblationSpec, rows: list[dict], metric: str = "eval_bpb") -> dict:
    """A Vega-Lite spec: mean `metric` per variant (grid order) with ± std error bars and every seed."""
    order = [v.name for v in spec.variants]
    stats = {e["variant"]: e for e in effects(spec.variants, rows, metric, n_boot=0)}
    data = []
    for r in rows:
        if r["variant"] in stats and r.get(metric) is not None:
            e = stats[r["variant"]]
            data.append({"variant": r["variant"], "seed": int(r["seed"]), "value": float(r[metric]), "mean": e["mean"],
                         "lo": e["mean"] - (e["std"] or 0), "hi": e["mean"] + (e["std"] or 0)})
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


def effects_plot_spec(spec: AblationSpec, rows: list[dict]) -> dict:
    """A Vega-Lite spec: each step's Δ bits per byte (with − without) and its bootstrap 95% interval."""
    data = []
    for e in effects(spec.variants, rows, "eval_bpb"):
        if e["compare_to"] is None or e["effect"] is None:
            continue
        ci = (e["boot"] or {}).get("ci") or (e["t"] or {}).get("ci") or (e["effect"], e["effect"])
        step = e["variant"].lstrip("-") if e["kind"] == "leave-one-out" else e["variant"]
        data.append({"step": step, "effect": e["effect"], "lo": ci[0], "hi": ci[1], "verdict": e["verdict"]})
    x = {"field": "step", "type": "nominal", "sort": [d["step"] for d in data], "title": None,
         "axis": {"labelAngle": -30}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 70 * max(3, len(data)),
            "height": 260, "title": {"text": f"{spec.name}: effect of each step on eval bits per byte ({spec.order})",
                                          "subtitle": "Δ = with the step − without (below 0: helped); bars: bootstrap 95% CI"},
            "data": {"values": data}, "layer": [
                {"mark": {"type": "rule", "strokeDash": [4, 4], "color": "gray"}, "encoding": {"y": {"datum": 0}}},
                {"mark": {"type": "errorbar", "ticks": True},
                 "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative", "title": "Δ bits per byte"},
                              "y2": {"field": "hi"}}},
                {"mark": {"type": "point", "filled": True, "size": 80},
                 "encoding": {"x": x, "y": {"field": "effect", "type": "quantitative"},
                              "color": {"field": "verdict", "type": "nominal"}}}]}


def heatmap_spec(cells: list[dict], title: str, subtitle: str = "") -> dict:
    """A Vega-Lite heat map of {row, column, value (0..1 or null)} cells with the value printed in each."""
    def label(v: float | None) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    data = [{**c, "label": label(c.get("value"))} for c in cells]
    rows = list(dict.fromkeys(c["row"] for c in cells))
    cols = list(dict.fromkeys(c["column"] for c in cells))
    enc = {"x": {"field": "column", "type": "nominal", "sort": cols, "title": None, "axis": {"labelAngle": -30}},
           "y": {"field": "row", "type": "nominal", "sort": rows, "title": None}}
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 55 * max(3, len(cols)),
            "height": 26 * max(3, len(rows)), "title": {"text": title, "subtitle": subtitle},
            "data": {"values": data}, "encoding": enc, "layer": [
                {"mark": "rect", "encoding": {"color": {"field": "value", "type": "quantitative",
                                                         "scale": {"domain": [0, 1], "scheme": "blues"}}}},
                {"mark": {"type": "text", "fontSize": 10},
                 "encoding": {"text": {"field": "label"},
                              "color": {"condition": {"test": "datum.value > 0.6", "value": "white"},
                                        "value": "black"}}}]}


def render_png(vega_spec: dict, path: str | Path) -> Path:
    """Render a Vega-Lite spec to PNG offline (vl-convert bundles Vega; nothing is fetched)."""
    import vl_convert

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vl_convert.vegalite_to_png(vega_spec, scale=2))
    return path
