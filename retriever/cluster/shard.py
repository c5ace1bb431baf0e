"""A shard's side of a shard set: answer the root's recall requests (transport-agnostic).

A shard server loads its shard of each collection as an ordinary generation (`Collection`: its items'
text, vectors, geo, forward store, its share of the behavior tables) and runs the requested branches under
the root's quotas and deadlines, with the root's seeds, preference profile and query vector
(`RecallRequest.root`). It answers global ordinals — its local ordinals translated through the shard part —
so the root can merge shard lists and break ties exactly as one node would, and it ships the forward row
of every candidate so the root can filter, rank and hydrate without a second round trip.

Generations: during a coordinated switch the root keeps sending requests for the shard set it serves
until every shard has loaded the new one; the registry keeps the replaced generation (`keep_previous`)
and this core answers from whichever generation the request names. The previous one is released once
the root has moved on (a request for the new set arrived) and `release_after_s` has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import ValidationError

from common.settings import BranchSpec, QuarrySettings
from common.types import Ranked, SeedWeights
from ranker.schema import AFFINITY_FEATURES, AFFINITY_MEMORIES
from retriever.core.errors import FailedPrecondition, InvalidArgument
from retriever.core.types import BranchResult, SearchQuery
from retriever.core.validate import validate_search
from retriever.generations import Collection, Registry
from retriever.recall.base import RecallRequest, RootInputs, analyze_query
from retriever.recall.executor import run_branches

log = logging.getLogger(__name__)

#: Columns a shard adds to each candidate's forward row.
GORD_COLUMN = "_gord"
POPULARITY_COLUMN = "_popularity"
ITEM_WEIGHT_COLUMN = "_item_weight"
#: The i2i affinity features a shard computes for its candidates when the root sends the user's seeds
#: (the root holds no i2i tables; each shard holds, for every seed, its neighbours among its items).
AFFINITY_COLUMNS = {name: f"_{name}" for name in AFFINITY_FEATURES}
#: The root sends the affinity seeds as one seed list per memory, named AFFINITY_SEEDS + its suffix.
AFFINITY_SEEDS = "affinity"
MAX_BRANCHES = 32
MAX_FETCH = 10_000


@dataclass(frozen=True, slots=True)
class BranchCall:
    name: str
    quota: int
    timeout_ms: float


@dataclass(frozen=True, slots=True)
class ShardRequest:
    collection: str
    set_id: str
    generation: str
    query: SearchQuery
    branches: tuple[BranchCall, ...]
    root: RootInputs
    #: Whether the rows carry the display fields (else the root fetches them for its hits).
    with_display: bool = True


@dataclass(slots=True)
class ShardResult:
    shard: int
    snapshot_version: str
    #: Each branch's result; candidate ordinals are global ordinals.
    results: list[BranchResult]
    #: The forward row of every candidate, plus GORD_COLUMN and POPULARITY_COLUMN.
    rows: pa.Table


class ShardCore:
    def __init__(self, settings: QuarrySettings, registry: Registry, pool: Executor) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.release_after_s = settings.cluster.release_previous_s
        self._release_at: dict[str, float] = {}

    def _generation(self, name: str, set_id: str) -> Collection:
        current = self.registry.get(name)  # NOT_FOUND for an unknown collection
        if current.shard is None:
            raise FailedPrecondition(
                f"collection {name!r} is not a shard here (a whole collection is served)"
            )
        previous = self.registry.previous(name)
        now = time.monotonic()
        if current.shard.set_id == set_id:
            # The root asks for the new set: it has switched; the old set may go after a grace period.
            if previous is not None:
                due = self._release_at.setdefault(name, now + self.release_after_s)
                if now >= due:
                    self.registry.drop_previous(name)
                    self._release_at.pop(name, None)
                    log.info("collection %s: released the previous shard generation", name)
            return current
        if previous is not None and previous.shard is not None and previous.shard.set_id == set_id:
            return previous
        raise FailedPrecondition(
            f"collection {name!r}: this shard serves set {current.shard.set_id}, the request is for set "
            f"{set_id}; reload it (AdminService.Reload) or wait for it to follow the snapshot root"
        )

    async def recall(self, req: ShardRequest, deadline: float | None = None) -> ShardResult:
        coll = self._generation(req.collection, req.set_id)
        assert coll.shard is not None
        query = validate_search(req.query, self.settings.limits)
        coll.check_filters(query.filters)
        if len(req.branches) > MAX_BRANCHES:
            raise InvalidArgument(f"at most {MAX_BRANCHES} branches per shard request")
        specs: dict[str, BranchSpec] = {}
        for b in req.branches:
            try:
                specs[b.name] = BranchSpec(quota=b.quota, timeout_ms=b.timeout_ms)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InvalidArgument(f"branch {b.name[:64]!r}: {first['loc'][0]} {first['msg']}") from None
        unknown = [n for n in specs if n not in coll.branches and n not in coll.unavailable]
        if unknown:
            raise InvalidArgument(
                f"unknown branch {unknown[0]!r} (this shard has {', '.join(coll.branches)})"
            )
        vec = req.root.vector
        if vec is not None and vec.shape != (self._dim(coll),):
            raise InvalidArgument(
                f"query_vector has {vec.size} dimensions, this shard's vectors {self._dim(coll)}"
            )
        request = RecallRequest(
            query=query,
            collection=coll,
            pool=self.pool,
            inline=self.settings.server.inline_recall,
            terms=analyze_query(query.text, coll.analyzers, self.settings.limits.max_query_terms),
            root=req.root,
        )
        results = await run_branches(coll.branches, specs, request, deadline, coll.unavailable)
        live = request.live
        answers = [Ranked.of(r.candidates) for r in results]
        found = np.unique(np.concatenate([a.ordinals for a in answers])) if answers else np.zeros(0, np.int64)
        local = found.tolist()
        gord_of = _global_ordinals(coll, found, live.base_n)
        for r, a in zip(results, answers, strict=True):
            r.candidates = Ranked(gord_of[np.searchsorted(found, a.ordinals)], a.scores)
        rows = live.forward.take_table(local)
        if not req.with_display:  # the root fetches display fields for its final hits only
            rows = rows.select([c for c in rows.column_names if not _display(c)])
        popularity = live.popularity
        pop = (
            popularity[np.asarray(local, dtype=np.int64)].astype(np.float64)
            if popularity is not None and local
            else np.full(len(local), np.nan)
        )
        rows = rows.append_column(GORD_COLUMN, pa.array(gord_of, pa.int64()))
        rows = rows.append_column(POPULARITY_COLUMN, pa.array(pop, pa.float64()))
        ords = np.asarray(local, dtype=np.int64)
        item_weight = coll.item_weight
        if item_weight is not None:
            rows = rows.append_column(ITEM_WEIGHT_COLUMN, pa.array(item_weight[ords], pa.float64()))
        behavior = coll.behavior
        seeds = affinity_seeds_from(req.root.seeds, None if behavior is None else behavior.num_rows)
        if seeds is not None:
            for name, values in coll.i2i_affinity(seeds, ords).items():
                rows = rows.append_column(AFFINITY_COLUMNS[name], pa.array(values, pa.float64()))
        return ShardResult(coll.shard.index, coll.version, results, rows)

    async def fetch(self, collection: str, set_id: str, gords: np.ndarray) -> pa.Table:
        """The display fields (title, text_*) of the items with these global ordinals that this shard
        holds, with their GORD_COLUMN; the rest are left out."""
        if len(gords) > MAX_FETCH:
            raise InvalidArgument(f"at most {MAX_FETCH} items per fetch, got {len(gords)}")
        coll = self._generation(collection, set_id)
        live = coll.view
        local, found = _local_ordinals(
            coll, np.asarray(gords, dtype=np.int64), live.base_n, len(live.forward)
        )
        rows = live.forward.take_table(local[found].tolist())
        rows = rows.select(["title", *[c for c in rows.column_names if c.startswith("text_")]])
        return rows.append_column(GORD_COLUMN, pa.array(np.asarray(gords)[found], pa.int64()))

    @staticmethod
    def _dim(coll: Collection) -> int:
        part: dict[str, Any] | None = coll.manifest.parts.get("vectors")
        return int(part["encoder"]["dim"]) if part is not None else 0


def _display(column: str) -> bool:
    return column == "title" or column.startswith("text_")


def _local_ordinals(
    coll: Collection, gords: np.ndarray, base_n: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(local ordinals, found mask) of global ordinals: the inverse of _global_ordinals."""
    shard = coll.shard
    assert shard is not None
    local = shard.local_of(gords)
    delta = gords >= shard.global_items
    rel = gords[delta] - shard.global_items
    mine = rel % shard.count == shard.index
    local[delta] = np.where(mine, base_n + rel // shard.count, -1)
    found = (local >= 0) & (local < n)
    return local, found


def _global_ordinals(coll: Collection, local: np.ndarray, base_n: int) -> np.ndarray:
    """Global ordinals of local ordinals: the shard part's for the generation's own items; items upserted
    since get ordinals past the set's, unique per shard (they order after every built item)."""
    shard = coll.shard
    assert shard is not None
    out = np.empty(len(local), dtype=np.int64)
    base = local < base_n
    out[base] = shard.gord[local[base]]
    out[~base] = shard.global_items + (local[~base] - base_n) * shard.count + shard.index
    return out


def affinity_seed_lists(seeds: SeedWeights) -> dict[str, dict[int, float]]:
    """The root's side: a user's affinity seeds (global ordinals) as named seed lists, one a memory, each
    with only the seeds it weighs (the whole-history memory's ~500 seeds are not sent as zeros in the
    others' lists, nor theirs in its)."""
    out: dict[str, dict[int, float]] = {}
    for suffix, row in zip(AFFINITY_MEMORIES, seeds.weights, strict=True):
        nz = np.flatnonzero(row)
        out[AFFINITY_SEEDS + suffix] = dict(zip(seeds.ordinals[nz].tolist(), row[nz].tolist(), strict=True))
    return out


def affinity_seeds_from(lists: Mapping[str, Mapping[int, float]], rows: int | None) -> SeedWeights | None:
    """The shard's side: the seed lists `affinity_seed_lists` made back as SeedWeights (None: the root
    sent none, its ranker reads no affinity feature); a memory's missing seed weighs 0. `rows`: the seed
    keys the shard's tables cover (None: no behavior part); a seed outside 0..rows-1 is INVALID_ARGUMENT."""
    per = [lists.get(AFFINITY_SEEDS + suffix) for suffix in AFFINITY_MEMORIES]
    if all(p is None for p in per):
        return None
    seeds = SeedWeights.of([p or {} for p in per])
    if len(seeds.ordinals) and seeds.ordinals[0] < 0:
        raise InvalidArgument(f"affinity seeds: negative ordinal {int(seeds.ordinals[0])}")
    if len(seeds.ordinals) and rows is not None and seeds.ordinals[-1] >= rows:
        raise InvalidArgument(
            f"affinity seeds: ordinal {int(seeds.ordinals[-1])} is past this set's {rows} items"
        )
    return seeds
