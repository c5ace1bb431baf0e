"""The transport-agnostic search core: validate → recall (parallel branches) → merge/fuse → rank → hydrate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.geo import haversine_m, haversine_many
from common.index.text import Analyzer, analyze
from common.settings import BranchSpec, QuarrySettings
from common.types import Fused, GeoPoint, UserCounters
from ranker.base import FusedOrder, Ranker
from retriever.core import fusion, metrics
from retriever.core.errors import DeadlineExceeded, InvalidArgument
from retriever.core.events import LogResult, RawEvent, log_events
from retriever.core.executor import run_branches
from retriever.core.types import BranchResult, BranchStatus, Hit, SearchQuery, SearchResult
from retriever.core.validate import validate_search
from retriever.features.recent import RecentStore, StoreUnavailable, make_recent_store
from retriever.generations import Collection, Registry
from retriever.recall.base import RecallRequest

log = logging.getLogger(__name__)


class SearchService:
    def __init__(
        self,
        settings: QuarrySettings,
        registry: Registry,
        ranker: Ranker | None = None,
        recent: RecentStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.ranker: Ranker = ranker or FusedOrder()
        self.recent: RecentStore = recent or make_recent_store(settings.redis)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.server.blocking_threads, thread_name_prefix="quarry-blocking"
        )

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.recent.close()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _terms(self, collection: Collection, text: str) -> dict[Analyzer, list[str]]:
        limit = self.settings.limits.max_query_terms
        # dict.fromkeys dedups while keeping the query's order; the cap bounds query cost.
        return {a: list(dict.fromkeys(analyze(text, a)))[:limit] for a in collection.analyzers}

    async def search(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """`deadline` is a time.monotonic() instant (from the caller's RPC deadline), or None."""
        query = validate_search(query, self.settings.limits)
        collection = self.registry.get(query.collection)  # one generation for the whole request
        return await self._answer(query, collection, collection.settings.branches, deadline)

    async def recommend(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """No query text: behavior + geo + popularity (cold start) → merge → the same ranking stage."""
        if query.text:
            raise InvalidArgument("Recommend takes no query text; use Search")
        query = validate_search(query, self.settings.limits)
        collection = self.registry.get(query.collection)
        return await self._answer(query, collection, collection.settings.recommend_branches, deadline)

    async def log_events(self, collection_name: str, events: list[RawEvent]) -> LogResult:
        if not collection_name:
            raise InvalidArgument("collection is required")
        self.registry.get(collection_name)  # NOT_FOUND for an unknown collection
        return await log_events(self.recent, collection_name, events, self.settings.limits)

    async def candidates(self, query: SearchQuery, *, recommend: bool = False) -> list[Fused]:
        """Fused, filtered candidates before ranking — exactly what the ranking stage sees. Used offline
        by the ranker's trainer so its training rows come from the serving path itself."""
        query = validate_search(query, self.settings.limits)
        collection = self.registry.get(query.collection)
        specs = collection.settings.recommend_branches if recommend else collection.settings.branches
        fused, _results, _degraded = await self._recall(query, collection, specs, None)
        return fused

    async def _recall(
        self,
        query: SearchQuery,
        collection: Collection,
        specs: Mapping[str, BranchSpec],
        deadline: float | None,
    ) -> tuple[list[Fused], list[BranchResult], bool]:
        collection.check_filters(query.filters)
        cs = collection.settings
        request = RecallRequest(
            query=query,
            collection=collection,
            pool=self.pool,
            terms=self._terms(collection, query.text) if query.text.strip() else {},
            recent=self.recent,
        )
        results = await run_branches(collection.branches, specs, request, deadline, collection.unavailable)
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("the request deadline expired during recall")
        degraded = any(r.status in (BranchStatus.TIMEOUT, BranchStatus.ERROR) for r in results)
        for r in results:
            metrics.BRANCH_RESULTS.labels(collection.name, r.branch, r.status.value).inc()
            if r.status is BranchStatus.OK:
                metrics.BRANCH_LATENCY.labels(collection.name, r.branch).observe(r.latency_ms / 1000)
        ranked = {r.branch: r.candidates for r in results if r.status is BranchStatus.OK}
        fused = fusion.fuse(
            ranked,
            strategy=cs.fusion.strategy,
            rrf_k=cs.fusion.rrf_k,
            weights={name: spec.weight for name, spec in specs.items()},
            normalization=cs.fusion.normalization,
        )
        return self._post_filter(fused, collection, query), results, degraded

    async def _answer(
        self,
        query: SearchQuery,
        collection: Collection,
        specs: Mapping[str, BranchSpec],
        deadline: float | None,
    ) -> SearchResult:
        t0 = time.perf_counter()
        ranker = collection.ranker or self.ranker
        # The user's real-time counters feed a model ranker; fetch them while the branches run.
        counters_task = (
            asyncio.create_task(self._counters(collection.name, query.user_id))
            if query.user_id and collection.ranker is not None
            else None
        )
        try:
            fused, results, degraded = await self._recall(query, collection, specs, deadline)
        except BaseException:
            if counters_task is not None:
                counters_task.cancel()
            raise
        counters, store_ok = await counters_task if counters_task is not None else (None, True)
        ranked_list = await ranker.rank(query, fused, collection, counters)
        hits = self._hydrate(ranked_list[: query.top_k], collection, query.location)
        return SearchResult(
            hits=hits,
            snapshot_version=collection.version,
            degraded=degraded or not store_ok,
            branch_stats=results,
            took_ms=(time.perf_counter() - t0) * 1000,
        )

    async def _counters(self, collection: str, user_id: str) -> tuple[UserCounters | None, bool]:
        try:
            return await self.recent.counters(collection, user_id), True
        except StoreUnavailable as exc:
            log.warning("user counters unavailable (%s): ranking without user features", exc)
            return None, False

    @staticmethod
    def _post_filter(fused: list[Fused], collection: Collection, query: SearchQuery) -> list[Fused]:
        """Exclusions, and the request radius as a hard filter on every branch's candidates."""
        fw = collection.forward
        if query.filters.exclude_ids:
            ords = {fw.ord_of[i] for i in query.filters.exclude_ids if i in fw.ord_of}
            fused = [f for f in fused if f.ordinal not in ords]
        if query.radius_m > 0 and query.location is not None and fused:
            idx = np.fromiter((f.ordinal for f in fused), dtype=np.int64, count=len(fused))
            with np.errstate(invalid="ignore"):
                dist = haversine_many(query.location.lat, query.location.lon, fw.lat[idx], fw.lon[idx])
                keep = dist <= query.radius_m  # NaN (no location) compares False
            fused = [f for f, k in zip(fused, keep, strict=True) if k]
        return fused

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
