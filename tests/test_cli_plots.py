"""`lmforge plots` renders DVC's plots to PNG without a network (`dvc plots show` HTML loads vega
from the web and is blank offline)."""

from __future__ import annotations

import subprocess

from flows.cli import main
from tests.conftest import python_env


def test_plots_render_loss_curves_to_png(tmp_path, monkeypatch, capsys):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "gpt_val.csv").write_text("step,val_loss\n0,5.0\n10,4.2\n20,3.9\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  pretrain:\n    cmd: 'true'\n    plots:\n"
                                       "      - plots/gpt_val.csv: {x: step, y: val_loss}\n")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=python_env(), check=True)
    monkeypatch.chdir(tmp_path)
    assert main(["plots", "--out", "png"]) == 0
    png = tmp_path / "png" / "plots_gpt_val.png"
    assert capsys.readouterr().out.split() == ["png/plots_gpt_val.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
