"""Recall by user preference (基于用户偏好的召回): the tags and categories the user favours, from their
long-term history (the snapshot's) and real-time recent events (the store's, kept by LogEvents), each
weighted with the same positional decay as behavior seeds → a profile (common.profile) → the most
popular items of the profile's strongest tags, scored by profile match × log(1 + popularity).

Unlike behavior recall it needs no co-occurrence: it still answers for items nobody co-watched, and it
follows a taste (many thrillers) rather than single items. The per-tag top lists are built once per
generation (`Generation.tag_table`, shared with the ranker's user–item affinity feature).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel

from common.arrays import in_sorted
from common.index.behavior import BehaviorIndex
from common.profile import TagTable
from common.settings import PreferenceSettings
from common.types import Ranked
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register


@register
class PreferenceBranch:
    name = "preference"
    options: ClassVar[type[BaseModel] | None] = PreferenceSettings

    def __init__(
        self,
        index: BehaviorIndex,
        table: TagTable,
        ord_of: dict[str, int],
        settings: PreferenceSettings,
        seed_items: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.index = index
        self.table = table
        self.ord_of = ord_of
        self.s = settings
        # On a shard seeds are global ordinals and the profile comes from the root (Generation.seed_items).
        self.seed_items = seed_items or (lambda keys: keys)
        self.log_pop = np.log1p(np.maximum(index.popularity, 0.0))

    @classmethod
    def create(cls, generation: Generation, options: PreferenceSettings) -> Self:
        index = generation.behavior
        if index is None:
            raise BranchUnavailable("the snapshot has no behavior part (no histories, no popularity)")
        table = generation.tag_table  # shared with the ranker's user–item affinity
        if table is None:
            raise BranchUnavailable("no item has a tag or a category")
        return cls(index, table, generation.base_forward.ord_of, options, generation.seed_items)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None if request.query.user_id else "no user_id"

    def _recall(self, seeds: dict[int, float], request: RecallRequest, quota: int) -> Ranked:
        given = request.root.profile if request.root is not None else None
        affinity = self.table.profile(list(seeds.items())) if given is None else given
        if len(affinity) != len(self.table.vocab):
            raise ValueError(f"a profile over {len(affinity)} tags, this table has {len(self.table.vocab)}")
        if not affinity.any():
            return Ranked.empty()
        top = np.argsort(-affinity, kind="stable")[: self.s.top_tags]
        top = top[affinity[top] > 0]
        pool = self.table.items_union(top.tolist())
        live = request.live
        allowed = live.identity_mask(request.allowed)  # real-time changes: judged on current versions
        keep = np.ones(len(pool), dtype=bool) if allowed is None else allowed[pool]
        if self.s.exclude_seen and seeds:
            keep &= ~in_sorted(pool, self.seed_items(np.fromiter(seeds, dtype=np.int64, count=len(seeds))))
        pool = pool[keep]
        if not len(pool):
            return Ranked.empty()
        scores = self.table.match(pool, affinity) * self.log_pop[pool]
        best = np.lexsort((pool, -scores))[:quota]
        return live.to_current(pool[best], scores[best])

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        seeds = await request.user_seeds(self.name, self.index.user_history, self.ord_of, self.s)
        if not seeds:
            return Ranked.empty()
        return await request.blocking(self._recall, seeds, request, quota)
