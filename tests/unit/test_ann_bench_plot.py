"""bench/ann_bench.py's recall-vs-latency plot (SYNTHETIC clustered data, small: the figures in docs come
from real MiniLM vectors; this checks the script's points and the PNG, not speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ann_bench import Point, main, plot_recall_latency


def test_the_sweep_plots_every_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "ann.png"
    main(["--synthetic", "2000,16", "--queries", "50", "--bf-queries", "10", "--plot-out", str(png)])
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and f"plot: {png}" in out
    for setting in ("ef=16", "ef=256", "nprobe=1", "nprobe=64"):
        assert setting in out, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_plot_takes_points_as_measured(tmp_path: Path) -> None:
    points = [Point("hnsw", "ef=16", 0.9, 80.0, 70.0), Point("hnsw", "ef=64", 0.99, 190.0, 180.0)]
    png = tmp_path / "p.png"
    plot_recall_latency(points, 4800.0, 10, "test", png)
    assert png.stat().st_size > 10_000
