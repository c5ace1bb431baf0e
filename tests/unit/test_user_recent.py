"""One read of the user's recent events per request, shared by every stage that wants them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.settings import QuarrySettings
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore, RecentItem, UserEvent, UserRecent
from retriever.generations import Collection, Registry
from retriever.service import SearchService


class CountingStore(MemoryRecentStore):
    """The embedded store, counting reads of recent events (and optionally slow)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.reads: list[int] = []
        self.delay_s = delay_s

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        self.reads.append(n)
        await asyncio.sleep(self.delay_s)
        return await super().recent(collection, user_id, n)


def test_readers_share_one_read_and_a_cancelled_one_does_not_cancel_it() -> None:
    store = CountingStore(delay_s=0.05)

    async def go() -> None:
        await store.append("c", [UserEvent(f"e{i}", "u", f"i{i}", "view", float(i), 1.0) for i in range(30)])
        reader = UserRecent(store, "c", "u", 25)
        impatient = asyncio.create_task(reader.get(10))
        patient = asyncio.create_task(reader.get(20))
        await asyncio.sleep(0.01)
        impatient.cancel()  # a branch at its deadline
        got = await patient
        assert [r.item_id for r in got] == [f"i{i}" for i in range(29, 9, -1)]
        assert (
            len(await reader.get(25)) == 25 and len(await reader.get(30)) == 30
        )  # beyond the limit: own read
        assert store.reads == [25, 30]
        reader.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def service_and_store(movielens_snapshot: Path) -> tuple[SearchService, CountingStore]:
    settings = QuarrySettings()
    reg = Registry()
    reg.put(Collection(movielens_snapshot, settings.for_collection("movielens")))
    store = CountingStore()
    return SearchService(settings, reg, recent=store), store


@pytest.mark.parametrize("kind", ["search", "recommend"])
def test_one_read_per_request(service_and_store: tuple[SearchService, CountingStore], kind: str) -> None:
    svc, store = service_and_store

    async def go() -> None:
        await store.append("movielens", [UserEvent("x", "reader", "50", "rating", 1.0, 5.0)])
        store.reads.clear()
        if kind == "search":
            res = await svc.search(SearchQuery(collection="movielens", text="star", user_id="reader"))
            ran = {b.branch for b in res.branch_stats if b.status.value == "ok"}
            assert {"behavior", "preference"} <= ran  # both read the user's events ...
        else:
            res = await svc.recommend(SearchQuery(collection="movielens", user_id="reader"))
            assert "50" not in [h.id for h in res.hits]  # ... and Recommend's seen-filter too
        assert len(store.reads) == 1, store.reads  # ... from one read

    asyncio.run(go())


def test_user_counters_count_the_users_recent_windows(
    service_and_store: tuple[SearchService, CountingStore],
) -> None:
    svc, store = service_and_store
    coll = svc.registry.get("movielens")
    now = 1_900_000_000.0
    ages = [100.0, 2 * 3600.0, 3 * 86400.0, 30 * 86400.0]  # 100 s, 2 h, 3 d, 30 d before `now`
    events = [UserEvent(f"w{i}", "windowed", "50", "rating", now - a, 4.0) for i, a in enumerate(ages)]

    async def go() -> None:
        await store.append("movielens", events)
        c = await svc.user_counters(coll, "windowed", now=now)
        assert c.recent_windows == (1, 2, 3) and c.events_total == 4
        assert c.tag_affinity is not None and c.tag_affinity.sum() == pytest.approx(1.0)
        later = await svc.user_counters(coll, "windowed", now=now + 40 * 86400.0)
        assert later.recent_windows == (0, 0, 0)

    asyncio.run(go())
