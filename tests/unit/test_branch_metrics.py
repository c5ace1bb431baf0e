"""retriever.core.metrics.record_branch: a branch's status is counted; latency and candidates only for an
answer (a skipped or failed branch creates no histogram series)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from retriever.core.metrics import record_branch


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_record_branch_counts_and_observes_answers_only() -> None:
    coll = "metrics-unit-test"
    record_branch(coll, "ann", "ok", 2.0, 7)
    record_branch(coll, "ann", "ok", 4.0, 3)
    record_branch(coll, "ann", "timeout", 100.0, 0)
    record_branch(coll, "geo", "skipped", 0.0, 0)
    assert _value("quarry_branch_results_total", collection=coll, branch="ann", status="ok") == 2
    assert _value("quarry_branch_results_total", collection=coll, branch="ann", status="timeout") == 1
    assert _value("quarry_branch_latency_seconds_count", collection=coll, branch="ann") == 2
    assert _value("quarry_branch_latency_seconds_sum", collection=coll, branch="ann") == pytest.approx(0.006)
    assert _value("quarry_branch_candidates_sum", collection=coll, branch="ann") == 10
    assert _value("quarry_branch_results_total", collection=coll, branch="geo", status="skipped") == 1
    assert _value("quarry_branch_latency_seconds_count", collection=coll, branch="geo") is None
