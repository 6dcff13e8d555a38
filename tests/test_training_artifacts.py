"""What the training stages leave for a person and for DVC: metrics without wall times (timings in an
uncached sibling), samples as code blocks whatever their text, a throttled progress callback, a PPO
curve picture, and logs without one "Finished in state Completed()" line per task."""

from __future__ import annotations

import json
import logging

from markdown_it import MarkdownIt

from flows._env import CompletedTaskRuns
from flows._training import render_ppo_png, write_train_metrics
from lmtrain.align.common import fenced
from lmtrain.align.sft import samples_markdown
from lmtrain.progress import split_timings, throttled

NASTY = "Continue:\n| a | b |\n```python\nx = 1\n```\n<b>bold</b> \\| end"


def code_blocks(markdown: str) -> list[str]:
    return [t.content for t in MarkdownIt("commonmark").parse(markdown) if t.type == "fence"]


def test_fenced_text_is_one_code_block_holding_the_text_unchanged():
    assert code_blocks(fenced(NASTY)) == [NASTY + "\n"]
    assert code_blocks(fenced("plain")) == ["plain\n"]


def test_sft_samples_show_prompt_answer_and_reference_as_code_blocks():
    md = samples_markdown([{"prompt": NASTY, "answer": "a | b\nc", "reference": "```"}])
    assert code_blocks(md) == [NASTY + "\n", "a | b\nc\n", "```\n"]
    assert "table" not in MarkdownIt("commonmark").enable("table").render(md)  # no table to break


def test_speed_figures_leave_the_metrics_at_any_depth():
    m = {"eval_loss": 2.5, "params": 10, "seconds": 12.0, "tokens_per_s": 900.0, "tokens_per_s_per_device": 900.0,
         "mfu": None, "matmul_utilisation": 0.1, "peak_flops_measured": 1e11, "peak_flops_spec": "none (CPU)",
         "flops_per_token": 6e5, "judge": {"accuracy": 0.75, "seconds": 3.0}}
    stable, timings = split_timings(m)
    assert stable == {"eval_loss": 2.5, "params": 10, "peak_flops_spec": "none (CPU)", "flops_per_token": 6e5,
                      "judge": {"accuracy": 0.75}}
    assert set(timings) == {"seconds", "tokens_per_s", "tokens_per_s_per_device", "mfu", "matmul_utilisation",
                            "peak_flops_measured", "judge"}


def test_metrics_file_is_the_same_bytes_whatever_the_timings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_train_metrics("dpo", {"eval_loss": 0.69, "steps": 4, "seconds": 1.5})
    first = (tmp_path / "metrics" / "dpo.json").read_bytes()
    write_train_metrics("dpo", {"eval_loss": 0.69, "steps": 4, "seconds": 99.0})
    assert (tmp_path / "metrics" / "dpo.json").read_bytes() == first
    assert json.loads(first) == {"eval_loss": 0.69, "steps": 4}
    assert json.loads((tmp_path / "metrics" / "timings" / "dpo.json").read_text()) == {"seconds": 99.0}
    write_train_metrics("dpo", {"mlp": {"eval_bpb": 3.0, "seconds": 2.0}}, merge=True)  # pretrain --only mlp
    assert json.loads((tmp_path / "metrics" / "dpo.json").read_text())["mlp"] == {"eval_bpb": 3.0}
    assert json.loads((tmp_path / "metrics" / "timings" / "dpo.json").read_text()) == {"seconds": 99.0,
                                                                                      "mlp": {"seconds": 2.0}}


def test_progress_reaches_the_ui_at_most_once_a_second_and_per_percent_first_and_last_always():
    now = [0.0]
    seen: list[int] = []
    update = throttled(lambda r: seen.append(r["step"]), every_s=1.0, every_pct=1.0, clock=lambda: now[0])
    for step in range(1, 1001):  # 1000 steps, 10 ms each: 10 s
        now[0] += 0.01
        update({"step": step, "max_steps": 1000})
    assert seen[0] == 1 and seen[-1] == 1000
    assert len(seen) == 11  # the first, one a second, the last
    seen.clear()
    update = throttled(lambda r: seen.append(r["step"]), clock=lambda: now[0])
    for step in range(1, 501):  # slow steps (2 s each) but 500 of them: at most one call per 1%
        now[0] += 2.0
        update({"step": step, "max_steps": 500})
    assert len(seen) == 101 and seen[-1] == 500


def test_task_completion_lines_are_dropped_but_failures_and_task_output_pass():
    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)

    keep = CompletedTaskRuns().filter
    assert not keep(record(logging.INFO, "Finished in state Completed()"))
    assert keep(record(logging.ERROR, "Finished in state Failed('Task run encountered an exception')"))
    assert keep(record(logging.INFO, "shard-00001: 1,024 rows kept"))
    assert any(isinstance(f, CompletedTaskRuns) for f in logging.getLogger("prefect.task_runs").filters)


def test_ppo_curve_is_rendered_from_the_log(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,score,kl\n1,0.1,0.0\n2,0.3,0.02\n3,0.4,0.05\n")
    assert render_ppo_png(log, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not render_ppo_png(tmp_path / "missing.csv", tmp_path / "none.png")
