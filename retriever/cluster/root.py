"""The root of a shard set: one Search/Recommend fanned out to one replica of every shard, merged into the
answer one node holding the whole collection would give.

Division of work (and why):

- **The root owns the user and the query.** It reads the user's recent events once (Redis), computes the
  behavior and preference seeds from them and the long-term histories it holds (`global/`), the
  preference profile over the set's tags, and the query embedding; every shard gets the same inputs. N
  shards therefore cost one store read and one encoding, not N.
- **Shards own items.** Each runs the requested branches over its items with the root's quotas and
  deadlines and answers each branch's top-quota list as (global ordinal, score) plus the rows of its
  candidates (retriever.cluster.shard). Scores are comparable across shards by construction: BM25 with
  whole-set statistics (common.index.textstats), cosine and haversine distances, i2i sums over the same
  seeds, global popularity.
- **Fusion and ranking happen at the root**, over each branch's *merged* list: the top `quota` of the
  union of shard lists by (score, global ordinal) is exactly one node's list, so RRF ranks, min-max
  normalisation and the ranker's rank features equal one node's. Fusing per shard would need only a
  global merge of final scores, but per-shard ranks and normalisations differ from the collection's, so
  the answer would too; the cost of the root's way is shipping up to quota candidates per branch from
  every shard (rows included, one round trip) and fusing/ranking them in one process.

Near ties: a shard rescales BM25 to global statistics in float32, so scores one node computes as equal
can differ in their last bits across shards; the merge orders near ties by global ordinal, as one node's
inverted branch does (common.ordering).

A shard that does not answer in time (after hedging and failover, retriever.cluster.replicas) leaves its
items out: the answer is partial and flagged `degraded`, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common import snapshot
from common.encoders import TextEncoder
from common.encoders.query import QueryEmbedder
from common.encoders.shared import int8_query_encoder, shared_encoder
from common.index.behavior import BehaviorIndex
from common.index.forward import ForwardStore
from common.index.text import Analyzer, TextField
from common.index.textstats import DfTable
from common.ordering import best_first
from common.profile import TagArrays, TagTable
from common.settings import BranchSpec, ClusterSettings, CollectionSettings, QuarrySettings
from common.sharding import is_shard_set
from common.types import Candidate, SeedWeights
from common.v1 import search_pb2 as pb
from common.v1 import shard_pb2 as spb
from ranker.base import Ranker
from retriever.cluster.replicas import ReplicaPolicy, ReplicaSet, ShardUnavailable
from retriever.cluster.shard import (
    AFFINITY_COLUMNS,
    GORD_COLUMN,
    ITEM_WEIGHT_COLUMN,
    POPULARITY_COLUMN,
    affinity_seed_lists,
)
from retriever.core import metrics
from retriever.core.errors import DeadlineExceeded, InvalidArgument
from retriever.core.types import BranchResult, BranchStatus, Filters, SearchQuery
from retriever.features.recent import StoreUnavailable
from retriever.generations import generation_ranker
from retriever.recall.base import analyze_query, decayed_seeds
from retriever.service import (
    RECOMMEND,
    SEARCH,
    Exchange,
    Pipeline,
    SearchService,
)

log = logging.getLogger(__name__)

#: Branches whose seeds the root computes and sends (each with its own SeedSettings section).
SEEDED = ("behavior", "preference")
SHARD_RECALL = "/quarry.v1.ShardService/Recall"
SHARD_FETCH = "/quarry.v1.ShardService/Fetch"
#: The column a root adds to shard rows: the shard that sent each candidate.
SHARD_COLUMN = "_shard"
#: Time kept back from the request's deadline for the root's own work after the fan-out.
ROOT_MARGIN_S = 0.002


@dataclass(frozen=True)
class _Ids:
    """The `base_forward` a root exposes: only the id → global ordinal map (seeds from recent events)."""

    ord_of: Mapping[str, int]


class RootCollection:
    """A shard set as its root serves it: the user side of the set (ids, long-term histories, popularity,
    tags), the ranker and the query encoder — no item indexes, those are the shards'."""

    def __init__(
        self,
        root: Path,
        settings: CollectionSettings,
        *,
        verify: Literal["full", "size"] = "full",
        generation: str = "",
        strict: bool = False,
        shards: int | None = None,
    ) -> None:
        """`shards`: how many shards this root calls; a set of another count is refused."""
        t0 = time.perf_counter()
        self.root = root
        self.generation = generation
        self.serving_since = 0.0
        self.manifest = snapshot.open_snapshot(root, verify=verify)
        parts = self.manifest.parts
        if not is_shard_set(parts):
            raise snapshot.SnapshotError(
                f"{root} is a whole collection, not a shard set: serve it without --role root "
                "(or build it with `quarry index build --shards N`)"
            )
        self.name = self.manifest.collection
        self.version = self.manifest.snapshot_version
        self.settings = settings
        self.set_id: str = parts["shards"]["set_id"]
        self.shard_count: int = int(parts["shards"]["count"])
        if shards is not None and self.shard_count != shards:
            raise snapshot.SnapshotError(
                f"{root}: a set of {self.shard_count} shards, but this root calls {shards} "
                "(cluster.shards: one list of replicas per shard)"
            )
        g = parts["global"]
        ids = ipc.open_file(pa.memory_map(str(root / g["ids"]), "r")).read_all()
        self.ids: list[str] = ids.column("id").to_pylist()
        if len(self.ids) != int(g["items"]):
            raise snapshot.SnapshotError(f"{root}: {len(self.ids)} ids, the manifest says {g['items']}")
        self.base_forward = _Ids({item_id: i for i, item_id in enumerate(self.ids)})
        self.attr_names: list[str] = list(g.get("attrs", []))
        self.text_fields = [TextField.from_json(f) for f in g.get("text_fields", [])]
        self.text_names: list[str] = [f.name for f in self.text_fields]
        self.analyzers: tuple[Analyzer, ...] = tuple(sorted({f.analyzer for f in self.text_fields}))
        #: The set's document frequencies: the root sends each query term's to the shards.
        self.df_table = DfTable.load(root / g["df"]) if "df" in g else None
        self.behavior: BehaviorIndex | None = None
        if "behavior" in parts:
            self.behavior = BehaviorIndex.load(root / parts["behavior"]["dir"], parts["behavior"])
        self.tag_arrays: TagArrays | None = None
        if "tags" in parts:
            self.tag_arrays = TagArrays.read(root / parts["tags"]["dir"], parts["tags"])
        self.encoder: TextEncoder | None = None
        self.query: QueryEmbedder | None = None
        encoder = g.get("encoder")
        if encoder is not None and any(
            name == "ann" and spec.enabled for name, spec in settings.branches.items()
        ):
            query_enc: TextEncoder | None = None
            if settings.ann.query_encoder == "int8":
                try:
                    query_enc = int8_query_encoder(
                        encoder["name"], encoder.get("fingerprint"), settings.ann.encoder_threads
                    )
                except ValueError as exc:
                    log.warning("%s: %s; the root encodes queries with %s", root, exc, encoder["name"])
            if query_enc is None:
                query_enc, fp = shared_encoder(encoder["name"], settings.ann.encoder_threads)
                if encoder.get("fingerprint") != fp:
                    raise snapshot.SnapshotError(
                        f"{root}: query encoder {fp} differs from the one that built the shards' vectors "
                        f"({encoder.get('fingerprint')})"
                    )
                if settings.ann.query_encoder == "static":
                    # A shard set has no distilled encoder (the build refuses one with --shards).
                    log.warning(
                        "%s: ann.query_encoder 'static' is for single-node snapshots; the root encodes "
                        "queries with %s",
                        root,
                        encoder["name"],
                    )
            self.encoder = query_enc
            self.query = QueryEmbedder(
                query_enc,
                cache_size=settings.ann.query_cache_size,
                max_batch=settings.ann.query_batch,
                batch_threads=settings.ann.query_batch_threads,
                observe=metrics.encode_batch_observer(query_enc.name),
                linger_s=settings.ann.query_batch_linger_ms / 1000,
            )
        self.ranker: Ranker | None = generation_ranker(root, self.manifest, settings, strict=strict)
        #: What a Collection reports for branches it cannot feed: a root knows only from its shards.
        self.unavailable: dict[str, str] = {}
        self.changelog = None
        log.info(
            "loaded shard set %s (%s): %d items in %d shards, in %.2fs",
            self.name,
            self.version,
            len(self.ids),
            self.shard_count,
            time.perf_counter() - t0,
        )

    @cached_property
    def tag_table(self) -> TagTable | None:
        """Item → tags over the whole set (profiles and the ranker's affinity; no per-tag lists here)."""
        return None if self.tag_arrays is None else TagTable.from_arrays(self.tag_arrays, per_tag=0)

    def item_count(self) -> int:
        return len(self.ids)

    def user_history(self, user_id: str) -> list[int]:
        return self.behavior.user_history(user_id) if self.behavior is not None else []

    def check_filters(self, filters: Filters) -> None:
        for r in filters.ranges:
            if r.field not in self.attr_names:
                known = ", ".join(self.attr_names) or "none"
                raise InvalidArgument(
                    f"filters.ranges: unknown numeric attribute {r.field!r} in collection {self.name!r} (known: {known})"
                )

    def close(self) -> None:
        pass


