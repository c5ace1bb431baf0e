"""The recall-branch Protocol: the one extension point every recall source implements.

A branch is constructed once per loaded collection generation (from the snapshot and its `BranchSpec`)
and then called concurrently by the executor for many requests, so it must keep no per-request state.
Adding a branch = one module here + one entry in `retriever.recall.FACTORIES` + one spec line in the
settings + one test file. The executor owns deadlines, quotas and fail-open; the merger owns dedup and
exclusions; a branch only turns a request into ranked `Candidate`s (best first).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from indexer.text import Analyzer
from retriever.core.types import SearchQuery

if TYPE_CHECKING:
    from retriever.features.recent import RecentStore
    from retriever.generations import Collection

T = TypeVar("T")


@dataclass
class RecallRequest:
    """One request as every branch sees it: the validated query plus read-only derived data."""

    query: SearchQuery
    collection: Collection
    #: Runs a blocking native call (tantivy, hnswlib, faiss, ...) in the bounded thread pool.
    pool: Executor
    #: The query text analysed once per analyzer the collection uses (shared by text-based branches).
    terms: dict[Analyzer, list[str]] = field(default_factory=dict)
    #: Real-time user behaviour (Redis or embedded); None where the caller has no store.
    recent: RecentStore | None = None

    @cached_property
    def allowed(self) -> np.ndarray | None:
        """Boolean mask over item ordinals passing the request's filters; None when unfiltered."""
        return self.collection.filter_mask(self.query.filters)

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class BranchUnavailable(Exception):
    """Raised by a branch factory when the snapshot lacks what the branch needs (reported, not fatal)."""


@runtime_checkable
class RecallBranch(Protocol):
    """A recall source. `name` is its one identifier: spec key, metric label, log field, response label."""

    name: str

    def skip_reason(self, request: RecallRequest) -> str | None:
        """Why this branch has nothing to do for `request` (e.g. no query text), or None to run it."""
        ...

    async def recall(self, request: RecallRequest, quota: int) -> list[Candidate]:
        """At most `quota` candidates passing the request's filters, best first."""
        ...


from retriever.core.types import Candidate  # noqa: E402  (re-exported for branch modules)

__all__ = ["BranchUnavailable", "Candidate", "RecallBranch", "RecallRequest"]
