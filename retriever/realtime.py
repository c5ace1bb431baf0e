"""Real-time Upsert and Delete in a running server — transport-agnostic (the AdminService converts).

A change is validated per record, vectorised outside any lock (the encoder is the slow part), then, under
the collection's writer lock: the serving generation catches up with entries other processes appended,
the accepted records are appended to the change log (fsynced), and applied (`retriever.live`). The call
returns once the change is durable and visible in this process. Every process also follows the log
(`follow`, every realtime.poll_interval_s), which bounds visibility in the others (SO_REUSEPORT workers).

A reload takes the same lock for its final catch-up and switch, so no acknowledged change can be applied
to the outgoing generation only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.catalog import MAX_ID_BYTES, Item
from common.changelog import ChangeLog, ChangeLogError
from common.settings import QuarrySettings
from common.sharding import shard_dir
from common.snapshot_root import CHANGES, WORK, SnapshotRoot
from retriever.core import metrics
from retriever.core.errors import FailedPrecondition, InvalidArgument
from retriever.generations import Collection, Registry
from retriever.live import encode_vector

log = logging.getLogger(__name__)


def log_location(
    settings: QuarrySettings, root: SnapshotRoot | None, name: str
) -> tuple[ChangeLog, Path] | None:
    """Collection `name`'s change log and the parent of its generations' working copies:
    <root>/<name>/changes and <root>/<name>/.work when it is served from a snapshot root, else under
    realtime.log_dir/<name>/; None when it has neither (it then takes no real-time changes)."""
    if root is not None and name in root.collections():
        d = root.collection_dir(name)
    elif settings.realtime.log_dir is not None:
        d = settings.realtime.log_dir / name
    else:
        return None
    if settings.cluster.role == "shard" and settings.cluster.shard is not None:
        # Each shard has its own log (its own items), shared by that shard's replicas.
        sub = shard_dir(settings.cluster.shard)
        return ChangeLog(d / CHANGES / sub), d / WORK / sub
    return ChangeLog(d / CHANGES), d / WORK


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    id: str
    reason: str


@dataclass(slots=True)
class ChangeOutcome:
    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    log_seq: int = 0
    took_ms: float = 0.0


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "item"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class Realtime:
    """Change logs per collection, and the Upsert/Delete/follow operations over a `Registry`."""

    def __init__(self, settings: QuarrySettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    # -- the operations ----------------------------------------------------------------------------------

    def _writable(self, name: str, count: int) -> Collection:
        coll = self.registry.get(name)  # NOT_FOUND for an unknown collection
        if coll.changelog is None:
            raise FailedPrecondition(
                f"collection {name!r} takes no real-time changes: serve it from a snapshot root (--root) "
                "or set realtime.log_dir for a durable change log"
            )
        limit = self.settings.realtime.max_batch
        if count > limit:
            raise InvalidArgument(f"at most {limit} records per call (realtime.max_batch), got {count}")
        return coll

    async def upsert(self, name: str, records: Sequence[Mapping[str, Any]]) -> ChangeOutcome:
        t0 = time.perf_counter()
        coll = self._writable(name, len(records))
        out = ChangeOutcome()
        items: list[tuple[int, Item]] = []
        for i, record in enumerate(records):
            try:
                item = Item.model_validate(record)
            except ValidationError as exc:
                out.rejected.append(Rejected(i, str(record.get("id", "")), _reason(exc)))
                continue
            reason = self._check(coll, item)
            if reason is not None:
                out.rejected.append(Rejected(i, item.id, reason))
            else:
                items.append((i, item))
        if items:
            ops = await asyncio.to_thread(self._upsert_ops, coll, [it for _i, it in items])
            written = await asyncio.to_thread(self._commit, name, ops)
            out.accepted = len(written)
            out.log_seq = written[-1]["seq"]
        out.took_ms = (time.perf_counter() - t0) * 1000
        return out

    async def delete(self, name: str, ids: Sequence[str]) -> ChangeOutcome:
        t0 = time.perf_counter()
        coll = self._writable(name, len(ids))
        out = ChangeOutcome()
        ops: list[dict[str, Any]] = []
        for i, item_id in enumerate(ids):
            if not item_id or len(item_id.encode()) > MAX_ID_BYTES:
                out.rejected.append(Rejected(i, item_id, f"id must be 1 to {MAX_ID_BYTES} bytes"))
            elif coll.live.current_ordinal(item_id) is None:
                out.not_found.append(item_id)
            else:
                ops.append({"op": "delete", "ts": time.time(), "id": item_id})
        if ops:
            written = await asyncio.to_thread(self._commit, name, ops)
            out.accepted = len(written)
            out.log_seq = written[-1]["seq"]
        out.took_ms = (time.perf_counter() - t0) * 1000
        return out

    @staticmethod
    def _check(coll: Collection, item: Item) -> str | None:
        attrs = set(coll.attr_names)
        unknown = sorted(set(item.attrs) - attrs)
        if unknown:
            return f"unknown numeric attribute(s) {unknown} (collection {coll.name!r} has: {sorted(attrs) or 'none'})"
        fields = {f.name for f in coll.text_fields}
        unknown = sorted(set(item.text) - fields)
        if unknown:
            return f"unknown text field(s) {unknown} (collection {coll.name!r} has: {sorted(fields)})"
        vz = coll.live.vectorizer
        if vz is not None:
            return vz.check(item)
        if item.embedding is not None:
            return f"collection {coll.name!r} has no vectors: items must not carry an embedding"
        return None

    @staticmethod
    def _upsert_ops(coll: Collection, items: list[Item]) -> list[dict[str, Any]]:
        vz = coll.live.vectorizer
        vectors = vz.vectors(items) if vz is not None else None
        # Encoded once here and logged, like the item's vector: other processes replay them as they are.
        windows = vz.windows(items) if vz is not None and vz.passages is not None else None
        now = time.time()
        ops = []
        for i, item in enumerate(items):
            op: dict[str, Any] = {
                "op": "upsert",
                "ts": now,
                "item": item.model_dump(mode="json", exclude_none=True),
            }
            if vectors is not None and vz is not None:
                op["vec"] = encode_vector(vectors[i])
                op["fp"] = vz.fingerprint
                if windows is not None:
                    op["pvec"] = [encode_vector(w) for w in windows[i]]
            ops.append(op)
        return ops

    def _commit(self, name: str, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.lock(name):
            coll = self.registry.get(name)  # the generation serving now (a reload may have switched)
            try:
                written = coll.commit(ops)
            except ChangeLogError as exc:
                raise FailedPrecondition(f"collection {name!r}: change log unusable: {exc}") from None
        metrics.ITEMS.labels(name).set(coll.view.item_count())
        return written

    # -- following other processes' changes --------------------------------------------------------------

    def catch_up_all(self) -> int:
        n = 0
        for name in self.registry.names():
            coll = self.registry.get(name)
            if coll.changelog is None:
                continue
            try:
                got = coll.catch_up()
            except ChangeLogError as exc:
                log.error("collection %s: change log unreadable (%s); serving what was applied", name, exc)
                continue
            if got:
                metrics.ITEMS.labels(name).set(coll.view.item_count())
            n += got
        return n

    async def follow(self, stop: asyncio.Event) -> None:
        interval = self.settings.realtime.poll_interval_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                await asyncio.to_thread(self.catch_up_all)


__all__ = ["ChangeOutcome", "Realtime", "Rejected", "log_location"]
