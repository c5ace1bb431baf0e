"""Popularity recall: the cold-start fallback for Recommend (unknown users, empty histories). Uses the
snapshot's time-decayed interaction counts."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel

from common.index.behavior import BehaviorIndex
from common.types import Ranked
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register


@register
class PopularBranch:
    name = "popular"
    options: ClassVar[type[BaseModel] | None] = None

    def __init__(self, index: BehaviorIndex) -> None:
        self.index = index

    @classmethod
    def create(cls, generation: Generation, options: None) -> Self:
        index: BehaviorIndex | None = generation.behavior  # loaded once per generation, shared
        if index is None:
            raise BranchUnavailable("the snapshot has no behavior part (no events: no popularity)")
        return cls(index)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None

    def _popular(self, request: RecallRequest, quota: int) -> Ranked:
        live = request.live
        allowed = live.identity_mask(request.allowed)  # deleted items never; updated ones follow
        return live.to_current(*self.index.popular_arrays(quota, allowed=allowed))

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        return await request.blocking(self._popular, request, quota)
