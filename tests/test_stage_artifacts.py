"""What a person reads from a stage: markdown tables that stay tables whatever text is in them, and
metrics files that are the same bytes on every run (timings go to an uncached sibling)."""

from __future__ import annotations

import json

from markdown_it import MarkdownIt

from flows._stage import md_cell, md_table, publish_metrics, split_timings, timings_path


def rendered_cells(markdown: str) -> list[list[str]]:
    """Rows of cell texts, as a GFM renderer parses the table."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows, row = [], None
    for i, t in enumerate(tokens):
        if t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            inline = tokens[i + 1]
            row.append("".join(c.content for c in inline.children or []) if inline.type == "inline" else "")
        elif t.type == "tr_close":
            rows.append(row)
    return rows


def test_table_with_newlines_and_pipes_stays_one_row_per_record():
    rows = [{"prompt": "Continue:\nTo be | or not\r\nto be", "reply": "a|b||c", "score": 0.123456},
            {"prompt": "def f(x):\n    return x \\| 1", "reply": "<script>x</script>", "score": 2}]
    cells = rendered_cells(md_table(rows))
    assert cells[0] == ["prompt", "reply", "score"]
    assert len(cells) == 3 and all(len(r) == 3 for r in cells)
    assert cells[1] == ["Continue: ⏎ To be | or not ⏎ to be", "a|b||c", "0.1235"]
    assert cells[2][0] == "def f(x): ⏎     return x \\| 1"
    assert "<script>" not in MarkdownIt("commonmark").enable("table").render(md_table(rows))


def test_long_text_is_cut_with_an_ellipsis():
    cell = md_cell("x" * 1000, limit=50)
    assert len(cell) == 50 and cell.endswith("…")


def test_timings_leave_the_metrics_at_any_depth():
    stable, timings = split_timings({"rows_in": 3, "seconds": 1.5, "gpt": {"tokens_per_s": 9.0, "loss": 2.0},
                                     "host": "box", "train_seconds": 0.2})
    assert stable == {"rows_in": 3, "gpt": {"loss": 2.0}}
    assert timings == {"seconds": 1.5, "gpt": {"tokens_per_s": 9.0}, "host": "box", "train_seconds": 0.2}


def test_metrics_files_are_identical_across_runs_of_different_speed(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = {"rows_in": 5, "rows_kept": 4, "rows_rejected": 1, "rejected_by_reason": {"lang": 1}, "shards": 1}
    publish_metrics("filter", "corpus", {**metrics, "seconds": 1.25}, markdown="# filter | corpus\n")
    first = (tmp_path / "metrics/filter/corpus.json").read_bytes()
    publish_metrics("filter", "corpus", {**metrics, "seconds": 9.5})
    assert (tmp_path / "metrics/filter/corpus.json").read_bytes() == first
    assert json.loads(first) == metrics
    assert json.loads(timings_path("filter", "corpus").read_text()) == {"seconds": 9.5}
