"""The transport-agnostic search core: validate → recall (parallel branches) → merge/fuse → rank → hydrate."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from indexer.text import analyze
from quarry.settings import QuarrySettings
from ranker.base import FusedOrder, Ranker
from retriever.core import fusion
from retriever.core.errors import DeadlineExceeded
from retriever.core.executor import run_branches
from retriever.core.geo import haversine_m
from retriever.core.types import BranchStatus, Fused, GeoPoint, Hit, SearchQuery, SearchResult
from retriever.core.validate import validate_search
from retriever.generations import Collection, Registry
from retriever.recall.base import RecallRequest

log = logging.getLogger(__name__)


class SearchService:
    def __init__(self, settings: QuarrySettings, registry: Registry, ranker: Ranker | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.ranker: Ranker = ranker or FusedOrder()
        self.pool = ThreadPoolExecutor(
            max_workers=settings.server.blocking_threads, thread_name_prefix="quarry-blocking"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _terms(self, collection: Collection, text: str) -> dict:
        limit = self.settings.limits.max_query_terms
        out = {}
        for analyzer in collection.analyzers:
            # dict.fromkeys dedups while keeping the query's order; the cap bounds query cost.
            out[analyzer] = list(dict.fromkeys(analyze(text, analyzer)))[:limit]
        return out

    async def search(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """`deadline` is a time.monotonic() instant (from the caller's RPC deadline), or None."""
        t0 = time.perf_counter()
        query = validate_search(query, self.settings.limits)
        collection = self.registry.get(query.collection)  # one generation for the whole request
        collection.check_filters(query.filters)
        cs = collection.settings
        request = RecallRequest(
            query=query,
            collection=collection,
            pool=self.pool,
            terms=self._terms(collection, query.text) if query.text.strip() else {},
        )
        results = await run_branches(
            collection.branches, cs.branches, request, deadline, collection.unavailable
        )
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the request deadline expired during recall")
        degraded = any(r.status in (BranchStatus.TIMEOUT, BranchStatus.ERROR) for r in results)
        ranked = {r.branch: r.candidates for r in results if r.status is BranchStatus.OK}
        fused = fusion.fuse(
            ranked,
            strategy=cs.fusion.strategy,
            rrf_k=cs.fusion.rrf_k,
            weights={name: spec.weight for name, spec in cs.branches.items()},
            normalization=cs.fusion.normalization,
        )
        fused = self._exclude(fused, collection, query)
        ranked_list = await self.ranker.rank(query, fused, collection)
        hits = self._hydrate(ranked_list[: query.top_k], collection, query.location)
        return SearchResult(
            hits=hits,
            snapshot_version=collection.version,
            degraded=degraded,
            branch_stats=results,
            took_ms=(time.perf_counter() - t0) * 1000,
        )

    @staticmethod
    def _exclude(fused: list[Fused], collection: Collection, query: SearchQuery) -> list[Fused]:
        if not query.filters.exclude_ids:
            return fused
        ords = {
            collection.forward.ord_of[i] for i in query.filters.exclude_ids if i in collection.forward.ord_of
        }
        return [f for f in fused if f.ordinal not in ords]

    @staticmethod
    def _hydrate(fused: list[Fused], collection: Collection, origin: GeoPoint | None) -> list[Hit]:
        rows = collection.forward.rows([f.ordinal for f in fused])
        hits: list[Hit] = []
        for f, row in zip(fused, rows, strict=True):
            loc = (
                GeoPoint(row["lat"], row["lon"])
                if row["lat"] is not None and row["lon"] is not None
                else None
            )
            dist = (
                haversine_m(origin.lat, origin.lon, loc.lat, loc.lon)
                if origin is not None and loc is not None
                else None
            )
            hits.append(
                Hit(
                    id=row["id"],
                    score=f.score,
                    sources=f.sources,
                    title=row["title"],
                    category=row["category"],
                    tags=list(row["tags"] or []),
                    location=loc,
                    distance_m=dist,
                    attributes={k[5:]: v for k, v in row.items() if k.startswith("attr_") and v is not None},
                    fields={k[5:]: v for k, v in row.items() if k.startswith("text_") and v},
                )
            )
        return hits