class CandidateView:
    """One request's candidates at the root, in the shape the post-recall stages and the ranker read (a
    generation's): compact ordinals 0..n-1 in global-ordinal order, so ordinal tie-breaks agree with one
    node's, over a forward store made of the rows the shards sent."""

    def __init__(self, root: RootCollection, rows: pa.Table) -> None:
        self._root = root
        self.name = root.name
        self.set_id = root.set_id
        self.version = root.version
        self.generation = root.generation
        self.settings = root.settings
        self.ranker = root.ranker
        self.gord = rows.column(GORD_COLUMN).to_numpy()
        self.owner = rows.column(SHARD_COLUMN).to_numpy() if rows.num_rows else np.zeros(0, np.int32)
        self._rows = rows
        #: Whether the rows came with their display fields (cluster.display = in_recall).
        self.has_display = "title" in rows.column_names
        self.forward = self.base_forward = ForwardStore.from_table(rows, root.attr_names, root.text_names)
        self._compact = {int(g): i for i, g in enumerate(self.gord.tolist())}
        pop = _floats(rows, POPULARITY_COLUMN)
        self.item_popularity = None if root.behavior is None else np.nan_to_num(pop, nan=0.0)
        names = set(rows.column_names)
        self.item_weight = _floats(rows, ITEM_WEIGHT_COLUMN) if ITEM_WEIGHT_COLUMN in names else None
        #: The i2i affinity features the shards computed for the candidates, with the root's seeds.
        self._affinity = {n: _floats(rows, c) for n, c in AFFINITY_COLUMNS.items() if c in names}

    def i2i_affinity(self, seeds: SeedWeights, ordinals: np.ndarray) -> dict[str, np.ndarray]:
        """The affinity columns the shards sent, computed with `seeds` itself (the fan-out sent them the
        ranking stage's seeds); NaN where a shard sent none (the default then)."""
        return {name: values[ordinals] for name, values in self._affinity.items()}

    def add_display(self, tables: Sequence[pa.Table]) -> None:
        """Join the fetched display fields (title, text_*) onto the candidates' rows; a candidate not
        fetched gets an empty title and no text."""
        cols = ["title", *(f"text_{n}" for n in self._root.text_names)]
        fetched = pa.concat_tables(tables, promote_options="permissive") if tables else None
        index = (
            {} if fetched is None else {g: i for i, g in enumerate(fetched.column(GORD_COLUMN).to_pylist())}
        )
        take = pa.array([index.get(int(g)) for g in self.gord], pa.int64())
        rows = self._rows
        for c in cols:
            if fetched is not None and c in fetched.column_names:
                col = fetched.column(c).take(take)
            else:
                col = pa.nulls(len(self.gord), pa.string())
            rows = rows.append_column(c, col.fill_null("") if c == "title" else col)
        self.forward = self.base_forward = ForwardStore.from_table(
            rows, self._root.attr_names, self._root.text_names
        )
        self.has_display = True

    def compact(self, gords: Sequence[int]) -> list[int]:
        return [self._compact[g] for g in gords]

    def user_history(self, user_id: str) -> list[int]:
        """The user's long-term items that are among the candidates (Recommend's seen-filter)."""
        return [self._compact[g] for g in self._root.user_history(user_id) if g in self._compact]

    @cached_property
    def tag_table(self) -> TagTable | None:
        arrays = self._root.tag_arrays
        if arrays is None:
            return None
        inside = self.gord < len(arrays.item_indptr) - 1  # upserted items are not in the set's table
        taken = arrays.take(self.gord[inside])
        lens = np.zeros(len(self.gord), dtype=np.int64)
        lens[inside] = np.diff(taken.item_indptr)
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        padded = TagArrays(arrays.vocab, indptr, taken.tag_ids, taken.tag_rank)
        return TagTable.from_arrays(padded, per_tag=0)


