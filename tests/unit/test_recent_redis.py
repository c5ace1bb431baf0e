"""The Redis user store's pieces that need no server: a user's keys share one Redis Cluster slot (the
append script touches all four in one call) while users spread over the slots; `redis_client` picks the
client the settings name; a call that outlives its deadline fails like any other Redis failure."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from common.settings import RedisSettings
from retriever.features.recent import RedisRecentStore, StoreUnavailable, redis_client, redis_keys

# The snapshot manifest's rule for collection names (common/snapshot.py); user ids are any text.
COLLECTIONS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


@given(COLLECTIONS, st.text())
def test_one_users_keys_share_one_slot(collection: str, user: str) -> None:
    keys = redis_keys(collection, user)
    assert len(set(keys)) == 4
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_users_spread_over_slots() -> None:
    slots = {key_slot(redis_keys("movies", f"user-{i}")[0].encode()) for i in range(1000)}
    # 1000 users over 16384 slots: a tag that left the user out would put them all in one slot.
    assert len(slots) > 900


@pytest.mark.parametrize("cluster", [False, True])
async def test_client_follows_the_cluster_setting_and_never_retries(cluster: bool) -> None:
    # Constructing an asyncio client connects to nothing yet.
    client = redis_client(RedisSettings(url="redis://127.0.0.1:7000/0", cluster=cluster))
    assert isinstance(client, redis.asyncio.RedisCluster) is cluster
    retry = client.retry if isinstance(client, redis.asyncio.RedisCluster) else client.get_retry()
    assert retry is not None and retry.get_retries() == 0  # repeated failures are the breaker's business
    await client.aclose()


async def test_a_call_past_its_deadline_fails_and_counts_for_the_breaker() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:7000/0", socket_timeout_ms=20, connect_timeout_ms=30)
    s = RedisRecentStore(settings.model_copy(update={"breaker_failures": 1}))
    never = asyncio.Event()
    with pytest.raises(StoreUnavailable, match="no answer within 50 ms"):
        await s._guard(never.wait, "recent")
    assert s.breaker.is_open
    await s.close()


def test_calls_in_flight_together_fail_as_one() -> None:
    """The breaker counts failures in a row in time: calls that were all in flight when one stall hit
    (of Redis, or of this process's event loop) count once; calls made after a failure count anew."""
    import time

    from retriever.features.recent import CircuitBreaker

    b = CircuitBreaker(failures=3, open_s=60)
    started = time.monotonic()
    for _ in range(8):  # eight reads in flight through one stall
        b.failure(started)
    assert not b.is_open
    b.failure(time.monotonic())  # a call made after that failure
    assert not b.is_open
    b.failure(started)  # still one of the first eight: no count
    assert not b.is_open
    b.failure(time.monotonic())  # the third in a row
    assert b.is_open
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        b.check()

    # A success in between resets the run.
    b = CircuitBreaker(failures=2, open_s=60)
    b.failure(time.monotonic())
    b.success()
    b.failure(time.monotonic())
    assert not b.is_open
    b.failure(time.monotonic())
    assert b.is_open


def test_an_open_breaker_reopens_at_the_first_failure_after_it_closes() -> None:
    import time

    from retriever.features.recent import CircuitBreaker

    b = CircuitBreaker(failures=2, open_s=0.01)
    b.failure(time.monotonic())
    b.failure(time.monotonic())
    assert b.is_open
    time.sleep(0.02)
    assert not b.is_open
    b.failure(time.monotonic())  # the trial call after open_s: still failing, open again at once
    assert b.is_open


@given(
    st.lists(
        st.tuples(st.text(min_size=1), st.text(min_size=1), st.floats(0, 2e9), st.floats(-10, 10)),
        max_size=60,
    )
)
def test_stored_events_parse_back_in_one_go(events: list[tuple[str, str, float, float]]) -> None:
    """What the append path stores (`_payload`: any item id or type text, unicode and quotes included)
    reads back as the same events in the same order from one json.loads over the list; a payload that is
    not exactly one JSON object is refused, never read as several events."""
    from retriever.features.recent import RecentItem, UserEvent, _parse_all, _payload

    stored = [
        _payload(UserEvent(event_id="e", user_id="u", item_id=i, type=y, ts=t, weight=w)).encode()
        for i, y, t, w in events
    ]
    assert _parse_all(stored) == [RecentItem(i, y, t, w) for i, y, t, w in events]
    with pytest.raises(ValueError, match="not one JSON object"):
        _parse_all([b'{"i":"a","y":"click","t":1,"w":1},{"i":"b","y":"click","t":2,"w":1}'])
