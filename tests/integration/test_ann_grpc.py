"""ANN and hybrid recall over gRPC on real MovieLens titles embedded with MiniLM (ONNX)."""

from __future__ import annotations

import grpc
import pytest

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture
def stub(server: str):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def _branches(hit: pb.Hit) -> set[str]:
    return {s.branch for s in hit.sources}


def test_semantic_query_is_found_by_ann(stub: search_pb2_grpc.SearchServiceStub) -> None:
    # No title word matches "toy story"; only the dense branch can bridge "animated" ↔ Animation genre text.
    resp = stub.Search(
        pb.SearchRequest(collection="movielens", query="star wars", top_k=10, debug=True), timeout=10
    )
    stats = {b.branch: b for b in resp.branch_stats}
    assert stats["ann"].status == pb.BRANCH_STATUS_OK and stats["ann"].candidates > 0
    assert stats["inverted"].status == pb.BRANCH_STATUS_OK
    top = resp.hits[0]
    assert top.title == "Star Wars" and _branches(top) == {"inverted", "ann"}
    ann = next(s for s in top.sources if s.branch == "ann")
    assert 0.5 < ann.score <= 1.0001  # cosine similarity


def test_ann_alone_finds_paraphrases(stub: search_pb2_grpc.SearchServiceStub) -> None:
    resp = stub.Search(
        pb.SearchRequest(collection="movielens", query="animated movie about toys", top_k=20), timeout=10
    )
    titles = {h.title: h for h in resp.hits}
    assert "Toy Story" in titles
    assert "ann" in _branches(titles["Toy Story"])


def test_filtered_ann_respects_category_and_returns_full_top_k(
    stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    req = pb.SearchRequest(collection="movielens", query="space adventure", top_k=15, debug=True)
    req.filters.categories.append("Documentary")  # ~50 of 1,682 items: exact search over the allowed set
    resp = stub.Search(req, timeout=10)
    assert len(resp.hits) == 15 and all(h.category == "Documentary" for h in resp.hits)
    assert all("ann" in _branches(h) for h in resp.hits[:1])
    req.filters.ranges.add(field="year", min=1990, max=1995)
    resp = stub.Search(req, timeout=10)
    assert resp.hits and all(
        h.category == "Documentary" and 1990 <= h.attributes["year"] <= 1995 for h in resp.hits
    )
