"""A root's administration of its shard sets: status, coordinated Reload/Rollback, routed Upsert/Delete.

**Reload at the root is a coordinated switch.** The root first asks every replica of every shard to load
the generation (AdminService.Reload with keep_pointer: a shard keeps its previous set loaded, see
retriever.cluster.shard, so it goes on answering the root's requests for the set still served), then
loads the set's global part itself and swaps it in one reference: requests before the swap fan out to the
old set everywhere, requests after it to the new one everywhere — never a mix. Only then does it move the
snapshot root's live pointer. If any replica refuses the generation (corrupt, another schema, down), the
root does not switch and says which replica refused and why; shards that did load it keep serving the old
set to this root, and a later Reload retries.

**Upserts and Deletes go to the owning shard** (`shard_of(id)`), to one replica of it (failing over to the
next): the shard appends them to its own change log, which that shard's other replicas follow. Per-record
rejections come back at the record's position in the caller's request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from common import heap
from common.settings import QuarrySettings
from common.sharding import shard_of
from common.snapshot import SnapshotError
from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2 as apb
from retriever.cluster.root import Fanout, RootCollection
from retriever.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from retriever.generations import Registry
from retriever.lifecycle import GenerationStatus, Lifecycle, ReloadOutcome
from retriever.realtime import ChangeOutcome, Rejected

log = logging.getLogger(__name__)
T = TypeVar("T")
ADMIN = "/quarry.v1.AdminService/"
#: A shard replica loading a generation (checksums, warm-up) may take this long.
SHARD_RELOAD_TIMEOUT_S = 300.0
WRITE_TIMEOUT_S = 30.0


class ShardAdmin:
    """Calls the shards' AdminService with the root's shard token: on every replica, or on one."""

    def __init__(self, fanout: Fanout, token: str) -> None:
        self.fanout = fanout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def replicas(self) -> list[list[str]]:
        """Every shard's replica addresses, as the root resolves them now."""
        out = []
        for rs in self.fanout.sets:
            await rs.start()
            out.append([r["address"] for r in rs.status()])
        return out

    async def _call(self, address: str, method: str, request: Any, response: Any, deadline_s: float) -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            rpc = channel.unary_unary(
                ADMIN + method,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response.FromString,
            )
            return await rpc(request, timeout=deadline_s, metadata=self._metadata)

    async def on_every_replica(
        self, method: str, request: Any, response: Any, deadline_s: float
    ) -> dict[str, Any]:
        """`method` on every replica of every shard at once: address → response or the exception."""
        addresses = [a for group in await self.replicas() for a in group]
        results = await asyncio.gather(
            *(self._call(a, method, request, response, deadline_s) for a in addresses), return_exceptions=True
        )
        return dict(zip(addresses, results, strict=True))

    async def on_one_replica(self, shard: int, method: str, request: Any, response: Any) -> Any:
        """`method` on one replica of `shard`, the next one when it cannot be reached (no hedging: a
        write must not run twice in parallel)."""
        why = []
        for address in (await self.replicas())[shard]:
            try:
                return await self._call(address, method, request, response, WRITE_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                why.append(f"{address}: {exc.code().name}")
        raise Unavailable(f"no replica of shard {shard} took the change ({'; '.join(why) or 'none known'})")


class RootLifecycle(Lifecycle):
    """Lifecycle (status, reload, rollback, refresh, watch) for a root's shard sets: what is loaded is
    the set's global part, and a switch is coordinated with every shard replica first."""

    def __init__(
        self, settings: QuarrySettings, registry: Registry, root: SnapshotRoot | None, fanout: Fanout
    ) -> None:
        super().__init__(settings, registry, root)
        self.fanout = fanout
        token = settings.cluster.shard_token or settings.admin.token
        self.shards = ShardAdmin(fanout, token.get_secret_value() if token else "")

    def _status(self, coll: Any) -> GenerationStatus:
        gens, live = self._root_generations(coll.name)
        enabled = {**coll.settings.recommend_branches, **coll.settings.branches}
        return GenerationStatus(
            collection=coll.name,
            snapshot_version=coll.version,
            generation=coll.generation,
            path=coll.root,
            items=coll.item_count(),
            branches=sorted(n for n, spec in enabled.items() if spec.enabled),
            unavailable={},
            ranker="fused" if coll.ranker is None else str(getattr(coll.ranker, "version", coll.ranker.name)),
            serving_since=coll.serving_since,
            generations=gens,
            root_live=live,
            set_id=coll.set_id,
            shards=[rs.status() for rs in self.fanout.sets],
        )

    async def _switch(self, name: str, path: Path, label: str, current: Any) -> ReloadOutcome:
        t0 = time.perf_counter()
        if (same := self._unchanged(path, label, current)) is not None:
            return same
        try:
            fresh = await asyncio.to_thread(
                RootCollection,
                path,
                self.settings.for_collection(name),
                verify=self.settings.verify,
                generation=label,
                strict=True,
                shards=len(self.fanout.sets),
            )
        except (SnapshotError, OSError, ValueError) as exc:
            raise FailedPrecondition(f"refused {label or path}: {exc}") from None
        if fresh.name != name:
            raise FailedPrecondition(f"refused {label or path}: it holds {fresh.name!r}, not {name!r}")
        # 1. every replica of every shard loads it (and keeps the old set for this root's requests)
        answers = await self.shards.on_every_replica(
            "Reload",
            apb.ReloadRequest(collection=name, generation=label, keep_pointer=True),
            apb.ReloadResponse,
            SHARD_RELOAD_TIMEOUT_S,
        )
        refused = {a: r for a, r in answers.items() if isinstance(r, BaseException)}
        if refused:
            detail = "; ".join(f"{a}: {_why(r)}" for a, r in sorted(refused.items()))
            log.error(
                "collection %s: shards refused %s (%s); %s keeps serving",
                name,
                label,
                detail,
                current.version,
            )
            raise FailedPrecondition(
                f"refused {label or path}: {len(refused)} shard replicas did not load it: {detail}"
            )
        # 2. one reference swap: every later request fans out to the new set
        fresh.serving_since = time.time()
        self.registry.put(fresh)  # type: ignore[arg-type]
        load_ms = (time.perf_counter() - t0) * 1000
        heap.after_swap()  # common.heap
        log.info(
            "collection %s: now serving %s (%s) over %d shards, was %s; coordinated in %.0f ms",
            name,
            fresh.version,
            label or path,
            fresh.shard_count,
            current.version,
            load_ms,
        )
        return ReloadOutcome(self._status(fresh), current.version, load_ms, unchanged=False)


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class RootRealtime:
    """Realtime's interface (upsert, delete) for a root: each record to the shard that owns its id."""

    def __init__(self, settings: QuarrySettings, registry: Registry, shards: ShardAdmin) -> None:
        self.settings = settings
        self.registry = registry
        self.shards = shards

    def _count(self, name: str, n: int) -> int:
        coll: RootCollection = self.registry.get(name)  # type: ignore[assignment]
        if n > self.settings.realtime.max_batch:
            raise InvalidArgument(
                f"{n} records in one call; the maximum is {self.settings.realtime.max_batch}"
            )
        return coll.shard_count

    async def upsert(self, name: str, records: Sequence[Mapping[str, Any]]) -> ChangeOutcome:
        count = self._count(name, len(records))
        groups: dict[int, list[int]] = {}
        rejected: list[Rejected] = []
        for i, rec in enumerate(records):
            item_id = rec.get("id")
            if not isinstance(item_id, str) or not item_id:
                rejected.append(Rejected(i, "", "id is required"))
                continue
            groups.setdefault(shard_of(item_id, count), []).append(i)

        def request(positions: list[int]) -> apb.UpsertRequest:
            return apb.UpsertRequest(collection=name, items=[_item(records[p]) for p in positions])

        return await self._route(name, groups, request, "Upsert", rejected)

    async def delete(self, name: str, ids: Sequence[str]) -> ChangeOutcome:
        count = self._count(name, len(ids))
        groups: dict[int, list[int]] = {}
        for i, item_id in enumerate(ids):
            groups.setdefault(shard_of(item_id, count) if item_id else 0, []).append(i)

        def request(positions: list[int]) -> apb.DeleteRequest:
            return apb.DeleteRequest(collection=name, ids=[ids[p] for p in positions])

        return await self._route(name, groups, request, "Delete", [])

    async def _route(
        self,
        name: str,
        groups: dict[int, list[int]],
        request: Callable[[list[int]], Any],
        method: str,
        rejected: list[Rejected],
    ) -> ChangeOutcome:
        t0 = time.perf_counter()
        calls: list[Awaitable[apb.ChangeResponse]] = [
            self.shards.on_one_replica(s, method, request(pos), apb.ChangeResponse)
            for s, pos in groups.items()
        ]
        try:
            answers = await asyncio.gather(*calls)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(exc.details() or "invalid change") from None
            raise Unavailable(f"a shard refused the change: {_why(exc)}") from None
        out = ChangeOutcome(rejected=list(rejected))
        for (_s, positions), ans in zip(groups.items(), answers, strict=True):
            out.accepted += ans.accepted
            out.rejected.extend(Rejected(positions[r.index], r.id, r.reason) for r in ans.rejected)
            out.not_found.extend(ans.not_found)
            out.log_seq = max(out.log_seq, ans.log_seq)
        out.rejected.sort(key=lambda r: r.index)
        out.took_ms = (time.perf_counter() - t0) * 1000
        return out


def _item(record: Mapping[str, Any]) -> apb.Item:
    item = apb.Item(id=record["id"], text=record.get("text") or {}, tags=record.get("tags") or [])
    for key in ("category", "lat", "lon"):
        if record.get(key) is not None:
            setattr(item, key, record[key])
    if record.get("attrs"):
        item.attrs.update(record["attrs"])
    if record.get("embedding"):
        item.embedding.extend(record["embedding"])
    return item
