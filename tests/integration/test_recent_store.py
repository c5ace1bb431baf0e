"""One contract suite, run against the embedded store, a real Redis server and a real 3-master Redis
Cluster; then what only Redis (TTL, a dead server) and only a cluster (spread, a dead master) can show."""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis

from common.settings import RedisSettings
from retriever.features.recent import (
    _APPEND_SHA,
    _UPDATE_SHA,
    MemoryRecentStore,
    RecentStore,
    RedisRecentStore,
    StoreUnavailable,
    UserEvent,
    redis_client,
    redis_keys,
)
from retriever.features.windows import STATE_TTL_S, TAUS, item_key
from tests.integration.redis_cluster import (  # noqa: F401 (fixtures are found by name in the module)
    RedisClusterProcs,
    private_redis_cluster_fixture,
    redis_cluster_fixture,
    start_redis_cluster,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def ev(eid: str, user: str = "u1", item: str = "i1", ts: float = 1.0) -> UserEvent:
    return UserEvent(event_id=eid, user_id=user, item_id=item, type="click", ts=ts, weight=1.0)


def fresh_redis(request: pytest.FixtureRequest, kind: str, **overrides: Any) -> RedisSettings:
    """Settings for an emptied real Redis: one server ("redis") or a 3-master cluster ("redis-cluster",
    its URL naming one node)."""
    if kind == "redis":
        url, cluster = request.getfixturevalue("redis_url"), False
    else:
        url, cluster = request.getfixturevalue("redis_cluster").url, True
    settings = RedisSettings(url=url, cluster=cluster, socket_timeout_ms=500, **overrides)
    client = redis_client(settings, sync=True)
    client.flushdb()  # a cluster client sends it to every master
    client.close()
    return settings


@pytest_asyncio.fixture(loop_scope="session", params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RecentStore]:
    if request.param == "memory":
        s: RecentStore = MemoryRecentStore(max_len=5, dedup_window=20)
    else:
        s = RedisRecentStore(fresh_redis(request, request.param, recent_max_len=5, dedup_window=20))
    yield s
    await s.close()


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_settings(request: pytest.FixtureRequest) -> RedisSettings:
    return fresh_redis(request, request.param)


def masters(settings: RedisSettings) -> list[redis.Redis]:
    """A plain client per master, to see what each node itself holds."""
    if not settings.cluster:
        return [redis.Redis.from_url(settings.url)]
    cluster = redis_client(settings, sync=True)
    try:
        return [redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()]
    finally:
        cluster.close()


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


async def test_redis_ttl_is_set(redis_settings: RedisSettings) -> None:
    s = RedisRecentStore(redis_settings.model_copy(update={"recent_ttl_s": 60}))
    await s.append("ttl", [ev("e1")])
    await s.close()
    r = redis_client(redis_settings, sync=True)
    # recent, seen, counters, items (a missing key's TTL is -2)
    assert all(0 < r.ttl(k) <= 60 for k in redis_keys("ttl", "u1"))
    r.close()


async def test_lost_script_cache_is_reloaded_without_losing_or_repeating_events(
    redis_settings: RedisSettings,
) -> None:
    # A restarted or failed-over node, or SCRIPT FLUSH, forgets the append script: the calls that hit
    # NOSCRIPT must run again (with the script's text), and only those.
    if shutil.which("redis-server") is None:
        pytest.skip("SCRIPT FLUSH is server-wide: not on the shared Redis that redis_url falls back to")
    s = RedisRecentStore(redis_settings)
    users = [f"u{i}" for i in range(30)]  # over every master of a cluster
    assert await s.append("c", [ev("e1", user=u) for u in users]) == [True] * len(users)
    nodes = masters(redis_settings)
    for node in nodes:
        node.script_flush()
        assert node.script_exists(_APPEND_SHA) == [False]
    retry = [ev("e1", user=u) for u in users] + [ev("e2", user="u0", item="new")]
    assert await s.append("c", retry) == [False] * len(users) + [True]
    assert [node.script_exists(_APPEND_SHA) for node in nodes] == [[True]] * len(nodes)
    assert [r.item_id for r in await s.recent("c", "u0", 5)] == ["new", "i1"]
    assert [(await s.counters("c", u)).events_total for u in users[1:]] == [1] * (len(users) - 1)
    # The items' update script is reloaded the same way (its node forgot it too): each event counted once.
    assert await s.item_windows("c", ["i1", "new"], now=1.0) == [(30.0, 30.0, 30.0), (1.0, 1.0, 1.0)]
    assert [node.script_exists(_UPDATE_SHA) for node in nodes].count([True]) == 1
    await s.close()
    for node in nodes:
        node.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_dead_redis_fails_fast_and_breaker_opens(cluster: bool) -> None:
    from tests.conftest import free_port

    s = RedisRecentStore(
        RedisSettings(
            url=f"redis://127.0.0.1:{free_port()}/0",
            cluster=cluster,
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


async def test_one_stall_of_the_loop_does_not_open_the_breaker(redis_url: str) -> None:
    """Reads in flight while this process's event loop stalls past the socket timeout fail (their answers
    wait in the socket, the timeouts fire first), with Redis healthy: that is one failure for the
    breaker, not one per read; the next read is served."""
    import time

    s = RedisRecentStore(RedisSettings(url=redis_url, socket_timeout_ms=20, breaker_failures=3))
    await s.recent("c", "stall-user", 5)  # connected
    for _ in range(3):
        reads = [asyncio.create_task(s.recent("c", f"stall-user-{i}", 5)) for i in range(8)]
        await asyncio.sleep(0)  # they send
        time.sleep(0.06)  # noqa: ASYNC251 (the point: the loop stalls, as under another request's CPU)
        res = await asyncio.gather(*reads, return_exceptions=True)
        assert all(r == [] or isinstance(r, StoreUnavailable) for r in res), res
        assert not s.breaker.is_open
        assert await s.recent("c", "stall-user", 5) == []
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


NOW = 1_700_000_000.0


def decayed(now: float, *times: float) -> tuple[float, float, float]:
    """The three counts by their definition: each event weighs exp(-(now - t) / tau)."""
    a, b, c = (sum(math.exp(-(now - t) / tau) for t in times) for tau in TAUS)
    return (a, b, c)


async def test_item_windows_count_each_stored_event_once(store: RecentStore) -> None:
    assert await store.item_windows("w", ["a", "nothing"], now=NOW) == [(0.0, 0.0, 0.0)] * 2
    a_times = [NOW - 60, NOW - 2 * 3600, NOW - 3 * 86400, NOW - 10 * 86400]
    await store.append(
        "w",
        [
            # out of time order on purpose: the counts do not depend on the order events arrive in
            ev("e2", item="a", ts=a_times[1]),
            ev("e1", item="a", ts=a_times[0]),
            ev("e4", item="a", ts=a_times[3]),
            ev("e3", item="a", ts=a_times[2]),
            ev("e5", user="u2", item="b", ts=NOW - 1800),
            ev("e6", user="u2", item="電影", ts=NOW - 5),
        ],
    )
    # A retried event (same user, same id) is a duplicate and counts nothing; another user's is new.
    await store.append("w", [ev("e1", item="a", ts=NOW - 60), ev("e1", user="u3", item="a", ts=NOW - 30)])
    got = await store.item_windows("w", ["a", "b", "電影", "nothing", "a"], now=NOW)
    want = [decayed(NOW, *a_times, NOW - 30), decayed(NOW, NOW - 1800), decayed(NOW, NOW - 5), (0, 0, 0)]
    assert got == [pytest.approx(w, rel=1e-12) for w in [*want, want[0]]]
    # In words: a's hour holds its two newest events and a trace of the one 2 h ago; its week, nearly all.
    assert [round(x, 2) for x in got[0]] == [2.11, 2.97, 3.88]
    # Later, every count has decayed; another collection sees none; a clock behind the events takes
    # them at full weight (never more).
    later = NOW + 86400
    assert await store.item_windows("w", ["a"], now=later) == [
        pytest.approx(decayed(later, *a_times, NOW - 30))
    ]
    assert await store.item_windows("other", ["a"], now=NOW) == [(0.0, 0.0, 0.0)]
    assert await store.item_windows("w", ["電影"], now=NOW - 3600) == [(1.0, 1.0, 1.0)]
    assert await store.item_windows("w", [], now=NOW) == []


async def test_item_windows_at_the_clock_see_a_new_event_at_once(store: RecentStore) -> None:
    import time

    await store.append("clock", [ev("c1", item="x", ts=time.time())])
    assert [round(x, 3) for x in (await store.item_windows("clock", ["x"]))[0]] == [1.0, 1.0, 1.0]
    # Redis caches an item's state for counter_cache_ttl_s; this process's append drops it.
    await store.append("clock", [ev("c2", user="u2", item="x", ts=time.time())])
    x, y = await store.item_windows("clock", ["x", "y"])
    assert [round(v, 3) for v in x] == [2.0, 2.0, 2.0] and y == (0.0, 0.0, 0.0)


async def test_redis_item_state_expires_after_the_items_last_event(redis_settings: RedisSettings) -> None:
    s = RedisRecentStore(redis_settings)
    await s.append("exp", [ev("e1", item="a", ts=NOW)])
    await s.close()
    r = redis_client(redis_settings, sync=True)
    assert 0 < r.ttl(item_key("exp", "a")) <= STATE_TTL_S
    r.close()


async def test_offline_profile_job_matches_online_path_and_is_idempotent(store: RecentStore) -> None:
    from common.catalog import Event
    from quarry.profiles import load_profiles

    events = [Event(user="p", item=f"i{i % 3}", type="rating", ts=float(i), weight=2.0) for i in range(7)]
    assert await load_profiles(store, "prof", events) == (7, 0)
    assert await load_profiles(store, "prof", events) == (0, 7)  # re-run: nothing counted twice
    c = await store.counters("prof", "p")
    assert (c.events_total, c.distinct_items, c.last_ts, c.avg_weight) == (7, 3, 6.0, 2.0)
    assert [r.item_id for r in await store.recent("prof", "p", 3)] == ["i0", "i2", "i1"]


# ------------------------------------------------------------------------------ Redis Cluster only


async def breaker_closed(s: RedisRecentStore) -> None:
    while s.breaker.is_open:  # noqa: ASYNC110 (the breaker is a clock, not an event)
        await asyncio.sleep(0.05)


def users_by_master(procs: RedisClusterProcs, collection: str, n: int) -> dict[int, list[str]]:
    """`n` user ids grouped by the port of the master that owns their keys' slot."""
    out: dict[int, list[str]] = {port: [] for port in procs.ports}
    for i in range(n):
        user = f"user-{i}"
        out[procs.port_of(redis_keys(collection, user)[0])].append(user)
    return out


async def test_cluster_spreads_users_over_every_master_and_reads_them_back(
    request: pytest.FixtureRequest, redis_cluster: RedisClusterProcs
) -> None:
    s = RedisRecentStore(fresh_redis(request, "redis-cluster"))
    users = [f"user-{i}" for i in range(60)]
    events = [ev(f"e{j}", user=u, item=f"{u}/{j}", ts=float(j)) for u in users for j in range(2)]
    assert await s.append("spread", events) == [True] * len(events)
    per_node = [redis_cluster.node(port).dbsize() for port in redis_cluster.ports]
    # Four keys a user, plus one per item (its window counts): every item of a collection lives on the
    # master of the collection's hash tag.
    items = [item_key("spread", e.item_id) for e in events]
    assert min(per_node) > 0 and sum(per_node) == 4 * len(users) + len(items)
    assert redis_cluster.node(redis_cluster.port_of(items[0])).exists(*items) == len(items)
    assert (
        await s.item_windows("spread", [e.item_id for e in events[1:7:2]], now=1.0) == [(1.0, 1.0, 1.0)] * 3
    )
    for u in users:
        keys = redis_keys("spread", u)
        # All four keys live on the master that owns their slot (CLUSTER KEYSLOT + CLUSTER SLOTS).
        assert redis_cluster.node(redis_cluster.port_of(keys[0])).exists(*keys) == 4
        assert [r.item_id for r in await s.recent("spread", u, 5)] == [f"{u}/1", f"{u}/0"]
        c = await s.counters("spread", u)
        assert (c.events_total, c.distinct_items, c.last_ts) == (2, 2, 1.0)
    await s.close()
    # The load floor's synchronous read (quarry/load.py) goes through the same helper.
    sync = redis_client(s.s, sync=True)
    pipe = sync.pipeline(transaction=False)
    for u in users:
        pipe.lrange(redis_keys("spread", u)[0], 0, -1)
    assert [len(items) for items in pipe.execute()] == [2] * len(users)
    sync.close()


async def test_offline_profile_job_writes_into_a_cluster(
    tmp_path: Path, request: pytest.FixtureRequest, redis_cluster: RedisClusterProcs
) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    settings = fresh_redis(request, "redis-cluster")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(f'{{"user": "u{i}", "item": "a", "ts": {i}}}\n' for i in range(20)))
    args = ["rank", "load-profiles", "--events", str(events), "--collection", "prof"]
    env = {"QUARRY_REDIS__CLUSTER": "true"}  # the setting's own environment variable
    # CliRunner runs the command's own event loop: in a thread, beside this test's.
    r = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--redis-url", settings.url], env=env)
    assert r.exit_code == 0 and "20 events stored, 0 already present" in r.output, r.output
    assert min(redis_cluster.node(port).dbsize() for port in redis_cluster.ports) > 0
    s = RedisRecentStore(settings)
    assert [(await s.counters("prof", f"u{i}")).events_total for i in range(20)] == [1] * 20
    await s.close()
    r = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--redis-url", f"{settings.url}/3"], env=env
    )
    assert r.exit_code == 2 and "only db 0" in r.output, r.output


async def test_cluster_retries_are_idempotent_across_masters(
    request: pytest.FixtureRequest, redis_cluster: RedisClusterProcs
) -> None:
    s = RedisRecentStore(fresh_redis(request, "redis-cluster"))
    groups = users_by_master(redis_cluster, "retry", 30)
    assert all(groups.values())  # every master owns some of these users
    users = [u for group in groups.values() for u in group]
    first = [ev("e1", user=u, item="a") for u in users]
    assert await s.append("retry", first) == [True] * len(users)
    assert await s.append("retry", first) == [False] * len(users)  # the whole batch again
    # One batch over every master mixing retried and new events: only the new ones count.
    mixed = [e for u in users for e in (ev("e1", user=u, item="a"), ev("e2", user=u, item="b"))]
    assert await s.append("retry", mixed) == [False, True] * len(users)
    for u in users:
        assert [r.item_id for r in await s.recent("retry", u, 5)] == ["b", "a"]
        assert (await s.counters("retry", u)).events_total == 2
    await s.close()


async def test_cluster_hung_master_times_out_its_users_and_retries_store_once(
    private_redis_cluster: RedisClusterProcs,
) -> None:
    procs = private_redis_cluster
    # After a failed command the client re-reads the slot map from a random node, maybe the hung one:
    # the deadline (connect + socket timeout) leaves room for that one timeout in a live user's call.
    settings = RedisSettings(
        url=procs.url, cluster=True, socket_timeout_ms=200, connect_timeout_ms=500, breaker_failures=100
    )
    s = RedisRecentStore(settings)
    groups = users_by_master(procs, "c", 30)
    victim = procs.ports[1]  # not the URL's node, which the client also asks for its command table
    hung, live = groups[victim][0], groups[procs.ports[2]][0]
    assert await s.append("c", [ev("e1", user=hung), ev("e1", user=live)]) == [True, True]
    late = [ev(f"x{i}", user=hung, item=f"x{i}") for i in range(3)]
    procs.pause(victim)
    try:
        for e in late:
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await s.recent("c", hung, 5)
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await s.append("c", [e])
            assert [r.item_id for r in await s.recent("c", live, 5)] == ["i1"]
    finally:
        procs.resume(victim)
    # A timed-out append may still run when the node resumes (it was sent); LogEvents' retry of the same
    # events then stores each exactly once.
    await s.append("c", late)
    assert sorted(r.item_id for r in await s.recent("c", hung, 10)) == ["i1", "x0", "x1", "x2"]
    assert (await s.counters("c", hung)).events_total == 4
    await s.close()


async def test_cluster_killed_master_fails_its_users_and_the_breaker_covers_all(
    private_redis_cluster: RedisClusterProcs,
) -> None:
    procs = private_redis_cluster
    s = RedisRecentStore(
        RedisSettings(
            url=procs.url, cluster=True, socket_timeout_ms=200, breaker_failures=2, breaker_open_s=0.2
        )
    )
    groups = users_by_master(procs, "c", 30)
    victim = procs.ports[1]
    dead, live = groups[victim][0], groups[procs.ports[2]][0]
    assert await s.append("c", [ev("e1", user=dead), ev("e1", user=live)]) == [True, True]
    procs.kill(victim)

    # Users on the dead master fail at once with the node's own error (no client-side retries: a
    # pipeline's retry would first sleep 0.25 s and be cut at the deadline as a TimeoutError), users on
    # the others are answered.
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        await s.counters("c", dead)
    assert [r.item_id for r in await s.recent("c", live, 5)] == ["i1"]
    # One breaker guards the whole store: two failures in a row shut out every user, the live master's
    # too, for breaker_open_s.
    for _ in range(2):
        with pytest.raises(StoreUnavailable, match="ConnectionError"):
            await s.recent("c", dead, 5)
    assert s.breaker.is_open
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        await s.recent("c", live, 5)

    # Once it closes, the live master's users are answered again and the dead master's still fail.
    await breaker_closed(s)
    assert [r.item_id for r in await s.recent("c", live, 5)] == ["i1"]
    assert (await s.counters("c", live)).events_total == 1
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        await s.recent("c", dead, 5)
    # A success resets the count: with live users' calls in between, failures never run to 2 in a row.
    assert [r.item_id for r in await s.recent("c", live, 5)] == ["i1"]
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        await s.recent("c", dead, 5)
    assert not s.breaker.is_open

    # A batch over both masters fails as a whole, but the live user's part is stored: the client's
    # retry of the same batch (idempotent event ids) then counts it once.
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        await s.append("c", [ev("e2", user=dead, item="d"), ev("e2", user=live, item="l")])
    await breaker_closed(s)  # that was the second failure in a row
    assert [r.item_id for r in await s.recent("c", live, 5)] == ["l", "i1"]
    assert await s.append("c", [ev("e2", user=live, item="l")]) == [False]
    assert (await s.counters("c", live)).events_total == 2
    await s.close()


async def test_cluster_requiring_full_coverage_refuses_every_user_once_a_master_fails(tmp_path: Path) -> None:
    # Redis's default (cluster-require-full-coverage yes): a failed master takes every slot down with it.
    procs = start_redis_cluster(tmp_path, extra=["--cluster-node-timeout", "500"])
    try:
        s = RedisRecentStore(RedisSettings(url=procs.url, cluster=True, socket_timeout_ms=500))
        live = users_by_master(procs, "c", 30)[procs.ports[2]][0]
        assert await s.append("c", [ev("e1", user=live)]) == [True]
        procs.kill(procs.ports[1])
        for _ in range(400):  # the survivors mark it failed after cluster-node-timeout, then say "fail"
            if not procs.state_ok(procs.ports[2]):
                break
            await asyncio.sleep(0.05)
        assert not procs.state_ok(procs.ports[2])
        for _ in range(3):  # breaker_failures
            with pytest.raises(StoreUnavailable):
                await s.recent("c", live, 5)
        with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
            await s.counters("c", live)
        await s.close()
    finally:
        procs.stop()
