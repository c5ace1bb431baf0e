"""LogEvents → Redis → behavior recall, Recommend (cold start, geo), and fail-open when Redis dies."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import grpc
import pytest

from common.geo import haversine_m
from common.settings import RedisSettings
from common.types import GeoPoint
from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from retriever.core.types import BranchStatus, SearchQuery
from retriever.features.recent import RedisRecentStore, UserEvent
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from retriever.settings import load_settings

pytestmark = pytest.mark.integration

STAR_WARS, EMPIRE, JEDI = "50", "172", "181"


@pytest.fixture
def stub(server: str):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def _ev(eid: str, user: str, item: str, **kw: object) -> pb.Event:
    return pb.Event(
        event_id=eid,
        user_id=user,
        item_id=item,
        type=str(kw.get("type", "click")),
        ts=float(kw.get("ts", 0.0)),
        weight=float(kw.get("weight", 0.0)),
    )  # type: ignore[arg-type]


def test_log_events_keeps_valid_events_and_explains_rejections(
    stub: search_pb2_grpc.SearchServiceStub,
) -> None:
    user = f"rt-{time.time_ns()}"
    batch = [
        _ev("a1", user, STAR_WARS),
        _ev("", user, STAR_WARS),  # no event id
        _ev("a2", user, ""),  # no item
        _ev("a3", user, STAR_WARS, type="Bad Type!"),
        _ev("a4", user, STAR_WARS, ts=math.nan),
        _ev("a5", user, STAR_WARS, ts=time.time() + 86400),
        _ev("a6", user, STAR_WARS, weight=-1),
        _ev("a7", user, "not-a-movie"),  # unknown items are accepted (real-time catalogue growth)
    ]
    resp = stub.LogEvents(pb.LogEventsRequest(collection="movielens", events=batch), timeout=5)
    assert resp.accepted == 2 and resp.duplicates == 0
    reasons = {r.index: r.reason for r in resp.rejected}
    assert set(reasons) == {1, 2, 3, 4, 5, 6}
    assert "event_id is required" in reasons[1] and "item_id is required" in reasons[2]
    assert (
        "type" in reasons[3] and "finite" in reasons[4] and "future" in reasons[5] and "weight" in reasons[6]
    )
    # A retried batch is idempotent.
    again = stub.LogEvents(pb.LogEventsRequest(collection="movielens", events=batch), timeout=5)
    assert again.accepted == 0 and again.duplicates == 2

    rec = stub.Recommend(
        pb.RecommendRequest(collection="movielens", user_id=user, top_k=20, debug=True), timeout=5
    )
    stats = {b.branch: b for b in rec.branch_stats}
    assert stats["behavior"].status == pb.BRANCH_STATUS_OK and stats["behavior"].candidates > 0
    ids = [h.id for h in rec.hits]
    assert STAR_WARS not in ids  # already seen
    assert EMPIRE in ids[:10] or JEDI in ids[:10]
    assert any(s.branch == "behavior" for h in rec.hits[:5] for s in h.sources)


def test_log_events_batch_level_errors(stub: search_pb2_grpc.SearchServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        stub.LogEvents(pb.LogEventsRequest(collection="nope", events=[_ev("x", "u", "1")]), timeout=5)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    big = [_ev(f"e{i}", "u", "1") for i in range(1001)]
    with pytest.raises(grpc.RpcError) as ei:
        stub.LogEvents(pb.LogEventsRequest(collection="movielens", events=big), timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maximum is 1000" in ei.value.details()


def test_recommend_cold_start_uses_popularity(stub: search_pb2_grpc.SearchServiceStub) -> None:
    rec = stub.Recommend(
        pb.RecommendRequest(collection="movielens", user_id="never-seen", top_k=10, debug=True), timeout=5
    )
    stats = {b.branch: b for b in rec.branch_stats}
    assert stats["popular"].status == pb.BRANCH_STATUS_OK and len(rec.hits) == 10
    assert stats["behavior"].candidates == 0 and not rec.degraded
    assert all(any(s.branch == "popular" for s in h.sources) for h in rec.hits)


def test_recommend_long_term_history_for_a_known_user(stub: search_pb2_grpc.SearchServiceStub) -> None:
    rec = stub.Recommend(
        pb.RecommendRequest(collection="movielens", user_id="196", top_k=10, debug=True), timeout=5
    )
    stats = {b.branch: b for b in rec.branch_stats}
    assert stats["behavior"].status == pb.BRANCH_STATUS_OK and stats["behavior"].candidates > 0


def test_recommend_near_a_location(stub: search_pb2_grpc.SearchServiceStub) -> None:
    req = pb.RecommendRequest(collection="geonames", top_k=10, radius_m=100_000, debug=True)
    req.location.lat, req.location.lon = 48.8566, 2.3522  # Paris
    rec = stub.Recommend(req, timeout=5)
    assert rec.hits and all(h.distance_m <= 100_000 for h in rec.hits)
    assert rec.hits[0].title.startswith("Paris")
    dists = [h.distance_m for h in rec.hits]
    assert dists == sorted(dists)  # geo is the only signal here: nearest first


def test_search_radius_filters_every_branch(stub: search_pb2_grpc.SearchServiceStub) -> None:
    req = pb.SearchRequest(collection="geonames", query="san", top_k=20, radius_m=300_000, debug=True)
    req.location.lat, req.location.lon = 37.77, -122.42  # San Francisco
    resp = stub.Search(req, timeout=5)
    assert resp.hits
    for h in resp.hits:
        assert haversine_m(37.77, -122.42, h.location.lat, h.location.lon) <= 300_000
    assert {b.branch: b.status for b in resp.branch_stats}["geo"] == pb.BRANCH_STATUS_OK


def test_recommend_rejects_bad_input(stub: search_pb2_grpc.SearchServiceStub) -> None:
    req = pb.RecommendRequest(collection="geonames", radius_m=10)
    with pytest.raises(grpc.RpcError) as ei:
        stub.Recommend(req, timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "location is missing" in ei.value.details()


def test_dead_redis_gives_degraded_answer_not_error(movielens_snapshot: Path) -> None:
    from tests.conftest import free_port

    settings = load_settings()
    store = RedisRecentStore(
        RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_ms=30, connect_timeout_ms=30)
    )
    reg = Registry()
    reg.put(Collection(movielens_snapshot, settings.for_collection("movielens")))
    svc = SearchService(settings, reg, recent=store)

    from retriever.core.metrics import BRANCH_RESULTS

    errors = BRANCH_RESULTS.labels("movielens", "behavior", "error")
    before = errors._value.get()

    async def go() -> None:
        t0 = time.perf_counter()
        res = await svc.search(
            SearchQuery(collection="movielens", text="star wars", user_id="196", debug=True)
        )
        assert time.perf_counter() - t0 < 1.0
        stats = {b.branch: b for b in res.branch_stats}
        assert stats["behavior"].status is BranchStatus.ERROR and "redis" in stats["behavior"].detail
        assert res.degraded and res.hits and res.hits[0].title == "Star Wars"
        rec = await svc.recommend(SearchQuery(collection="movielens", user_id="196", location=GeoPoint(0, 0)))
        assert rec.degraded and rec.hits  # popularity still answers
        await svc.aclose()

    asyncio.run(go())
    assert errors._value.get() >= before + 2  # each failed-open branch call is counted


def test_logged_events_reach_the_models_item_windows_over_grpc(
    movielens_snapshot: Path, redis_url: str, tmp_path: Path
) -> None:
    """LogEvents over gRPC → the items' states in the real Redis → the ranking stage's read → the model's
    `item_events_*` inputs of each hit (debug)."""
    from ranker.model import train_synthetic
    from ranker.schema import DEFAULT_SCHEMA
    from tests.conftest import ServerThread

    mlp, metrics, _, _ = train_synthetic(DEFAULT_SCHEMA, n=2000, max_epochs=3)
    model = mlp.to_onnx(tmp_path / "m.onnx", schema=DEFAULT_SCHEMA, model_version="iw", metrics=metrics)
    srv = ServerThread(
        [movielens_snapshot], redis_url, collections={"movielens": {"ranker": {"model_path": str(model)}}}
    )
    user = f"iw-{time.time_ns()}"

    def windows(stub: search_pb2_grpc.SearchServiceStub) -> dict[str, tuple[float, float, float]]:
        # top_k above the candidate count: every candidate is a hit, with the inputs the model scored.
        resp = stub.Recommend(
            pb.RecommendRequest(collection="movielens", user_id=user, top_k=1000, debug=True)
        )
        assert not resp.degraded and "item_events_1h" in resp.debug.feature_names
        names = ("item_events_1h", "item_events_1d", "item_events_7d")
        return {h.id: tuple(math.expm1(h.debug.features[n]) for n in names) for h in resp.hits}  # type: ignore[misc]

    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            stub.LogEvents(
                pb.LogEventsRequest(
                    collection="movielens", events=[_ev("s", user, STAR_WARS, ts=time.time())]
                )
            )
            before = windows(stub)
            target = next(iter(before))
            now = time.time()
            crowd = [_ev(f"c{i}", f"{user}-crowd{i}", target, ts=now - 60) for i in range(3)]
            assert stub.LogEvents(pb.LogEventsRequest(collection="movielens", events=crowd)).accepted == 3
            after = windows(stub)
    finally:
        srv.close()
    # Three more events a minute old: +3·exp(-60/τ) in each window (others' events on it, if any, as before).
    gained = [a - b for a, b in zip(after[target], before[target], strict=True)]
    assert gained == pytest.approx([3 * math.exp(-60 / tau) for tau in (3600, 86400, 604800)], rel=1e-3)
    untouched = [i for i in before if i != target and i in after][:20]
    assert all(after[i] == pytest.approx(before[i], rel=1e-3, abs=1e-6) for i in untouched)


def test_recommend_through_the_ease_table(movielens_snapshot: Path, redis_url: str) -> None:
    """The behavior branch set to the EASE table recalls, through real Redis, items that EASE rows of the
    user's real-time seeds point to with positive weight, and its list differs from Swing's."""
    settings = load_settings()
    base = settings.for_collection("movielens")
    user = f"ease-{time.time_ns()}"  # a user of our own: their two real-time events are the only seeds
    lists: dict[str, list[str]] = {}

    async def go() -> None:
        for method in ("ease", "swing"):
            cs = base.model_copy(update={"behavior": base.behavior.model_copy(update={"method": method})})
            coll = Collection(movielens_snapshot, cs)
            reg = Registry()
            reg.put(coll)
            store = RedisRecentStore(settings.redis.model_copy(update={"url": redis_url}))
            svc = SearchService(settings, reg, recent=store)
            if method == "ease":
                now = time.time()
                events = [
                    UserEvent(f"{user}-{i}", user, it, "click", now, 1.0)
                    for i, it in enumerate((STAR_WARS, EMPIRE))
                ]
                assert all(await svc.recent.append("movielens", events))
            q = SearchQuery(
                collection="movielens", user_id=user, top_k=20, branches=("behavior",), debug=True
            )
            res = await svc.recommend(q)
            lists[method] = [h.id for h in res.hits]
            if method == "ease":
                behavior = coll.behavior
                assert behavior is not None
                pointed = set()
                for item in (STAR_WARS, EMPIRE):
                    neighbours, weights = behavior.neighbors("ease", coll.forward.ord_of[item])
                    pointed |= {
                        coll.forward.ids[int(j)] for j, w in zip(neighbours, weights, strict=True) if w > 0
                    }
                assert len(res.hits) == 20 and set(lists[method]) <= pointed
                assert all(src.branch == "behavior" for h in res.hits for src in h.sources)
                assert JEDI in lists[method][:5]  # the trilogy's third film
            await svc.aclose()

    asyncio.run(go())
    assert lists["ease"] != lists["swing"]
