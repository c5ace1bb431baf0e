"""Behavior recall (基于行为的召回): the user's real-time recent events (from the RecentStore: Redis or
embedded) plus long-term history (from the snapshot) expanded through the snapshot's item-to-item table.

Seeds decay with their position in the user's history; real-time seeds also carry the event's weight.
A store failure is not swallowed here: it raises, so the executor marks the branch ERROR and the answer
degraded (fail-open), with long-term recall lost for that request only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel

from common.index.behavior import BehaviorIndex
from common.settings import BehaviorSettings
from common.types import Ranked
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register


@register
class BehaviorBranch:
    name = "behavior"
    options: ClassVar[type[BaseModel] | None] = BehaviorSettings

    def __init__(
        self,
        index: BehaviorIndex,
        ord_of: dict[str, int],
        settings: BehaviorSettings,
        seed_items: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.index = index
        self.ord_of = ord_of
        self.s = settings
        # Seeds are keys of the i2i tables; on a shard those are global ordinals (see Generation.seed_items).
        self.seed_items = seed_items or (lambda keys: keys)

    @classmethod
    def create(cls, generation: Generation, options: BehaviorSettings) -> Self:
        index: BehaviorIndex | None = generation.behavior  # loaded once per generation, shared
        if index is None:
            raise BranchUnavailable("the snapshot has no behavior part (built without events)")
        methods = generation.manifest.parts["behavior"].get("methods", [])
        if options.method not in methods:
            raise BranchUnavailable(f"the snapshot has no {options.method!r} i2i table (has: {methods})")
        # ord_of: the i2i table's ordinals (on a shard the root sends global seeds and this goes unused)
        return cls(index, generation.base_forward.ord_of, options, generation.seed_items)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None if request.query.user_id else "no user_id"

    def _expand(self, seeds: dict[int, float], request: RecallRequest, quota: int) -> Ranked:
        keys = np.fromiter(seeds, dtype=np.int64, count=len(seeds))
        weights = np.fromiter(seeds.values(), dtype=np.float64, count=len(seeds))
        items = self.seed_items(keys)
        exclude = set(items.tolist()) if self.s.exclude_seen else None
        live = request.live
        allowed = live.identity_mask(request.allowed)  # real-time changes: judged on current versions
        found, scores = self.index.expand_arrays(
            self.s.method, keys, weights, quota, exclude=exclude, allowed=allowed, seed_items=items
        )
        return live.to_current(found, scores)

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        seeds = await request.user_seeds(self.name, self.index.user_history, self.ord_of, self.s)
        if not seeds:
            return Ranked.empty()
        return await request.blocking(self._expand, seeds, request, quota)
