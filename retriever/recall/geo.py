"""Geo recall (基于地域的召回): items within `radius_m` of the request's location, nearest first, or the
nearest items within the collection's default radius when the request gives none. Scores are negated
metres (higher = closer) so fusion's "higher is better" holds; hits carry the exact haversine distance."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel

from common.index.geo import GeoIndex
from common.settings import GeoSettings
from common.types import Ranked
from retriever.live import merge
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register


@register
class GeoBranch:
    name = "geo"
    options: ClassVar[type[BaseModel] | None] = GeoSettings

    def __init__(self, index: GeoIndex, settings: GeoSettings) -> None:
        self.index = index
        self.s = settings

    @classmethod
    def create(cls, generation: Generation, options: GeoSettings) -> Self:
        part = generation.manifest.parts.get("geo")
        if part is None:
            raise BranchUnavailable("the snapshot has no geo part (no item has a location)")
        return cls(GeoIndex.load(Path(generation.root), part), options)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None if request.query.location is not None else "no location"

    def _search(self, request: RecallRequest, lat: float, lon: float, radius: float, quota: int) -> Ranked:
        live, allowed = request.live, request.allowed
        mask, k = live.plan(allowed, request.restricts, quota)
        ords, dists = self.index.within(lat, lon, radius, k=k, allowed=mask)
        base = Ranked(ords, -np.asarray(dists, dtype=np.float64))
        d_ords, d_dists = live.delta_within(lat, lon, radius, allowed, quota)
        delta = Ranked(d_ords, -np.asarray(d_dists, dtype=np.float64))
        return merge(live.alive(base, quota), delta, quota)

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        q = request.query
        assert q.location is not None
        radius = q.radius_m or self.s.default_radius_m
        return await request.blocking(self._search, request, q.location.lat, q.location.lon, radius, quota)
