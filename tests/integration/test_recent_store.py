"""One contract suite, run against the embedded store and a real Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from common.settings import RedisSettings
from retriever.features.recent import (
    MemoryRecentStore,
    RecentStore,
    RedisRecentStore,
    StoreUnavailable,
    UserEvent,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def ev(eid: str, user: str = "u1", item: str = "i1", ts: float = 1.0) -> UserEvent:
    return UserEvent(event_id=eid, user_id=user, item_id=item, type="click", ts=ts, weight=1.0)


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RecentStore]:
    if request.param == "memory":
        s: RecentStore = MemoryRecentStore(max_len=5, dedup_window=20)
    else:
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushdb()
        s = RedisRecentStore(RedisSettings(url=url, recent_max_len=5, dedup_window=20, socket_timeout_ms=500))
    yield s
    await s.close()


async def test_append_and_recent_newest_first(store: RecentStore) -> None:
    assert await store.append(
        "c", [ev("e1", item="a"), ev("e2", item="b"), ev("e3", user="u2", item="z")]
    ) == [True, True, True]
    assert [r.item_id for r in await store.recent("c", "u1", 10)] == ["b", "a"]
    assert [r.item_id for r in await store.recent("c", "u2", 10)] == ["z"]
    assert await store.recent("c", "nobody", 10) == []
    assert await store.recent("other-collection", "u1", 10) == []


async def test_idempotent_on_event_id(store: RecentStore) -> None:
    assert await store.append("c", [ev("e1", item="a")]) == [True]
    assert await store.append("c", [ev("e1", item="a"), ev("e2", item="b"), ev("e2", item="b")]) == [
        False,
        True,
        False,
    ]
    assert [r.item_id for r in await store.recent("c", "u1", 10)] == ["b", "a"]
    # the same event id from another user is a different event
    assert await store.append("c", [ev("e1", user="u9")]) == [True]


async def test_bounded_length(store: RecentStore) -> None:
    await store.append("c", [ev(f"e{i}", item=f"i{i}") for i in range(12)])
    got = await store.recent("c", "u1", 100)
    assert [r.item_id for r in got] == ["i11", "i10", "i9", "i8", "i7"]
    assert [r.item_id for r in await store.recent("c", "u1", 2)] == ["i11", "i10"]


async def test_fields_round_trip(store: RecentStore) -> None:
    await store.append("c", [UserEvent("x", "u1", "電影", "rating", 1700000000.5, 4.0)])
    (r,) = await store.recent("c", "u1", 1)
    assert (r.item_id, r.type, r.ts, r.weight) == ("電影", "rating", 1700000000.5, 4.0)


async def test_redis_ttl_is_set(redis_url: str) -> None:
    import redis

    s = RedisRecentStore(RedisSettings(url=redis_url, recent_ttl_s=60))
    await s.append("ttl", [ev("e1")])
    await s.close()
    r = redis.Redis.from_url(redis_url)
    keys = r.keys("quarry:{ttl:u1}:*")
    assert len(keys) == 4 and all(0 < r.ttl(k) <= 60 for k in keys)  # recent, seen, counters, items


async def test_dead_redis_fails_fast_and_breaker_opens() -> None:
    from tests.conftest import free_port

    s = RedisRecentStore(
        RedisSettings(
            url=f"redis://127.0.0.1:{free_port()}/0",
            socket_timeout_ms=50,
            connect_timeout_ms=50,
            breaker_failures=2,
        )
    )
    loop = asyncio.get_running_loop()
    for _ in range(2):
        t0 = loop.time()
        with pytest.raises(StoreUnavailable):
            await s.recent("c", "u1", 5)
        assert loop.time() - t0 < 0.5
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        await s.recent("c", "u1", 5)
    await s.close()


async def test_realtime_counters_are_idempotent(store: RecentStore) -> None:
    assert await store.counters("c", "u1") == type(await store.counters("c", "u1"))()  # zeros when unknown
    await store.append(
        "c", [ev("e1", item="a", ts=10.0), ev("e2", item="b", ts=30.0), ev("e3", item="a", ts=20.0)]
    )
    await store.append("c", [ev("e2", item="b", ts=30.0)])  # a retry changes nothing
    c = await store.counters("c", "u1")
    assert (c.events_total, c.distinct_items, c.last_ts) == (3, 2, 30.0)
    assert c.weight_sum == pytest.approx(3.0) and c.avg_weight == pytest.approx(1.0)
    # A new event is visible at once (the append invalidates any cached counters).
    await store.append("c", [UserEvent("e4", "u1", "z", "rating", 40.0, 5.0)])
    c = await store.counters("c", "u1")
    assert (c.events_total, c.distinct_items, c.last_ts) == (4, 3, 40.0)
    assert c.avg_weight == pytest.approx(2.0)
    assert (await store.counters("c", "u2")).events_total == 0


async def test_offline_profile_job_matches_online_path_and_is_idempotent(store: RecentStore) -> None:
    from common.catalog import Event
    from quarry.profiles import load_profiles

    events = [Event(user="p", item=f"i{i % 3}", type="rating", ts=float(i), weight=2.0) for i in range(7)]
    assert await load_profiles(store, "prof", events) == (7, 0)
    assert await load_profiles(store, "prof", events) == (0, 7)  # re-run: nothing counted twice
    c = await store.counters("prof", "p")
    assert (c.events_total, c.distinct_items, c.last_ts, c.avg_weight) == (7, 3, 6.0, 2.0)
    assert [r.item_id for r in await store.recent("prof", "p", 3)] == ["i0", "i2", "i1"]
