"""Learned fusion served for real: parameters in settings drive the SearchService's fused order (the tiny
collection, both text branches), and over gRPC a request for fusion="learned" on a collection without
parameters is INVALID_ARGUMENT naming the collection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.settings import CollectionSettings, FusionSettings, LearnedFusion
from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from retriever.core import fusion
from retriever.core.types import BranchStatus, SearchQuery, SearchResult
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from retriever.settings import load_settings
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration

# Dense similarity dominates; BM25 breaks ties among what both found.
MODEL = LearnedFusion(
    branches=["inverted", "ann"],
    weights={"inverted.minmax": 0.3, "inverted.found": 0.2, "ann.zscore": 1.0, "ann.found": 0.1},
    intercept=-1.0,
    version="hand-set for tests",
)


def _search(svc: SearchService, **kw: object) -> SearchResult:
    q = SearchQuery(collection="tiny", text="Paris Texas", top_k=7, debug=True, **kw)  # type: ignore[arg-type]
    return asyncio.run(svc.search(q))


def test_learned_fusion_serves_from_settings(tiny_snapshot: Path) -> None:
    reg = Registry()
    reg.put(Collection(tiny_snapshot, CollectionSettings(fusion=FusionSettings(learned=MODEL))))
    svc = SearchService(load_settings(), reg)
    try:
        default = _search(svc)
        res = _search(svc, fusion="learned")
    finally:
        svc.close()
    assert default.debug is not None and default.debug.fusion == "rrf"  # parameters alone switch nothing
    assert res.debug is not None and res.debug.fusion == "learned"
    ranked = {r.branch: r.candidates for r in res.branch_stats if r.status is BranchStatus.OK}
    assert set(ranked) == {"inverted", "ann"}
    expected = fusion.learned(ranked, weights=MODEL.weights, intercept=MODEL.intercept)
    assert [h.score for h in res.hits] == pytest.approx([f.score for f in expected][: len(res.hits)])
    assert res.hits[0].id == "pt"  # found by both, on both counts the best
    assert all(h.sources for h in res.hits)


@pytest.fixture(scope="module")
def stub(tiny_snapshot: Path) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    srv = ServerThread([tiny_snapshot])  # default settings: no learned parameters anywhere
    try:
        with grpc.insecure_channel(srv.target) as ch:
            yield search_pb2_grpc.SearchServiceStub(ch)
    finally:
        srv.close()


def test_learned_without_parameters_is_invalid_argument(stub: search_pb2_grpc.SearchServiceStub) -> None:
    req = pb.SearchRequest(collection="tiny", query="paris", fusion="learned")
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(req, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "collection 'tiny' has no learned fusion parameters" in (err.value.details() or "")
    ok = stub.Search(pb.SearchRequest(collection="tiny", query="paris", fusion="weighted", debug=True))
    assert ok.debug.fusion == "weighted" and ok.hits


def test_branch_lists_replay_what_the_service_fuses(tiny_snapshot: Path) -> None:
    """The evaluation's recall (one debug Search per query) gives each branch's own list and the ids."""
    from quarry.evaluate import branch_lists

    lists, ids = asyncio.run(branch_lists(tiny_snapshot, {"q1": "Paris Texas"}, ["inverted", "ann"]))
    assert set(lists["q1"]) == {"inverted", "ann"}
    assert len(lists["q1"]["ann"]) == 7  # every tiny item, ranked
    assert ids[lists["q1"]["inverted"][0].ordinal] == "pt"
    assert set(ids.values()) == {"sh", "bj", "pa", "pt", "sf", "zu", "nl"}
