"""The transport-agnostic search core. Each endpoint is a declared `Pipeline` of stages (see SEARCH and
RECOMMEND at the bottom): validate → recall (parallel branches) → fuse → post-filter → rank → hydrate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
from opentelemetry import trace
from opentelemetry.util.types import Attributes

from common.geo import haversine_m, haversine_many
from common.settings import BranchSpec, CollectionSettings, QuarrySettings
from common.types import Fused, GeoPoint, ItemWindows, SeedWeights, SourceScore, UserCounters
from ranker.base import FusedOrder, Ranker, RankingContext, explains, scores_arrays
from ranker.features import feature_matrix
from ranker.schema import (
    AFFINITY_MEMORIES,
    AFFINITY_RECENT_N,
    DEFAULT_SCHEMA,
    FeatureSchema,
    reads_affinity,
    reads_item_windows,
)
from retriever.core import fusion, metrics
from retriever.core.errors import DeadlineExceeded, InvalidArgument
from retriever.core.events import LogResult, RawEvent, log_events
from retriever.core.types import (
    BranchResult,
    BranchStatus,
    DebugDetail,
    DebugItem,
    Hit,
    HitDetail,
    RecentEventDetail,
    SearchQuery,
    SearchResult,
    UserDetail,
)
from retriever.core.validate import validate_search
from retriever.features.recent import (
    RecentItem,
    RecentStore,
    StoreUnavailable,
    UserRecent,
    make_recent_store,
)
from retriever.generations import Collection, Registry
from retriever.recall.base import RecallRequest, analyze_query, decayed_seeds
from retriever.recall.executor import run_branches

log = logging.getLogger(__name__)


class SearchService:
    def __init__(
        self,
        settings: QuarrySettings,
        registry: Registry,
        ranker: Ranker | None = None,
        recent: RecentStore | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        #: No-op unless a provider is given or installed globally (retriever.tracing).
        self.tracer = trace.get_tracer("quarry.retriever", tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider
        self.registry = registry
        self.ranker: Ranker = ranker or FusedOrder()
        self.recent: RecentStore = recent or make_recent_store(settings.redis)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.server.blocking_threads, thread_name_prefix="quarry-blocking"
        )

    def span(self, name: str, attributes: Attributes) -> AbstractContextManager[trace.Span]:
        """A stage's span, current while the stage runs. With no tracer provider (none given, none
        installed globally) no span at all: the API's no-op span still cost ~9 µs a stage."""
        if self._tracer_provider is None and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        ):
            return nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(name, attributes=attributes)

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        await self.recent.close()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def search(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """`deadline` is a time.monotonic() instant (from the caller's RPC deadline), or None."""
        return (await self._run(SEARCH, query, deadline)).result()

    async def recommend(self, query: SearchQuery, deadline: float | None = None) -> SearchResult:
        """No query text: behavior + geo + popularity (cold start) → merge → the same ranking stage."""
        return (await self._run(RECOMMEND, query, deadline)).result()

    async def log_events(self, collection_name: str, events: list[RawEvent]) -> LogResult:
        if not collection_name:
            raise InvalidArgument("collection is required")
        self.registry.get(collection_name)  # NOT_FOUND for an unknown collection
        result = await log_events(self.recent, collection_name, events, self.settings.limits)
        for outcome, n in (
            ("accepted", result.accepted),
            ("duplicate", result.duplicates),
            ("rejected", len(result.rejected)),
        ):
            if n:
                metrics.EVENTS.labels(collection_name, outcome).inc(n)
        return result

    async def candidates(self, query: SearchQuery, *, recommend: bool = False) -> list[Fused]:
        """Fused, filtered candidates before ranking — exactly what the ranking stage sees. Used offline
        by the ranker's trainer so its training rows come from the serving path itself."""
        ex = await self._run(RECOMMEND_CANDIDATES if recommend else SEARCH_CANDIDATES, query, None)
        ex.materialize()
        return ex.fused

    async def _run(self, pipeline: Pipeline, query: SearchQuery, deadline: float | None) -> Exchange:
        ex = Exchange(pipeline, query, deadline)
        took: list[float] = []
        try:
            for stage in pipeline.stages:
                t0 = time.perf_counter()
                await stage(self, ex)
                took.append(time.perf_counter() - t0)
            metrics.record_stages(pipeline.name, pipeline.stage_names, took)
        finally:
            if ex.counters_task is not None and not ex.counters_task.done():
                ex.counters_task.cancel()
            if ex.user_recent is not None:
                ex.user_recent.close()
        return ex

    # -- stages: each reads and fills the request's Exchange; pipelines below declare their order --------

    async def _require_intent(self, ex: Exchange) -> None:
        q = ex.query
        if not q.text.strip() and q.location is None and not q.user_id:
            raise InvalidArgument(
                "a Search needs query text, a location or a user_id (to browse without any, use Recommend)"
            )

    async def _reject_text(self, ex: Exchange) -> None:
        if ex.query.text:
            raise InvalidArgument("Recommend takes no query text; use Search")

    async def _validate(self, ex: Exchange) -> None:
        ex.query = validate_search(ex.query, self.settings.limits)
        ex.collection = self.registry.get(ex.query.collection)  # one generation for the whole request
        ex.specs = ex.pipeline.specs(ex.collection.settings)
        if ex.query.branches:
            ex.specs = self._requested(ex.pipeline, ex.specs, ex.query.branches, ex.collection.name)
        if ex.query.fusion == "learned" and ex.collection.settings.fusion.learned is None:
            # The static validator allows "learned"; whether this collection has a model is known here.
            raise InvalidArgument(
                f"collection {ex.collection.name!r} has no learned fusion parameters "
                "(fusion.learned in its settings); use rrf or weighted"
            )
        ex.collection.check_filters(ex.query.filters)

    @staticmethod
    def _requested(
        pipeline: Pipeline, specs: Mapping[str, BranchSpec], names: tuple[str, ...], collection: str
    ) -> dict[str, BranchSpec]:
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise InvalidArgument(
                f"unknown branch {unknown[0][:64]!r}: {pipeline.name} in collection {collection!r} "
                f"has the branches {', '.join(specs)}"
            )
        wanted = set(names)
        return {n: spec for n, spec in specs.items() if n in wanted}

    async def _prefetch_user(self, ex: Exchange) -> None:
        # The user's real-time counters feed a model ranker; fetch them while the branches run.
        if ex.query.user_id and ex.generation.ranker is not None:
            ex.counters_task = asyncio.create_task(
                self._counters(ex.generation, ex.query.user_id, self._reader(ex))
            )

    async def _recall(self, ex: Exchange) -> None:
        collection, query = ex.generation, ex.query
        request = RecallRequest(
            query=query,
            collection=collection,
            pool=self.pool,
            inline=self.settings.server.inline_recall,
            terms=analyze_query(query.text, collection.analyzers, self.settings.limits.max_query_terms),
            recent=self.recent,
            user_recent=self._reader(ex) if query.user_id else None,
        )
        with self.span("recall", {"quarry.collection": collection.name}) as span:
            # A span per branch under a recorded one; unrecorded (tracing off, not sampled), none at all:
            # five no-op spans cost ~0.1 ms a request.
            ex.results = await run_branches(
                collection.branches,
                ex.specs,
                request,
                ex.deadline,
                collection.unavailable,
                self.tracer if span.is_recording() else None,
            )
        if ex.deadline is not None and time.monotonic() >= ex.deadline:
            raise DeadlineExceeded("the request deadline expired during recall")
        ex.degraded = any(r.status in (BranchStatus.TIMEOUT, BranchStatus.ERROR) for r in ex.results)
        for r in ex.results:
            metrics.record_branch(collection.name, r.branch, r.status.value, r.latency_ms, len(r.candidates))

    async def _fuse(self, ex: Exchange) -> None:
        fs = ex.generation.settings.fusion
        ex.fusion = ex.query.fusion or fs.strategy
        ranked = {r.branch: r.candidates for r in ex.results if r.status is BranchStatus.OK}
        with self.span("fusion", {"quarry.fusion": ex.fusion}):
            if ex.fusion == "learned":
                assert fs.learned is not None, "settings and _validate refuse learned without parameters"
                model = fusion.LinearModel(fs.learned.weights, fs.learned.intercept, fs.learned.rrf_k)
                ex.fused = fusion.fuse(ranked, strategy="learned", model=model)
                return
            # As arrays: Fused objects are built later, for what the filters keep and the ranker needs.
            weights = {name: spec.weight for name, spec in ex.specs.items()}
            if ex.fusion == "weighted":
                ex.pending = fusion.weighted_arrays(ranked, weights=weights, normalization=fs.normalization)
            else:
                ex.pending = fusion.rrf_arrays(ranked, k=fs.rrf_k, weights=weights)

    async def _post_filter(self, ex: Exchange) -> None:
        if ex.pending is not None:
            keep = self._keep(ex.pending.ordinal, ex.generation, ex.query)
            if keep is not None:
                ex.pending = ex.pending.take(keep)
        else:
            ex.fused = self._filtered(ex.fused, ex.generation, ex.query)

    async def _exclude_seen(self, ex: Exchange) -> None:
        """Recommend: drop what the user already interacted with (history + real-time events). A store
        failure degrades the answer (history alone is still excluded), never fails it."""
        coll, user = ex.generation, ex.query.user_id
        if not user or not coll.settings.recommend_exclude_seen or not ex.candidate_count:
            return
        seen: set[int] = set(coll.user_history(user))
        try:
            recent = await self._reader(ex).get(self.settings.redis.recent_max_len)
        except StoreUnavailable as exc:
            log.warning("recent events unavailable (%s): excluding only the long-term history", exc)
            ex.degraded, recent = True, []
        ord_of = coll.forward.ord_of
        seen.update(o for o in (ord_of.get(r.item_id) for r in recent) if o is not None)
        if not seen:
            return
        if ex.pending is not None:
            ex.pending = ex.pending.take(~np.isin(ex.pending.ordinal, np.fromiter(seen, np.int64, len(seen))))
        else:
            ex.fused = [f for f in ex.fused if f.ordinal not in seen]

    async def _rank(self, ex: Exchange) -> None:
        collection = ex.generation
        counters, store_ok = await ex.counters_task if ex.counters_task is not None else (None, True)
        ex.degraded = ex.degraded or not store_ok
        ranker = collection.ranker or self.ranker
        count = ex.candidate_count
        span: Attributes = {"quarry.ranker": ranker.name, "quarry.candidates": count}
        arrays = isinstance(ranker, FusedOrder) or scores_arrays(ranker)
        if ex.pending is not None and not ex.query.debug and arrays:
            # Scored as arrays, then ordered: `Fused` objects only for the answer's hits (the fused order
            # kept as it is needs nothing else either).
            scorer = ranker if scores_arrays(ranker) and count else None
            candidates = ex.pending.candidates() if scorer is not None else None
            windows = None
            if candidates is not None:
                windows = await self._item_windows(ex, ranker, candidates.ordinal.tolist())
            with self.span("rank", span):
                if scorer is not None and candidates is not None:
                    scores = await scorer.score_arrays(ex.query, candidates, collection, counters, windows)
                    # Stable, as a list ranker's sort: equal scores keep the fused order.
                    order = np.argsort(-scores, kind="stable")
                    ex.pending = ex.pending.reorder(order, scores[order].astype(np.float64))
                ex.materialize(ex.query.top_k)
            return
        ex.materialize()
        windows = await self._item_windows(ex, ranker, [f.ordinal for f in ex.fused])
        if ex.query.debug:
            ex.explain = self._explain_rank(ex, ranker, counters, windows)
        with self.span("rank", span):
            ex.fused = await ranker.rank(ex.query, ex.fused, collection, counters, windows)

    async def _item_windows(self, ex: Exchange, ranker: Ranker, ordinals: list[int]) -> ItemWindows | None:
        """The candidates' real-time item counts, for a model that reads them (one store call); None
        otherwise, or when the store failed (the answer is then degraded)."""
        if not ordinals or not explains(ranker) or not reads_item_windows(ranker.schema):
            return None
        try:
            return await self.item_windows(ex.generation, ordinals)
        except StoreUnavailable as exc:
            log.warning("item windows unavailable (%s): ranking without them", exc)
            ex.degraded = True
            return None

    async def _hydrate(self, ex: Exchange) -> None:
        ex.hits = self._hits(ex.fused[: ex.query.top_k], ex.generation, ex.query.location)

    # -- debug: what each stage saw, for consoles and tuning (debug requests only) ---------------------

    @staticmethod
    def _explain_rank(
        ex: Exchange, ranker: Ranker, counters: UserCounters | None, windows: ItemWindows | None
    ) -> RankExplain:
        """Before ranking rescores the candidates: the fused list as it stands and the ranker's inputs."""
        fused = tuple((f.ordinal, f.score, tuple(f.sources)) for f in ex.fused)
        label = ranker.name
        version = getattr(ranker, "version", None)
        if version:
            label = f"{label}:{version}"
        names: tuple[str, ...] = ()
        features: dict[int, dict[str, float]] = {}
        if explains(ranker) and ex.fused:
            names, X = ranker.explain(ex.query, ex.fused, ex.generation, counters, windows)
            features = {
                f.ordinal: dict(zip(names, row, strict=True))
                for f, row in zip(ex.fused, X.astype(np.float64).tolist(), strict=True)
            }
        return RankExplain(fused, label, names, features)

    async def _debug(self, ex: Exchange) -> None:
        if not ex.query.debug:
            return
        collection, explain = ex.generation, ex.explain
        assert explain is not None, "the rank stage records the explanation of a debug request"
        fw = collection.forward
        lists = [(r.branch, [(c.ordinal, c.score, ()) for c in r.candidates]) for r in ex.results]
        ordinals = sorted({o for _, items in lists for o, _, _ in items} | {o for o, _, _ in explain.fused})
        rows = dict(zip(ordinals, fw.rows(ordinals), strict=True))

        def items(entries: Sequence[tuple[int, float, tuple[SourceScore, ...]]]) -> tuple[DebugItem, ...]:
            out = []
            for rank, (o, score, sources) in enumerate(entries, 1):
                row = rows[o]
                loc = None if row["lat"] is None or row["lon"] is None else GeoPoint(row["lat"], row["lon"])
                out.append(DebugItem(row["id"], row["title"] or "", score, rank, sources, loc))
            return tuple(out)

        position = {o: (score, rank) for rank, (o, score, _) in enumerate(explain.fused, 1)}
        by_id = {rows[o]["id"]: o for o in position}
        for h in ex.hits:
            o = by_id.get(h.id, -1)
            score, rank = position.get(o, (h.score, 0))
            h.debug = HitDetail(score, rank, explain.features.get(o, {}))
        ex.debug = DebugDetail(
            branches=tuple((name, items(entries)) for name, entries in lists),
            fused=items(explain.fused),
            fusion=ex.fusion,
            ranker=explain.ranker,
            feature_names=explain.feature_names,
            user=await self._user_detail(collection, ex.query.user_id, self._reader(ex))
            if ex.query.user_id
            else None,
        )

    async def _user_detail(self, collection: Collection, user_id: str, reader: UserRecent) -> UserDetail:
        try:
            recent = await reader.get(DEBUG_RECENT)
            counters = await self.recent.counters(collection.name, user_id)
        except StoreUnavailable:
            return UserDetail(user_id, available=False)
        fw = collection.forward
        titles = {}
        known = [r.item_id for r in recent if r.item_id in fw.ord_of]
        if known:
            for item_id, row in zip(known, fw.rows([fw.ord_of[i] for i in known]), strict=True):
                titles[item_id] = row["title"] or ""
        return UserDetail(
            user_id,
            available=True,
            recent=tuple(
                RecentEventDetail(r.item_id, titles.get(r.item_id, ""), r.type, r.ts, r.weight)
                for r in recent
            ),
            counters=counters,
        )

    def _reader(self, ex: Exchange) -> UserRecent:
        """The request's one read of its user's recent events, shared by every stage that wants them
        (behavior and preference recall, the ranker's profile, Recommend's seen-filter, debug), sized to
        the most demanding of this pipeline's readers: parsing costs ~2.7 µs an event, a round trip
        ~0.1 ms, so not blindly all the store keeps."""
        if ex.user_recent is None:
            cs = ex.generation.settings
            need = max(cs.behavior.recent_n, cs.preference.recent_n, DEBUG_RECENT if ex.query.debug else 1)
            if ranker_reads_affinity(ex.generation.ranker):
                need = max(need, AFFINITY_RECENT_N)
            if SearchService._exclude_seen in ex.pipeline.stages and cs.recommend_exclude_seen:
                need = max(need, self.settings.redis.recent_max_len)
            ex.user_recent = UserRecent(self.recent, ex.generation.name, ex.query.user_id, need)
        return ex.user_recent

    async def user_counters(
        self,
        collection: Collection,
        user_id: str,
        reader: UserRecent | None = None,
        *,
        now: float | None = None,
        affinity: bool = True,
    ) -> UserCounters:
        """What the ranking stage reads about a user: the real-time counters, how many of their newest
        events fall in the last hour/day/week before `now` (default: the clock), and, where the
        generation has a tag table, the preference profile (the preference branch's own recipe: real-time
        events then long-term history, decayed); with `affinity`, where it has behavior data, the seeds
        of the i2i affinity features. The trainers call this too (with `now` = the replayed request's
        time), so offline features equal online ones. Raises StoreUnavailable."""
        table, behavior = collection.tag_table, collection.behavior
        ps = collection.settings.preference
        n = max(ps.recent_n, AFFINITY_RECENT_N if affinity else 0, 1)
        counters, recent = await asyncio.gather(
            self.recent.counters(collection.name, user_id),
            _recent(self.recent, collection.name, user_id, n, reader),
        )
        when = time.time() if now is None else now
        windows = tuple(sum(1 for r in recent if 0 <= when - r.ts <= w) for w in (3600.0, 86400.0, 604800.0))
        counters = replace(counters, recent_windows=windows)  # type: ignore[arg-type]
        if behavior is None:
            return counters
        history, ord_of = behavior.user_history(user_id), collection.base_forward.ord_of
        if affinity:
            counters = replace(counters, i2i_seeds=affinity_seeds(recent, history, ord_of))
        if table is None:
            return counters
        # The preference branch's own recipe (decayed_seeds slices to its recent_n/history_n).
        seeds = decayed_seeds(recent, history, ord_of, ps)
        return replace(counters, tag_affinity=table.profile(list(seeds.items())))

    async def item_windows(
        self, collection: Collection | RankingContext, ordinals: Sequence[int], *, now: float | None = None
    ) -> ItemWindows:
        """What the ranking stage reads about its candidates: each one's real-time events in the last
        hour/day/week before `now` (default: the clock). The trainers call this too, with the replayed
        request's time. Raises StoreUnavailable."""
        ids = collection.forward.ids
        counts = await self.recent.item_windows(collection.name, [ids[o] for o in ordinals], now)
        return ItemWindows(dict(zip(ordinals, counts, strict=True)))

    async def candidate_features(
        self,
        collection: Collection,
        user_id: str,
        fused: Sequence[Fused],
        *,
        schema: FeatureSchema = DEFAULT_SCHEMA,
        now: float | None = None,
    ) -> np.ndarray:
        """A ranker's input for `fused` as the ranking stage builds it for `user_id` at `now` (default:
        the clock): the user's counters and profile, the candidates' item windows when `schema` reads
        them, no request location. The trainers call this, so their rows come from serving's own reads.
        Raises StoreUnavailable."""
        counters = await self.user_counters(collection, user_id, now=now, affinity=reads_affinity(schema))
        windows = None
        if reads_item_windows(schema):
            windows = await self.item_windows(collection, [f.ordinal for f in fused], now=now)
        return feature_matrix(fused, collection, None, counters, schema, now=now, item_windows=windows)

    async def _counters(
        self, collection: Collection, user_id: str, reader: UserRecent | None = None
    ) -> tuple[UserCounters | None, bool]:
        # The affinity seeds only for a model that reads those features.
        affinity = ranker_reads_affinity(collection.ranker)
        try:
            return await self.user_counters(collection, user_id, reader, affinity=affinity), True
        except StoreUnavailable as exc:
            log.warning("user counters unavailable (%s): ranking without user features", exc)
            return None, False

    @staticmethod
    def _filtered(fused: list[Fused], collection: Collection, query: SearchQuery) -> list[Fused]:
        keep = SearchService._keep(
            np.fromiter((f.ordinal for f in fused), dtype=np.int64, count=len(fused)), collection, query
        )
        return fused if keep is None else [f for f, k in zip(fused, keep.tolist(), strict=True) if k]

    @staticmethod
    def _keep(ordinals: np.ndarray, collection: Collection, query: SearchQuery) -> np.ndarray | None:
        """Which candidates pass the exclusions and the request radius (a hard filter on every branch's
        candidates), as a mask over `ordinals`; None when nothing filters."""
        fw = collection.forward
        keep = None
        if query.filters.exclude_ids:
            ords = [fw.ord_of[i] for i in query.filters.exclude_ids if i in fw.ord_of]
            keep = ~np.isin(ordinals, np.asarray(ords, dtype=np.int64))
        if query.radius_m > 0 and query.location is not None and len(ordinals):
            with np.errstate(invalid="ignore"):
                dist = haversine_many(
                    query.location.lat, query.location.lon, fw.lat[ordinals], fw.lon[ordinals]
                )
                near = dist <= query.radius_m  # NaN (no location) compares False
            keep = near if keep is None else keep & near
        return keep

    @staticmethod
    def _hits(fused: list[Fused], collection: Collection, origin: GeoPoint | None) -> list[Hit]:
        rows = collection.forward.rows([f.ordinal for f in fused])
        if not rows:
            return []
        # Every row has the same columns: which are attributes and text fields is read once.
        attrs = [(k[5:], k) for k in rows[0] if k.startswith("attr_")]
        texts = [(k[5:], k) for k in rows[0] if k.startswith("text_")]
        hits: list[Hit] = []
        for f, row in zip(fused, rows, strict=True):
            lat, lon = row["lat"], row["lon"]
            loc = GeoPoint(lat, lon) if lat is not None and lon is not None else None
            dist = (
                haversine_m(origin.lat, origin.lon, lat, lon)
                if origin is not None and loc is not None
                else None
            )
            tags = row["tags"]
            hits.append(
                Hit(
                    id=row["id"],
                    score=f.score,
                    sources=f.sources,
                    title=row["title"],
                    category=row["category"],
                    tags=list(tags) if tags else [],
                    location=loc,
                    distance_m=dist,
                    attributes={n: row[k] for n, k in attrs if row[k] is not None},
                    fields={n: row[k] for n, k in texts if row[k]},
                )
            )
        return hits


Stage = Callable[[SearchService, "Exchange"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One endpoint as a declared sequence of stages, and which branch specs it recalls with."""

    name: str
    specs: Callable[[CollectionSettings], Mapping[str, BranchSpec]]
    stages: tuple[Stage, ...]
    #: Each stage's name, as metrics label it (`_post_filter` → "post_filter").
    stage_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(stage.__name__.lstrip("_") for stage in self.stages)
        object.__setattr__(self, "stage_names", names)


@dataclass(slots=True)
class Exchange:
    """One request's state as it passes through a pipeline's stages."""

    pipeline: Pipeline
    query: SearchQuery
    deadline: float | None
    t0: float = field(default_factory=time.perf_counter)
    collection: Collection | None = None
    specs: Mapping[str, BranchSpec] = field(default_factory=dict)
    results: list[BranchResult] = field(default_factory=list)
    fused: list[Fused] = field(default_factory=list)
    #: Fusion's answer as arrays until a stage needs Fused objects (`materialize`); then None.
    pending: fusion.FusedArrays | None = None
    hits: list[Hit] = field(default_factory=list)
    degraded: bool = False
    counters_task: asyncio.Task[tuple[UserCounters | None, bool]] | None = None
    user_recent: UserRecent | None = None
    fusion: str = ""
    explain: RankExplain | None = None
    debug: DebugDetail | None = None

    @property
    def candidate_count(self) -> int:
        return len(self.pending) if self.pending is not None else len(self.fused)

    def materialize(self, limit: int | None = None) -> None:
        """`fused` from the pending arrays: the first `limit` candidates (all without one)."""
        if self.pending is not None:
            self.fused, self.pending = self.pending.fused(limit), None

    @property
    def generation(self) -> Collection:
        """The generation `validate` resolved; every later stage uses this same one."""
        assert self.collection is not None, "the validate stage runs first"
        return self.collection

    def result(self) -> SearchResult:
        return SearchResult(
            hits=self.hits,
            snapshot_version=self.generation.version,
            degraded=self.degraded,
            branch_stats=self.results,
            took_ms=(time.perf_counter() - self.t0) * 1000,
            debug=self.debug,
        )


@dataclass(frozen=True, slots=True)
class RankExplain:
    """The fused list (ordinal, score, sources) the ranking stage received, and the ranker's inputs."""

    fused: tuple[tuple[int, float, tuple[SourceScore, ...]], ...]
    ranker: str
    feature_names: tuple[str, ...]
    features: dict[int, dict[str, float]]


async def _recent(
    store: RecentStore, collection: str, user_id: str, n: int, reader: UserRecent | None
) -> list[RecentItem]:
    if n <= 0:
        return []
    return await (reader.get(n) if reader is not None else store.recent(collection, user_id, n))


#: How many of the user's recent events a debug answer shows.
DEBUG_RECENT = 20


_S = SearchService
#: validate → recall → fuse → post-filter → rank → hydrate. Search and Recommend differ only here.
SEARCH = Pipeline(
    "search",
    lambda cs: cs.branches,
    (
        _S._require_intent,
        _S._validate,
        _S._prefetch_user,
        _S._recall,
        _S._fuse,
        _S._post_filter,
        _S._rank,
        _S._hydrate,
        _S._debug,
    ),
)
_RECOMMEND_STAGES = (
    _S._reject_text,
    _S._validate,
    _S._prefetch_user,
    _S._recall,
    _S._fuse,
    _S._post_filter,
    _S._exclude_seen,
    _S._rank,
    _S._hydrate,
    _S._debug,
)
RECOMMEND = Pipeline("recommend", lambda cs: cs.recommend_branches, _RECOMMEND_STAGES)
#: What the ranking stage sees, for offline training: the same stages up to ranking.
SEARCH_CANDIDATES = Pipeline(
    "search-candidates", SEARCH.specs, (_S._validate, _S._recall, _S._fuse, _S._post_filter)
)
RECOMMEND_CANDIDATES = Pipeline(
    "recommend-candidates",
    RECOMMEND.specs,
    (_S._validate, _S._recall, _S._fuse, _S._post_filter, _S._exclude_seen),
)


def ranker_reads_affinity(ranker: Ranker | None) -> bool:
    return explains(ranker) and reads_affinity(ranker.schema)


def affinity_seeds(
    recent: Sequence[RecentItem], history: Sequence[int], ord_of: Mapping[str, int]
) -> SeedWeights:
    """The user's seeds for the i2i affinity features, under every memory (ranker.schema.AFFINITY_MEMORIES)."""
    return SeedWeights.of([decayed_seeds(recent, history, ord_of, r) for r in AFFINITY_MEMORIES.values()])