@dataclass
class _ShardAnswer:
    shard: int
    answer: spb.ShardRecallResponse | None = None
    error: str = ""
    rows: pa.Table | None = None
    replica: str = ""
    hedged: bool = False


@dataclass
class Fanout:
    """The shard servers of a root: one ReplicaSet per shard (shared by every collection)."""

    sets: list[ReplicaSet]
    timeout_s: float
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: ClusterSettings, credentials: grpc.ChannelCredentials | None = None) -> Fanout:
        if not s.shards:
            raise ValueError("role root needs cluster.shards (per shard, its replicas' addresses)")
        policy = ReplicaPolicy(
            hedge=s.hedge,
            hedge_quantile=s.hedge_quantile,
            hedge_min_ms=s.hedge_min_ms,
            hedge_budget=s.hedge_budget,
            eject_failures=s.eject_failures,
            eject_s=s.eject_s,
            dns_refresh_s=s.dns_refresh_s,
        )
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        sets = [
            ReplicaSet(f"shard-{i}", targets, policy, channel_options=options, credentials=credentials)
            for i, targets in enumerate(s.shards)
        ]
        return cls(sets, s.shard_timeout_ms / 1000)

    async def start(self) -> None:
        """Open every replica's channel (and resolve DNS targets) before the first request."""
        await asyncio.gather(*(rs.start() for rs in self.sets))

    async def close(self) -> None:
        for rs in self.sets:
            await rs.close()

    async def fetch(self, payloads: Mapping[int, bytes], deadline: float | None) -> dict[int, pa.Table | str]:
        """Each shard's Fetch of its payload (shard → the display rows, or why it did not answer)."""
        timeout = self.timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic() - ROOT_MARGIN_S)
        if timeout <= 0:
            return dict.fromkeys(payloads, "no time left before the request deadline")
        shards = list(payloads)
        got = await asyncio.gather(*(_fetch_from(self.sets[s], payloads[s], timeout) for s in shards))
        return dict(zip(shards, got, strict=True))

    async def call(self, payload: bytes, deadline: float | None) -> list[_ShardAnswer]:
        timeout = self.timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic() - ROOT_MARGIN_S)
        if timeout <= 0:
            raise DeadlineExceeded("no time left for the shards before the request deadline")

        async def one(i: int, rs: ReplicaSet) -> _ShardAnswer:
            async def rpc(channel: grpc.aio.Channel, t: float) -> spb.ShardRecallResponse:
                method = channel.unary_unary(
                    SHARD_RECALL,
                    request_serializer=None,  # the request is serialised once for every shard
                    response_deserializer=spb.ShardRecallResponse.FromString,
                )
                return await method(payload, timeout=t)

            try:
                outcome = await rs.call(rpc, timeout)
            except ShardUnavailable as exc:
                return _ShardAnswer(i, error=str(exc))
            except grpc.aio.AioRpcError as exc:
                return _ShardAnswer(i, error=f"{exc.code().name}: {exc.details()}")
            ans = outcome.value
            rows = ipc.open_stream(ans.rows).read_all() if ans.rows else None
            if rows is not None:  # which shard holds each candidate: where the root fetches it from
                rows = rows.append_column(SHARD_COLUMN, pa.array(np.full(rows.num_rows, i, np.int32)))
            return _ShardAnswer(i, ans, rows=rows, replica=outcome.replica, hedged=outcome.hedged)

        return list(await asyncio.gather(*(one(i, rs) for i, rs in enumerate(self.sets))))


