"""The contract every `Ranker` passes. Subclass `RankerContract` and provide the fixtures:

- `ranker`: the ranker under test;
- `generation`: the loaded `Collection` the candidates come from (a `RankingContext`);
- `fused`: fused candidates as the ranking stage receives them (from the service's own recall).

Checks what the service relies on: the answer is a reordering of the input (nothing added, lost or
duplicated, provenance kept), best first, deterministic, safe under concurrency, with or without the
user's counters and a request location.
"""

from __future__ import annotations

import asyncio
import copy

import pytest

from common.types import Fused, GeoPoint, UserCounters
from ranker.base import Ranker
from retriever.core.types import SearchQuery
from retriever.generations import Collection

COUNTERS = UserCounters(events_total=12, weight_sum=30.0, distinct_items=9, last_ts=1.7e9)


class RankerContract:
    def rank(
        self,
        ranker: Ranker,
        generation: Collection,
        fused: list[Fused],
        *,
        counters: UserCounters | None = None,
        location: GeoPoint | None = None,
    ) -> list[Fused]:
        query = SearchQuery(collection=generation.name, location=location)
        # A ranker may rescore in place: every call gets its own copy of the candidates.
        return asyncio.run(ranker.rank(query, copy.deepcopy(fused), generation, counters))

    def test_is_a_ranker(self, ranker: Ranker) -> None:
        assert isinstance(ranker, Ranker)
        assert isinstance(ranker.name, str) and ranker.name

    @pytest.mark.parametrize("counters", [None, COUNTERS], ids=["no-user", "user-counters"])
    @pytest.mark.parametrize("location", [None, GeoPoint(40.7, -74.0)], ids=["no-location", "location"])
    def test_reorders_without_adding_or_losing(
        self,
        ranker: Ranker,
        generation: Collection,
        fused: list[Fused],
        counters: UserCounters | None,
        location: GeoPoint | None,
    ) -> None:
        assert len(fused) >= 2, "the fixture needs candidates to order"
        got = self.rank(ranker, generation, fused, counters=counters, location=location)
        assert sorted(f.ordinal for f in got) == sorted(f.ordinal for f in fused)
        by_ord = {f.ordinal: f.sources for f in fused}
        assert all(f.sources == by_ord[f.ordinal] for f in got), "provenance must survive ranking"
        scores = [f.score for f in got]
        assert scores == sorted(scores, reverse=True), "best first"

    def test_empty_in_empty_out(self, ranker: Ranker, generation: Collection) -> None:
        assert self.rank(ranker, generation, []) == []

    def test_deterministic_and_safe_under_concurrency(
        self, ranker: Ranker, generation: Collection, fused: list[Fused]
    ) -> None:
        want = [f.ordinal for f in self.rank(ranker, generation, fused, counters=COUNTERS)]

        async def many() -> list[list[Fused]]:
            query = SearchQuery(collection=generation.name)
            return await asyncio.gather(
                *(ranker.rank(query, copy.deepcopy(fused), generation, COUNTERS) for _ in range(8))
            )

        for got in asyncio.run(many()):
            assert [f.ordinal for f in got] == want
