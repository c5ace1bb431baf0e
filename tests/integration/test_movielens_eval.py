"""`quarry eval movielens` end to end on the real MovieLens-100K (the 1M run is a CLI job, minutes long):
the temporal windows, Quarry's own Recommend candidates, the baselines and the rankers chosen on
validation, with paired bootstrap intervals, and the chosen model loadable by the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quarry.cli import main
from quarry.recsys_eval import METRICS, user_metrics
from quarry.stats import paired_bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_user_metrics() -> None:
    ndcg, rec50, hit = user_metrics([5, 1, 7, 2], {1, 2, 99})
    # hits at ranks 2 and 4: (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3) + 1/2)
    assert ndcg == pytest.approx((1 / 1.5849625 + 1 / 2.3219281) / (1 + 1 / 1.5849625 + 0.5))
    assert rec50 == pytest.approx(2 / 3) and hit == 1.0
    assert user_metrics([], {1}) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_contains_the_mean() -> None:
    ci = paired_bootstrap({"a": [0.0, 1.0] * 50, "b": [1.0] * 100}, resamples=500)
    lo_a, hi_a = ci["a"][1:]
    assert ci["a"][0] == pytest.approx(0.5) and lo_a < 0.5 < hi_a and hi_a - lo_a < 0.25
    assert ci["b"] == (1.0, 1.0, 1.0)


def test_eval_movielens_cli(tmp_path: Path) -> None:
    out, model = tmp_path / "report.json", tmp_path / "model.onnx"
    res = CliRunner().invoke(
        main,
        [
            "eval",
            "movielens",
            "--variant",
            "100k",
            "--max-users",
            "150",
            "--json-out",
            str(out),
            "--model-out",
            str(model),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    table = report["table"]
    assert {"popularity", "itemcf", "swing", "ease", "recall order"} <= set(table)
    if report["versus"]:  # a ranker was chosen: it is compared with every baseline, EASE included
        assert set(report["versus"]) == {"popularity", "itemcf", "swing", "ease", "recall order"}
    assert any(name.startswith("ranker (gbdt") for name in table)
    for row in table.values():
        for metric in METRICS:
            mean, lo, hi = row[metric]
            assert 0.0 <= lo <= mean <= hi <= 1.0
    assert not {"item_events_1h", "item_events_1d", "item_events_7d"} & set(report["features"])
    assert "item_popularity" in report["features"] and "user_events_7d" in report["features"]
    assert report["test_users"] >= 50 and report["selection"]["fit_queries"] > report["selection"]["users"]
    assert "recall order" in report["selection"]["ndcg@10"]  # a model must beat no model to be chosen
    assert "NDCG" in res.output or "ndcg@10" in res.output
    chosen = report["selection"]["chosen"]
    if chosen != "recall order":
        from ranker.schema import DEFAULT_SCHEMA
        from ranker.session import OnnxRanker

        served = OnnxRanker(model, schema=DEFAULT_SCHEMA)
        assert served.model_version.startswith("movielens-")
        # By default the rankers read every feature but the items' real-time windows, and the exported
        # model says so: the server vectorises it with its own schema.
        assert served.schema.names == tuple(report["features"])
    else:
        assert not model.exists()


def test_eval_movielens_one_horizon_and_item_windows(tmp_path: Path) -> None:
    """`--horizon-days` judges each window on its first days only (fewer judged users than the whole
    windows), and `--item-windows` lets the rankers read the items' real-time counts."""
    out = tmp_path / "report.json"
    args = ["eval", "movielens", "--variant", "100k", "--max-users", "60", "--json-out", str(out)]
    res = CliRunner().invoke(main, [*args, "--horizon-days", "10", "--item-windows"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["horizon_days"] == 10 and "item_events_7d" in report["features"]
    assert "the first 10 days of each window" in res.output and "real-time windows: yes" in res.output
    assert 0 < report["test_users"] <= 60
    # The test window is exactly the first 10 days after the last cut.
    from indexer.datasets import load_dataset

    events = load_dataset("movielens", tmp_path).events()
    cut = report["cuts"]["timestamps"][-1]
    assert report["events"]["test"] == sum(1 for e in events if cut <= e.ts < cut + 10 * 86_400)
    assert report["events"]["test"] < sum(
        1 for e in load_dataset("movielens", tmp_path).events() if e.ts >= cut
    )
    bad = CliRunner().invoke(main, [*args, "--horizon-days", "0"])
    assert bad.exit_code != 0 and "--horizon-days" in bad.output