async def _fetch_from(rs: ReplicaSet, payload: bytes, budget_s: float) -> pa.Table | str:
    async def rpc(channel: grpc.aio.Channel, t: float) -> spb.ShardFetchResponse:
        method = channel.unary_unary(
            SHARD_FETCH, request_serializer=None, response_deserializer=spb.ShardFetchResponse.FromString
        )
        return await method(payload, timeout=t)

    try:
        outcome = await rs.call(rpc, budget_s)
    except ShardUnavailable as exc:
        return str(exc)
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return ipc.open_stream(outcome.value.rows).read_all()


def merge_lists(
    lists: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]], quota: int
) -> list[tuple[int, float]]:
    """Shard lists (global ordinals, scores) of one branch → its top `quota` in one node's order
    (common.ordering: by score, near ties by global ordinal)."""
    if not lists:
        return []
    ords = np.concatenate([np.asarray(o, dtype=np.int64) for o, _ in lists])
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in lists])
    return best_first(ords, scores, quota)


def _branch_result(
    name: str, spec: BranchSpec, answers: Sequence[_ShardAnswer], count: int
) -> tuple[BranchResult, bool, list[tuple[int, float]]]:
    """One branch's combined result over the shards: (result, degraded, merged (gord, score) list)."""
    entries: list[tuple[int, spb.ShardBranch]] = []
    missing: list[str] = []
    for a in answers:
        if a.answer is None:
            missing.append(f"shard {a.shard} unavailable ({a.error})")
            continue
        b = next((b for b in a.answer.branches if b.branch == name), None)
        if b is None:
            missing.append(f"shard {a.shard} did not run it")
        else:
            entries.append((a.shard, b))
    ok = [b for _, b in entries if b.status == pb.BRANCH_STATUS_OK]
    failed = [(s, b) for s, b in entries if b.status in (pb.BRANCH_STATUS_TIMEOUT, pb.BRANCH_STATUS_ERROR)]
    latency = max((b.latency_ms for _, b in entries), default=0.0)
    problems = missing + [f"shard {s}: {b.detail}" for s, b in failed]
    if ok:
        merged = merge_lists(
            [(np.frombuffer(b.ordinals, "<i8"), np.frombuffer(b.scores, "<f8")) for b in ok], spec.quota
        )
        detail = "" if not problems else f"{len(ok)} of {count} shards answered ({'; '.join(problems[:3])})"
        return BranchResult(name, BranchStatus.OK, [], latency, detail), bool(problems), merged
    if failed or missing:
        timeouts = failed and all(b.status == pb.BRANCH_STATUS_TIMEOUT for _, b in failed)
        status = BranchStatus.TIMEOUT if timeouts else BranchStatus.ERROR
        return BranchResult(name, status, [], latency, "; ".join(problems[:3])), True, []
    first = entries[0][1] if entries else None
    status = (
        BranchStatus.DISABLED
        if first is not None and first.status == pb.BRANCH_STATUS_DISABLED
        else BranchStatus.SKIPPED
    )
    return BranchResult(name, status, [], 0.0, first.detail if first is not None else ""), False, []


