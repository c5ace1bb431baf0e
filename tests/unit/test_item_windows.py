"""The items' decayed window counts (retriever.features.windows): the incremental state equals the
definition whatever order events arrive in, and the embedded store stays bounded."""

from __future__ import annotations

import math
import random

import pytest

from retriever.features.windows import TAUS, MemoryItemWindows, add_event, counts_many, decode_many

NOW = 1_700_000_000.0


def definition(now: float, times: list[float]) -> list[float]:
    """Each event weighs exp(-(now - t) / tau); an event after `now` weighs 1."""
    return [sum(math.exp(-max(now - t, 0.0) / tau) for t in times) for tau in TAUS]


@pytest.mark.parametrize("seed", range(20))
def test_the_state_is_the_definition_in_any_arrival_order(seed: int) -> None:
    rnd = random.Random(seed)
    times = [NOW - rnd.uniform(0, 20 * 86400) for _ in range(rnd.randrange(1, 60))]
    state = None
    for t in times:  # random order, as events arrive
        state = add_event(state, t)
    newest = max(times)
    for now in (newest - 3600, newest, newest + rnd.uniform(0, 86400), newest + 30 * 86400):
        want = definition(now, times) if now >= newest else state[1:]
        assert counts_many([state, None], now) == [pytest.approx(want), (0, 0, 0)]


def test_a_steady_rate_reads_as_events_per_window() -> None:
    # One event a minute for 60 days: each count ≈ the events in one time constant (60, 1440, 10080).
    state = None
    for minute in range(60 * 1440):
        state = add_event(state, NOW + 60 * minute)
    (got,) = counts_many([state], NOW + 60 * (60 * 1440 - 1))
    assert got == pytest.approx([tau / 60 for tau in TAUS], rel=0.01)


def test_the_stored_form_round_trips() -> None:
    # What Redis's script writes (%.17g) reads back to the same doubles.
    state = add_event(add_event(None, NOW), NOW + 1234.5678)
    text = ",".join(f"{x:.17g}" for x in state)
    assert decode_many([text.encode(), b"1,2,3,4"]) == [state, (1.0, 2.0, 3.0, 4.0)]
    with pytest.raises(ValueError, match="not 't,a,b,c'"):
        decode_many([b"1,2,3"])


def test_the_embedded_store_is_bounded() -> None:
    store = MemoryItemWindows(max_items=3)
    for i, item in enumerate("abcda"):
        store.add("c", item, NOW + i)
    # "b" was the least recently updated of four: dropped; "a" was updated again, so kept.
    assert [round(x[0], 6) > 0 for x in store.counts("c", list("abcd"), NOW + 5)] == [True, False, True, True]


def test_the_stamped_cache_forgets_each_entry_after_its_ttl_and_all_past_its_size() -> None:
    from retriever.features.recent import StampedCache

    cache = StampedCache(maxsize=3, ttl_s=10.0)
    miss = object()
    cache.put_many([("a", 1), ("b", None)], now=100.0)
    cache.put_many([("c", 3)], now=105.0)
    assert cache.get_many(["a", "b", "c", "d"], 109.9, miss) == [1, None, 3, miss]  # None is a value
    assert cache.get_many(["a", "b", "c"], 110.0, miss) == [miss, miss, 3]  # a and b are 10 s old
    cache.pop("c")
    assert cache.get_many(["c"], 106.0, miss) == [miss]
    cache.put_many([("d", 4), ("e", 5)], now=111.0)  # 2 + 2 > 3: the old entries go first
    assert cache.get_many(["a", "b", "d", "e"], 112.0, miss) == [miss, miss, 4, 5]
