"""Popularity recall: the cold-start fallback for Recommend (unknown users, empty histories). Uses the
snapshot's time-decayed interaction counts."""

from __future__ import annotations

from typing import Any

from indexer.behavior import BehaviorIndex
from retriever.core.types import Candidate
from retriever.recall.base import BranchUnavailable, RecallRequest

NAME = "popular"


class PopularBranch:
    name = NAME

    def __init__(self, index: BehaviorIndex) -> None:
        self.index = index

    @classmethod
    def create(cls, collection: Any, spec: Any) -> PopularBranch:
        index: BehaviorIndex | None = collection.behavior  # loaded once per generation, shared
        if index is None:
            raise BranchUnavailable("the snapshot has no behavior part (no events: no popularity)")
        return cls(index)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None

    def _popular(self, allowed: Any, quota: int) -> list[Candidate]:
        return [Candidate(o, s) for o, s in self.index.popular(quota, allowed=allowed)]

    async def recall(self, request: RecallRequest, quota: int) -> list[Candidate]:
        return await request.blocking(self._popular, request.allowed, quota)
