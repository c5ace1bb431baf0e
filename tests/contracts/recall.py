"""The contract every `RecallBranch` passes. Subclass `RecallBranchContract` and provide the fixtures:

- `NAME` (class attribute): the registered branch name under test;
- `tiny_bare_generation`: a generation with only text and forward parts (conftest provides one);
- `generation`: a loaded `Collection` whose snapshot can feed the branch;
- `query`: a `SearchQuery` (collection, text / user / location) for which the branch finds candidates;
- `filters`: `Filters` that restrict the collection to a non-empty strict subset.

The suite runs the branch through real engines (no mocks) and checks what the executor and the merger
rely on: registration, the factory, quotas, best-first order, valid and unique ordinals, filters applied
inside the branch, statelessness under concurrency.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from common.settings import QuarrySettings
from common.types import Candidate
from retriever.core.types import Filters, SearchQuery
from retriever.features.recent import MemoryRecentStore
from retriever.generations import Collection
from retriever.recall import BranchUnavailable, RecallBranch, RecallRequest, analyze_query, branch_class


class RecallBranchContract:
    #: The registered branch name under test (a class constant, so coverage of the registry is checkable).
    NAME: str

    @pytest.fixture
    def branch_name(self) -> str:
        return self.NAME

    @pytest.fixture
    def pool(self) -> Iterator[ThreadPoolExecutor]:
        with ThreadPoolExecutor(4) as pool:
            yield pool

    @pytest.fixture
    def branch(self, generation: Collection, branch_name: str) -> RecallBranch:
        assert branch_name in generation.branches, (
            f"{branch_name} is not enabled on the test generation "
            f"(unavailable: {generation.unavailable.get(branch_name)})"
        )
        return generation.branches[branch_name]

    def request(
        self, generation: Collection, query: SearchQuery, pool: ThreadPoolExecutor, **changes: object
    ) -> RecallRequest:
        q = dataclasses.replace(query, **changes)  # type: ignore[arg-type]
        # The service's own query analysis, so the branch sees exactly what it sees when serving.
        terms = analyze_query(q.text, generation.analyzers, QuarrySettings().limits.max_query_terms)
        return RecallRequest(
            query=q, collection=generation, pool=pool, terms=terms, recent=MemoryRecentStore()
        )

    def recall(self, branch: RecallBranch, request: RecallRequest, quota: int) -> list[Candidate]:
        reason = branch.skip_reason(request)
        assert reason is None, f"the contract query must not be skipped (skip_reason: {reason})"
        return asyncio.run(branch.recall(request, quota))

    # -- registration and factory --------------------------------------------------------------------

    def test_registered_under_its_name(self, branch: RecallBranch, branch_name: str) -> None:
        assert isinstance(branch, RecallBranch)
        assert branch.name == branch_name
        assert type(branch) is branch_class(branch_name)

    def test_factory_builds_from_the_generation_or_says_why_not(
        self, generation: Collection, branch_name: str, tiny_bare_generation: Collection
    ) -> None:
        cls = branch_class(branch_name)
        for gen in (generation, tiny_bare_generation):
            options = getattr(gen.settings, branch_name) if cls.options is not None else None
            try:
                built = cls.create(gen, options)
            except BranchUnavailable as exc:
                assert gen is tiny_bare_generation and str(exc), "unavailability needs a reason"
            else:
                assert isinstance(built, cls)

    # -- answers ----------------------------------------------------------------------------------------

    def test_candidates_are_valid_unique_and_best_first(
        self, branch: RecallBranch, generation: Collection, query: SearchQuery, pool: ThreadPoolExecutor
    ) -> None:
        got = self.recall(branch, self.request(generation, query, pool), 50)
        assert got, "the contract query must find candidates"
        assert all(isinstance(c, Candidate) for c in got)
        ords = [c.ordinal for c in got]
        assert all(isinstance(o, int) and 0 <= o < len(generation.forward) for o in ords)
        assert len(set(ords)) == len(ords), "a branch returns each item once"
        scores = [c.score for c in got]
        assert all(np.isfinite(scores))
        assert scores == sorted(scores, reverse=True), "best first"

    @pytest.mark.parametrize("quota", [1, 3])
    def test_quota_is_respected(
        self,
        branch: RecallBranch,
        generation: Collection,
        query: SearchQuery,
        pool: ThreadPoolExecutor,
        quota: int,
    ) -> None:
        full = self.recall(branch, self.request(generation, query, pool), 50)
        got = self.recall(branch, self.request(generation, query, pool), quota)
        assert len(got) == min(quota, len(full))
        assert [c.ordinal for c in got] == [c.ordinal for c in full[:quota]], "a smaller quota is a prefix"

    def test_filters_apply_inside_the_branch(
        self,
        branch: RecallBranch,
        generation: Collection,
        query: SearchQuery,
        filters: Filters,
        pool: ThreadPoolExecutor,
    ) -> None:
        mask = generation.filter_mask(filters)
        assert mask is not None and 0 < mask.sum() < len(mask), "the fixture filter must restrict"
        got = self.recall(branch, self.request(generation, query, pool, filters=filters), 50)
        assert got, "the contract query must find candidates under the fixture filter too"
        assert all(mask[c.ordinal] for c in got), "a filtered-out item was returned"

    def test_stateless_under_concurrency(
        self, branch: RecallBranch, generation: Collection, query: SearchQuery, pool: ThreadPoolExecutor
    ) -> None:
        want = self.recall(branch, self.request(generation, query, pool), 20)

        async def many() -> list[list[Candidate]]:
            reqs = [self.request(generation, query, pool) for _ in range(8)]
            return await asyncio.gather(*(branch.recall(r, 20) for r in reqs))

        for got in asyncio.run(many()):
            assert [c.ordinal for c in got] == [c.ordinal for c in want]