class RootSearchService(SearchService):
    """SearchService over shard sets: the same pipelines with the fan-out in place of local recall."""

    def __init__(self, settings: QuarrySettings, registry: Any, fanout: Fanout, **kw: Any) -> None:
        super().__init__(settings, registry, **kw)
        self.fanout = fanout

    async def search(self, query: SearchQuery, deadline: float | None = None) -> Any:
        return (await self._run(ROOT_SEARCH, query, deadline)).result()

    async def recommend(self, query: SearchQuery, deadline: float | None = None) -> Any:
        return (await self._run(ROOT_RECOMMEND, query, deadline)).result()

    async def aclose(self) -> None:
        await self.fanout.close()
        await super().aclose()

    async def _fan_out(self, ex: Exchange) -> None:
        root: RootCollection = ex.generation  # type: ignore[assignment]
        q = ex.query
        specs = {n: s for n, s in ex.specs.items() if s.enabled}
        failed: dict[str, str] = {}
        seeds: dict[str, dict[int, float]] = {}
        if q.user_id:
            reader = self._reader(ex)
            for name in SEEDED:
                if name not in specs:
                    continue
                s = getattr(root.settings, name)
                try:
                    recent = await reader.get(s.recent_n) if s.recent_n else []
                except StoreUnavailable as exc:
                    failed[name] = f"StoreUnavailable: {exc}"
                    continue
                seeds[name] = decayed_seeds(recent, root.user_history(q.user_id), root.base_forward.ord_of, s)
        affinity = await _affinity_seeds(ex)
        if affinity is not None:
            seeds.update(affinity_seed_lists(affinity))
        profile = None
        table = root.tag_table
        if "preference" in seeds and table is not None:
            profile = table.profile(list(seeds["preference"].items()))
        term_df: list[spb.TermDf] = []
        if "inverted" in specs and root.df_table is not None and q.text.strip():
            terms = analyze_query(q.text, root.analyzers, self.settings.limits.max_query_terms)
            term_df = [
                spb.TermDf(field=f.name, term=t, df=root.df_table.df(f.name, t))
                for f in root.text_fields
                for t in terms.get(f.analyzer, ())
            ]
        vector = None
        if "ann" in specs and q.text.strip() and root.query is not None:
            vector = await root.query.aembed(
                q.text, partial(asyncio.get_running_loop().run_in_executor, self.pool)
            )
        request = spb.ShardRecallRequest(
            collection=root.name,
            set_id=root.set_id,
            generation=root.generation,
            query=_query_message(q),
            branches=[
                spb.BranchCall(name=n, quota=s.quota, timeout_ms=s.timeout_ms)
                for n, s in specs.items()
                if n not in failed
            ],
            seeds=[
                spb.SeedList(branch=n, ordinals=list(d.keys()), weights=list(d.values()))
                for n, d in seeds.items()
            ],
            profile=profile.tolist() if profile is not None else [],
            query_vector=np.asarray(vector, dtype="<f4").tobytes() if vector is not None else b"",
            with_display=self.settings.cluster.display == "in_recall",
            term_df=term_df,
        )
        with self.span("fanout", {"quarry.collection": root.name, "quarry.shards": len(self.fanout.sets)}):
            answers = await self.fanout.call(request.SerializeToString(), ex.deadline)
        if ex.deadline is not None and time.monotonic() >= ex.deadline:
            raise DeadlineExceeded("the request deadline expired during recall")
        for a in answers:
            metrics.SHARD_ANSWERS.labels(root.name, str(a.shard), "ok" if a.answer else "missing").inc()
        results: list[BranchResult] = []
        merged: dict[str, list[tuple[int, float]]] = {}
        degraded = any(a.answer is None for a in answers)
        for name, spec in ex.specs.items():
            if not spec.enabled:
                results.append(
                    BranchResult(name, BranchStatus.DISABLED, detail="disabled in the collection's settings")
                )
            elif name in failed:
                results.append(BranchResult(name, BranchStatus.ERROR, detail=failed[name]))
                degraded = True
            else:
                res, bad, lst = _branch_result(name, spec, answers, len(answers))
                degraded = degraded or bad
                results.append(res)
                merged[name] = lst
        keep = sorted({g for lst in merged.values() for g, _ in lst})
        view = CandidateView(root, _rows(answers, keep, root))
        for res in results:
            branch_list = merged.get(res.branch)
            if branch_list:
                compact = view.compact([g for g, _ in branch_list])
                res.candidates = [Candidate(o, s) for o, (_g, s) in zip(compact, branch_list, strict=True)]
        for r in results:
            metrics.record_branch(root.name, r.branch, r.status.value, r.latency_ms, len(r.candidates))
        ex.results = results
        ex.degraded = degraded
        ex.collection = view  # type: ignore[assignment]  # later stages read the request's candidates


