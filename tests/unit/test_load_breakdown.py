"""Where a load step's time went: the harness reads the server's Prometheus exposition before and after a
step (quarry.load.Scrape) and turns histogram deltas into means per label (stages, branches, handler)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quarry.load import LoadReport, Scrape, StepResult, breakdown, hist_mean_ms, hist_mean_ms_by


def _exposition(
    stage_counts: dict[str, tuple[int, float]],
    *,
    handler: tuple[int, float],
    ann: tuple[int, float],
    failed: tuple[int, int] = (0, 0),
) -> str:
    """Text exposition with the series the harness reads (a histogram's _count and _sum suffice)."""
    lines = [
        "# HELP quarry_stage_seconds stage time",
        "# TYPE quarry_stage_seconds histogram",
    ]
    for stage, (count, total) in stage_counts.items():
        lines += [
            f'quarry_stage_seconds_count{{pipeline="search",stage="{stage}"}} {count}',
            f'quarry_stage_seconds_sum{{pipeline="search",stage="{stage}"}} {total}',
        ]
    # Another pipeline's stages must not leak into Search's.
    lines += [
        'quarry_stage_seconds_count{pipeline="recommend",stage="recall"} 50',
        'quarry_stage_seconds_sum{pipeline="recommend",stage="recall"} 9.0',
        "# HELP quarry_grpc_request_seconds rpc",
        "# TYPE quarry_grpc_request_seconds histogram",
        f'quarry_grpc_request_seconds_count{{method="Search",service="quarry.v1.SearchService"}} {handler[0]}',
        f'quarry_grpc_request_seconds_sum{{method="Search",service="quarry.v1.SearchService"}} {handler[1]}',
        'quarry_grpc_request_seconds_count{method="Check",service="grpc.health.v1.Health"} 7',
        'quarry_grpc_request_seconds_sum{method="Check",service="grpc.health.v1.Health"} 0.5',
        "# HELP quarry_branch_latency_seconds branch",
        "# TYPE quarry_branch_latency_seconds histogram",
        # Two collections' ann: the harness adds them up per branch.
        f'quarry_branch_latency_seconds_count{{branch="ann",collection="a"}} {ann[0]}',
        f'quarry_branch_latency_seconds_sum{{branch="ann",collection="a"}} {ann[1]}',
        'quarry_branch_latency_seconds_count{branch="ann",collection="b"} 1',
        'quarry_branch_latency_seconds_sum{branch="ann",collection="b"} 0.001',
        'quarry_branch_latency_seconds_count{branch="geo",collection="a"} 4',
        'quarry_branch_latency_seconds_sum{branch="geo",collection="a"} 0.002',
        "# HELP quarry_branch_results recall branch outcomes",
        "# TYPE quarry_branch_results counter",
        f'quarry_branch_results_total{{branch="ann",collection="a",status="ok"}} {ann[0]}',
        f'quarry_branch_results_total{{branch="ann",collection="a",status="timeout"}} {failed[0]}',
        f'quarry_branch_results_total{{branch="behavior",collection="a",status="error"}} {failed[1]}',
        'quarry_branch_results_total{branch="geo",collection="a",status="skipped"} 3',
    ]
    return "\n".join(lines) + "\n"


BEFORE = Scrape.parse(
    _exposition(
        {"validate": (10, 0.001), "recall": (10, 0.05), "fuse": (10, 0.004)},
        handler=(12, 0.08),
        ann=(10, 0.04),
    )
)
AFTER = Scrape.parse(
    _exposition(
        {"validate": (110, 0.011), "recall": (110, 0.65), "fuse": (110, 0.034)},
        handler=(112, 0.78),
        ann=(110, 0.54),
        failed=(3, 7),
    )
)


def test_a_histograms_mean_between_two_scrapes() -> None:
    # 100 Searches: 0.6 s of recall → 6 ms each; 0.7 s of handler → 7 ms.
    assert hist_mean_ms(
        BEFORE, AFTER, "quarry_stage_seconds", pipeline="search", stage="recall"
    ) == pytest.approx(6.0)
    assert hist_mean_ms(BEFORE, AFTER, "quarry_grpc_request_seconds", method="Search") == pytest.approx(7.0)
    # Nothing observed meanwhile: no mean rather than 0 or a division by zero.
    assert hist_mean_ms(BEFORE, BEFORE, "quarry_stage_seconds", stage="recall") is None
    assert hist_mean_ms(BEFORE, AFTER, "quarry_no_such_seconds") is None
    # Summed over the labels not matched: both collections' ann, 101 calls; geo saw none meanwhile.
    branches = hist_mean_ms_by(BEFORE, AFTER, "quarry_branch_latency_seconds", "branch")
    assert branches == {"ann": pytest.approx(5.0)}


def test_stages_keep_the_order_the_endpoint_lists_them() -> None:
    stages = hist_mean_ms_by(BEFORE, AFTER, "quarry_stage_seconds", "stage", pipeline="search")
    assert list(stages) == ["validate", "recall", "fuse"]
    assert stages == {
        "validate": pytest.approx(0.1),
        "recall": pytest.approx(6.0),
        "fuse": pytest.approx(0.3),
    }


def test_breakdown_fills_a_step_and_the_report_prints_and_plots_it(tmp_path: Path) -> None:
    step = StepResult(100, 1.0, 100, 100, 99.0, 8.0, 9.0, 12.0, 13.0, mean_ms=8.5)
    breakdown(step, BEFORE, AFTER, "Search")
    assert step.handler_ms == pytest.approx(7.0)
    assert list(step.stage_ms) == ["validate", "recall", "fuse"]  # recommend's recall is not Search's
    assert step.stage_ms["recall"] == pytest.approx(6.0)
    assert step.branch_ms == {"ann": pytest.approx(5.0)}
    assert step.encode_call_ms is None  # no encoder series in this exposition
    # Timeouts and errors, not skips: the answers that came back degraded.
    assert step.branch_failed == {"ann": 3, "behavior": 7}

    report = LoadReport(
        "test machine",
        "c",
        "search",
        "none",
        0.0,
        {"total": 4.0, "wall_p50": 4.0, "wall_p99": 6.0},
        500.0,
        [step],
    )
    text = report.table()
    assert "where the time went" in text
    row = text.splitlines()[-1].split()
    # offered, client mean, queue+net (client − handler), handler, then the stages in order.
    assert row[:4] == ["100", "8.50", "1.50", "7.00"]
    assert row[5:8] == ["0.10", "6.00", "0.30"]
    assert text.endswith("ann 3, behavior 7")
    png = tmp_path / "load.png"
    report.plot(png)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_scrapes_or_a_mixed_step_leave_the_breakdown_empty() -> None:
    for before, after, method in ((None, AFTER, "Search"), (BEFORE, None, "Search"), (BEFORE, AFTER, "")):
        step = StepResult(100, 1.0, 100, 100, 99.0, 8.0, 9.0, 12.0, 13.0)
        breakdown(step, before, after, method)
        assert step.handler_ms is None and step.stage_ms == {} and step.branch_ms == {}
        assert step.branch_failed == {}
    report = LoadReport(
        "m", "c", "search", "none", 0.0, {"total": 4.0, "wall_p50": 4.0, "wall_p99": 6.0}, 500.0, [step]
    )
    assert "where the time went" not in report.table()
    # LogEvents runs no pipeline: its handler time, no stages or branches.
    step = StepResult(100, 1.0, 100, 100, 99.0, 8.0, 9.0, 12.0, 13.0)
    breakdown(step, BEFORE, AFTER, "LogEvents")
    assert step.handler_ms is None and step.stage_ms == {}


def test_scrape_read_without_an_endpoint() -> None:
    assert Scrape.read(None) is None
    assert Scrape.read("http://127.0.0.1:9/metrics") is None  # nothing listens on the discard port


def test_the_report_prints_the_paced_floor_and_the_servers_cpu_a_request() -> None:
    """The floor timed again at the first step's pace (what idle cores cost the host) and, at each step, the
    server's CPU per answered request beside the back-to-back floor's: cores × 1000 / answered per s."""
    import json

    floor = {"total": 4.0, "encode": 3.0, "wall_p50": 4.0, "wall_p99": 6.0}
    paced = {"total": 5.0, "encode": 3.9, "wall_p50": 5.2, "wall_p99": 7.5}
    busy = StepResult(100, 1.0, 100, 100, 80.0, 8.0, 9.0, 12.0, 13.0, server_cpu_cores=0.64)
    idle = StepResult(200, 1.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, server_cpu_cores=0.01)  # nothing answered
    unmeasured = StepResult(300, 1.0, 10, 10, 10.0, 8.0, 9.0, 12.0, 13.0)
    assert busy.server_cpu_ms_per_request == pytest.approx(8.0)
    assert idle.server_cpu_ms_per_request is None and unmeasured.server_cpu_ms_per_request is None
    report = LoadReport(
        "m",
        "c",
        "search",
        "none",
        0.0,
        floor,
        500.0,
        [busy, idle, unmeasured],
        None,
        None,
        None,
        "",
        paced,
        100.0,
    )
    text = report.table()
    line = next(x for x in text.splitlines() if x.startswith("floor paced"))
    assert "at 100 req/s" in line and "5.000 CPU ms/request = 1.25x back to back" in line
    assert "(encode 3.900 = 1.30x)" in line and "p99 7.500 ms" in line
    header = next(x for x in text.splitlines() if x.split()[:1] == ["offered"])
    assert "srv cpu ms/req xfloor cli cpu" in " ".join(header.split())
    rows = {
        x.split()[0]: x.split() for x in text.splitlines() if x.split()[:1] in (["100"], ["200"], ["300"])
    }
    # offered, achieved, p50, p90, p99, p99.9, ach/ceil, ach/bound, p99/floor, srv cpu, ms/req, xfloor
    assert rows["100"][9:12] == ["0.64", "8.00", "2.00"]  # 8 ms a request = 2x the floor's 4
    assert rows["200"][9:12] == ["0.01", "-", "-"] and rows["300"][9:12] == ["-", "-", "-"]
    data = json.loads(report.to_json())
    assert data["floor_paced"] == paced and data["floor_paced_rps"] == 100.0
    assert [s["server_cpu_ms_per_request"] for s in data["steps"]] == [pytest.approx(8.0), None, None]
    # Without the paced floor the line is absent.
    assert "floor paced" not in LoadReport("m", "c", "search", "none", 0.0, floor, 500.0, [busy]).table()


def _step(offered: float, achieved: float, p99: float, ok: int = 100) -> StepResult:
    return StepResult(offered, 1.0, ok, ok, achieved, p99 / 2, p99 / 1.5, p99, p99 * 1.1)


def test_p99_at_seventy_percent_of_the_saturated_rate_is_read_between_the_steps() -> None:
    """The latency target's reading: the saturated rate is the most any step answered; p99 at 70% of it is
    interpolated between the two steps whose offered rates bracket it."""
    from quarry.load import p99_at_share_of_saturation

    steps = [_step(300, 250.0, 500.0), _step(100, 100.0, 10.0), _step(200, 199.0, 30.0)]  # any order
    saturated, rate, p99 = p99_at_share_of_saturation(steps) or (0.0, 0.0, 0.0)
    assert saturated == 250.0 and rate == pytest.approx(175.0)
    assert p99 == pytest.approx(10.0 + (30.0 - 10.0) * 0.75)  # 3/4 of the way from 100 to 200/s
    assert p99_at_share_of_saturation(steps, 0.4) == pytest.approx((250.0, 100.0, 10.0))  # on a step
    # No step offered that little, or none answered: no reading rather than an extrapolated one.
    assert p99_at_share_of_saturation(steps, 0.2) is None
    assert p99_at_share_of_saturation([_step(100, 0.0, 0.0, ok=0)]) is None
    assert p99_at_share_of_saturation([]) is None
    # Answered more than offered (rounding) at the top step: 70% of it still lies between the steps.
    assert p99_at_share_of_saturation([_step(100, 101.0, 8.0), _step(50, 50.0, 6.0)]) is not None


def test_the_report_sets_the_raw_server_beside_quarry() -> None:
    """With the raw server's steps, the report prints their table after Quarry's, each one's target line
    (p99 at 70% of its own saturated rate over the floor's p99), and both in the JSON."""
    import json

    floor = {"total": 5.0, "wall_p50": 5.0, "wall_p99": 8.0}
    quarry_steps = [_step(100, 100.0, 16.0), _step(200, 199.0, 80.0), _step(300, 300.0, 400.0)]
    raw_steps = [_step(100, 100.0, 10.0), _step(200, 200.0, 20.0), _step(300, 250.0, 300.0)]
    report = LoadReport("m", "c", "search", "none", 0.0, floor, 400.0, quarry_steps, raw_steps=raw_steps)
    report.raw_workers = 2
    lines = report.table().splitlines()
    raw_at = next(
        i for i, x in enumerate(lines) if x.startswith("raw server (quarry.rpc_floor --snapshot, 2")
    )
    assert lines[raw_at + 1].split()[:2] == ["offered", "achieved"]
    assert [x.split()[0] for x in lines[raw_at + 2 : raw_at + 5]] == ["100", "200", "300"]
    assert lines[raw_at + 4].split()[4] == "300.00"  # the raw server's own p99, not Quarry's
    quarry = next(x for x in lines if x.startswith("quarry: saturated at 300/s"))
    # 70% of 300/s = 210/s: a tenth of the way from 200 (80 ms) to 300/s (400 ms) = 112 ms = 14x 8 ms.
    assert "(0.75 of the ceiling)" in quarry and "(210/s, between the steps) p99 112.00 ms = 14.0x" in quarry
    raw = next(x for x in lines if x.startswith("raw server: saturated at 250/s"))
    assert "(175/s, between the steps) p99 17.50 ms = 2.2x" in raw  # 10 + (20 - 10) * 0.75
    data = json.loads(report.to_json())
    assert len(data["raw_steps"]) == 3 and data["raw_workers"] == 2
    assert data["p99_at_70pct"]["steps"]["p99_ms"] == pytest.approx(112.0)
    assert data["p99_at_70pct"]["raw_steps"]["saturated_rps"] == 250.0
    # Without it: no raw table, no raw target line; Quarry's own line stays.
    alone = LoadReport("m", "c", "search", "none", 0.0, floor, 400.0, quarry_steps).table()
    assert "raw server" not in alone and "quarry: saturated at 300/s" in alone
