"""What `quarry query` / `quarry recommend` print: plurals, plain numbers, geo as a distance, branch details."""

from __future__ import annotations

from common.v1 import search_pb2 as pb
from quarry.client import format_response


def test_format_response_reads_well() -> None:
    resp = pb.SearchResponse(snapshot_version="v1", took_ms=1.5)
    hit = resp.hits.add(id="sh", title="Shanghai", category="CN", score=0.02)
    hit.attributes["population"] = 24874500.0
    hit.attributes["ratio"] = 0.25
    hit.sources.add(branch="inverted", rank=1, score=486.2)
    hit.sources.add(branch="geo", rank=4, score=-1040.0)
    resp.branch_stats.add(branch="geo", status=pb.BRANCH_STATUS_OK, latency_ms=0.2, candidates=1)
    resp.branch_stats.add(
        branch="ann",
        status=pb.BRANCH_STATUS_DISABLED,
        candidates=0,
        detail="the snapshot has no vectors part",
    )
    out = format_response(resp, "上海")
    assert out.splitlines()[0].startswith("1 hit for '上海' from v1")
    assert "population=24,874,500" in out and "ratio=0.25" in out
    assert "inverted#1(486) geo#4(1.0 km)" in out
    assert "1 candidate\n" in out + "\n" and "0 candidates (the snapshot has no vectors part)" in out
    empty = format_response(pb.SearchResponse(snapshot_version="v1"), what="Recommend for an anonymous user")
    assert empty.startswith("0 hits for Recommend for an anonymous user")