async def _affinity_seeds(ex: Exchange) -> SeedWeights | None:
    """The user's i2i affinity seeds for the shards to score their candidates with: the very seeds the
    ranking stage derives with the user's counters (`SearchService._counters`, started before recall,
    only for a model that reads them). None without them (no such model, or the store failed: the
    features keep their defaults)."""
    if ex.counters_task is None:
        return None
    counters, _store_ok = await ex.counters_task
    return counters.i2i_seeds if counters is not None else None


async def _root_fetch(service: RootSearchService, ex: Exchange) -> None:
    """Query then fetch: the display fields of the hits this answer returns (of every candidate for a
    debug answer, which shows each branch's list) from the shards holding them, in parallel."""
    view: CandidateView = ex.generation  # type: ignore[assignment]
    if view.has_display:
        return
    if ex.query.debug:
        wanted = np.arange(len(view.gord))
    else:
        wanted = np.fromiter((f.ordinal for f in ex.fused[: ex.query.top_k]), np.int64)
    if not len(wanted):
        view.add_display([])
        return
    payloads: dict[int, bytes] = {}
    for shard in np.unique(view.owner[wanted]).tolist():
        gords = view.gord[wanted[view.owner[wanted] == shard]]
        payloads[int(shard)] = spb.ShardFetchRequest(
            collection=view.name, set_id=view.set_id, ordinals=gords.astype("<i8").tobytes()
        ).SerializeToString()
    got = await service.fanout.fetch(payloads, ex.deadline)
    tables = [t for t in got.values() if isinstance(t, pa.Table)]
    if len(tables) < len(got):
        ex.degraded = True
        for shard, why in got.items():
            if isinstance(why, str):
                log.warning("fetch from shard %d failed (%s): hits without display fields", shard, why)
    view.add_display(tables)


