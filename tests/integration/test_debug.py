"""Debug answers over real gRPC (what `quarry console` shows): each branch's own list, the fused list, how
the ranking stage saw each hit, the user's recent events; and the request options a console offers —
a branch subset and a fusion override — with INVALID_ARGUMENT for names the collection does not have."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(server: str) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    with grpc.insecure_channel(server) as ch:
        yield search_pb2_grpc.SearchServiceStub(ch)


def _paris(**kw: object) -> pb.SearchRequest:
    req = pb.SearchRequest(collection="geonames", query="paris", top_k=5, radius_m=0, **kw)  # type: ignore[arg-type]
    req.location.lat, req.location.lon = 48.85, 2.35
    return req


def test_debug_lists_every_stage(stub: search_pb2_grpc.SearchServiceStub) -> None:
    res = stub.Search(_paris(debug=True), timeout=10)
    d = res.debug
    lists = {b.branch: b.candidates for b in d.branches}
    assert {"inverted", "geo"} <= set(lists)
    # Each branch's own list, hydrated, in its own order.
    inv = lists["inverted"]
    assert inv and [c.rank for c in inv] == list(range(1, len(inv) + 1))
    assert any("Paris" in c.title for c in inv[:3])
    scores = [c.score for c in inv]
    assert scores == sorted(scores, reverse=True)
    assert all(c.HasField("location") for c in lists["geo"])
    # The branch stats agree with the lists.
    stats = {b.branch: b for b in res.branch_stats}
    for name, cands in lists.items():
        assert stats[name].candidates == len(cands)
    # The fused list is what ranking saw; every entry names the branches that found it.
    assert d.fusion == "rrf" and d.ranker == "fused" and not d.feature_names
    assert d.fused and all(c.sources for c in d.fused)
    both = [c for c in d.fused if {s.branch for s in c.sources} >= {"inverted", "geo"}]
    assert both, "Paris is found by text and by place"
    # Without a model ranker the hits are the fused head, and each says where it stood.
    assert [h.id for h in res.hits] == [c.id for c in d.fused[: len(res.hits)]]
    for i, h in enumerate(res.hits, 1):
        assert h.debug.fused_rank == i
        assert h.debug.fused_score == pytest.approx(d.fused[i - 1].score)
    assert not d.HasField("user")


def test_no_debug_no_detail(stub: search_pb2_grpc.SearchServiceStub) -> None:
    res = stub.Search(_paris(), timeout=10)
    assert res.hits and not res.HasField("debug") and not res.branch_stats
    assert not any(h.HasField("debug") for h in res.hits)


def test_branch_subset_and_fusion_override(stub: search_pb2_grpc.SearchServiceStub) -> None:
    only_geo = stub.Search(_paris(debug=True, branches=["geo"]), timeout=10)
    assert [b.branch for b in only_geo.branch_stats] == ["geo"]
    assert [b.branch for b in only_geo.debug.branches] == ["geo"]
    assert all({s.branch for s in h.sources} == {"geo"} for h in only_geo.hits)
    text_only = stub.Search(_paris(debug=True, branches=["inverted", "inverted"]), timeout=10)
    assert [b.branch for b in text_only.branch_stats] == ["inverted"]

    rrf = stub.Search(_paris(debug=True), timeout=10)
    weighted = stub.Search(_paris(debug=True, fusion="weighted"), timeout=10)
    assert weighted.debug.fusion == "weighted"
    # Same candidates, other scores: min-max weighted scores lie in [0, Σ weights], RRF's far below 1.
    assert {c.id for c in weighted.debug.fused} == {c.id for c in rrf.debug.fused}
    assert max(c.score for c in weighted.debug.fused) > 0.5 > max(c.score for c in rrf.debug.fused)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"branches": ["nope"]}, "unknown branch 'nope'"),
        ({"branches": [""]}, "branches contains an empty name"),
        ({"fusion": "borda"}, "fusion 'borda' is not a fusion strategy"),
    ],
)
def test_bad_options_are_invalid_argument(
    stub: search_pb2_grpc.SearchServiceStub, kw: dict[str, object], needle: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(_paris(**kw), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (err.value.details() or "")
    if "nope" in needle:
        assert "inverted" in (err.value.details() or "")  # says which branches there are


def test_recommend_debug_shows_the_users_recent_events(stub: search_pb2_grpc.SearchServiceStub) -> None:
    user = f"debug-{time.time_ns()}"
    req = pb.LogEventsRequest(collection="movielens")
    for i, item in enumerate(["50", "181", "100"]):
        req.events.add(event_id=f"e{i}", user_id=user, item_id=item, type="rating", weight=5.0, ts=1000.0 + i)
    assert stub.LogEvents(req, timeout=10).accepted == 3
    res = stub.Recommend(pb.RecommendRequest(collection="movielens", user_id=user, debug=True), timeout=10)
    u = res.debug.user
    assert u.user_id == user and u.available
    assert [e.item_id for e in u.recent] == ["100", "181", "50"]  # newest first
    assert u.recent[-1].title.startswith("Star Wars")
    assert u.events_total == 3 and u.distinct_items == 3 and u.weight_sum == pytest.approx(15.0)
    lists = {b.branch: b.candidates for b in res.debug.branches}
    assert lists.get("behavior"), "items co-watched with the user's recent ones"
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(
            pb.RecommendRequest(collection="movielens", user_id=user, branches=["inverted"]), timeout=10
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "recommend" in (err.value.details() or "")