def _floats(rows: pa.Table, column: str) -> np.ndarray:
    return rows.column(column).to_numpy(zero_copy_only=False).astype(np.float64)


def _rows(answers: Sequence[_ShardAnswer], keep: Sequence[int], root: RootCollection) -> pa.Table:
    """The rows of the kept candidates, in global-ordinal order (one row each)."""
    tables = [a.rows for a in answers if a.rows is not None and a.rows.num_rows]
    if not tables:
        schema = next((a.rows.schema for a in answers if a.rows is not None), None)
        return pa.Table.from_pylist([], schema=schema) if schema is not None else _empty_rows(root)
    rows = pa.concat_tables(tables, promote_options="permissive")
    gord = rows.column(GORD_COLUMN).to_numpy()
    order = np.argsort(gord, kind="stable")
    gord = gord[order]
    first = np.concatenate([[True], gord[1:] != gord[:-1]]) if len(gord) else np.zeros(0, bool)
    wanted = np.isin(gord, np.asarray(keep, dtype=np.int64)) & first
    return rows.take(pa.array(order[wanted]))


def _empty_rows(root: RootCollection) -> pa.Table:
    cols: dict[str, pa.Array] = {
        "id": pa.array([], pa.string()),
        "category": pa.array([], pa.string()),
        "tags": pa.array([], pa.list_(pa.string())),
        "lat": pa.array([], pa.float64()),
        "lon": pa.array([], pa.float64()),
    }
    for name in root.attr_names:
        cols[f"attr_{name}"] = pa.array([], pa.float64())
    cols[GORD_COLUMN] = pa.array([], pa.int64())
    cols[POPULARITY_COLUMN] = pa.array([], pa.float64())
    cols[SHARD_COLUMN] = pa.array([], pa.int32())
    return pa.table(cols)


def _query_message(q: SearchQuery) -> pb.SearchRequest:
    msg = pb.SearchRequest(collection=q.collection, query=q.text, user_id=q.user_id, radius_m=q.radius_m)
    if q.location is not None:
        msg.location.lat, msg.location.lon = q.location.lat, q.location.lon
    f = q.filters
    msg.filters.categories.extend(f.categories)
    msg.filters.tags.extend(f.tags)
    msg.filters.exclude_ids.extend(f.exclude_ids)
    for r in f.ranges:
        nr = msg.filters.ranges.add(
            field=r.field, min_exclusive=r.min_exclusive, max_exclusive=r.max_exclusive
        )
        if r.min is not None:
            nr.min = r.min
        if r.max is not None:
            nr.max = r.max
    return msg


_S = SearchService
_R = RootSearchService


def _replace_recall(p: Pipeline) -> Pipeline:
    stages: list[Any] = []
    for s in p.stages:
        if s is _S._recall:
            s = _R._fan_out  # type: ignore[assignment]
        elif s is _S._hydrate:
            stages.append(_root_fetch)
        stages.append(s)
    return Pipeline(p.name, p.specs, tuple(stages))


#: The single-node pipelines with the fan-out in place of local recall and the fetch of display fields
#: before hydration; every other stage is shared.
ROOT_SEARCH = _replace_recall(SEARCH)
ROOT_RECOMMEND = _replace_recall(RECOMMEND)
