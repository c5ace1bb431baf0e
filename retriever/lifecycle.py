"""Generations in a running server: load, validate, switch, roll back — transport-agnostic.

A reload loads the new generation beside the serving one (in a worker thread, so requests keep being
answered), validates it (manifest and checksums in `Collection`, a warm-up recall through every branch, a
strict ranker model check, no branch lost that the serving generation has) and only then swaps the
registry's reference. Requests hold the generation they resolved at their start (`Exchange.collection`),
so they finish on it; the old generation's indexes are released when the last of them drops it (Python
reference counting: nothing else keeps a reference). Peak memory during a swap is therefore at most the
two generations' resident pages; memory-mapped parts share the page cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import heap
from common.changelog import ChangeLogError
from common.settings import QuarrySettings
from common.snapshot import SnapshotError, read_manifest
from common.snapshot_root import SnapshotRoot, generation_name, parse_generation
from common.types import GeoPoint
from ranker.session import ModelLoadError
from retriever.core.errors import FailedPrecondition, InvalidArgument, NotFound
from retriever.core.types import SearchQuery
from retriever.generations import Collection, Registry
from retriever.realtime import Realtime, log_location
from retriever.recall.base import RecallRequest, analyze_query

log = logging.getLogger(__name__)

#: A warm-up recall taking longer than this refuses the generation (a healthy branch answers in ms).
WARM_UP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class GenerationStatus:
    collection: str
    snapshot_version: str
    generation: str
    path: Path
    items: int
    branches: list[str]
    unavailable: dict[str, str]
    ranker: str
    serving_since: float
    generations: list[str] = field(default_factory=list)
    root_live: str = ""
    log_seq: int = 0
    generation_log_seq: int = 0
    upserts: int = 0
    deletes: int = 0
    changelog: str = ""
    #: A shard set's root: the set's id and, per shard, its replicas' state (ReplicaSet.status()).
    set_id: str = ""
    shards: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    status: GenerationStatus
    previous_version: str
    load_ms: float
    unchanged: bool


class Lifecycle:
    """Reload / rollback / status over a `Registry`, optionally backed by a `SnapshotRoot`."""

    def __init__(
        self,
        settings: QuarrySettings,
        registry: Registry,
        root: SnapshotRoot | None,
        realtime: Realtime | None = None,
        *,
        locate: Callable[[Path], Path] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.root = root
        self.realtime = realtime
        #: A generation directory → the directory this server loads (a shard: its shard's part of the set).
        self.locate = locate or (lambda path: path)
        self._locks: dict[str, asyncio.Lock] = {}

    # -- status ------------------------------------------------------------------------------------------

    def status(self, name: str = "") -> list[GenerationStatus]:
        names = [name] if name else self.registry.names()
        return [self._status(self.registry.get(n)) for n in names]

    def _root_generations(self, name: str) -> tuple[list[str], str]:
        """The snapshot root's generations of `name` and its live one ([] and "" without a root)."""
        if self.root is None or name not in self.root.collections():
            return [], ""
        number = self.root.live_number(name)
        return [generation_name(n) for n in self.root.numbers(name)], (
            generation_name(number) if number is not None else ""
        )

    def _status(self, coll: Collection) -> GenerationStatus:
        gens, live = self._root_generations(coll.name)
        ranker = coll.ranker
        view = coll.view
        return GenerationStatus(
            collection=coll.name,
            snapshot_version=coll.version,
            generation=coll.generation,
            path=coll.root,
            items=view.item_count(),
            branches=sorted(coll.branches),
            unavailable=dict(coll.unavailable),
            ranker="fused" if ranker is None else str(getattr(ranker, "version", ranker.name)),
            serving_since=coll.serving_since,
            generations=gens,
            root_live=live,
            log_seq=view.seq,
            generation_log_seq=coll.log_seq,
            upserts=view.upserts,
            deletes=view.deletes,
            changelog=str(coll.changelog.dir) if coll.changelog is not None else "",
        )

    # -- reload / rollback -------------------------------------------------------------------------------

    async def reload(self, name: str, generation: str = "", *, keep_pointer: bool = False) -> ReloadOutcome:
        """Serve the root's live generation (or the named one, which then becomes the root's live one,
        unless `keep_pointer`: a shard set's root moves the pointer itself once every shard has it)."""
        current = self.registry.get(name)  # NOT_FOUND for an unknown collection
        path, label = self._target(name, generation, current)
        async with self._lock(name):
            outcome = await self._switch(name, path, label, current)
            if generation and self.root is not None and not outcome.unchanged and not keep_pointer:
                self.root.activate(name, label)
            return outcome

    async def rollback(self, name: str, generation: str = "") -> ReloadOutcome:
        """Serve an older generation (default: the one before the serving one) and make it live in the root."""
        current = self.registry.get(name)
        root = self._require_root(name)
        if not generation:
            base = parse_generation(current.generation) if current.generation else root.live_number(name)
            older = [n for n in root.numbers(name) if base is not None and n < base]
            if not older:
                raise FailedPrecondition(
                    f"collection {name!r}: no generation older than {current.generation or 'the serving one'}"
                )
            generation = generation_name(older[-1])
        return await self.reload(name, generation)

    async def refresh(self) -> list[ReloadOutcome]:
        """Reload every collection whose root pointer moved since it was loaded (the watch loop's step)."""
        if self.root is None:
            return []
        done = []
        for name in self.registry.names():
            try:
                number = self.root.live_number(name)
            except (SnapshotError, ValueError) as exc:
                log.error("collection %s: live pointer unreadable (%s); keeps serving", name, exc)
                continue
            if number is None or generation_name(number) == self.registry.get(name).generation:
                continue
            try:
                done.append(await self.reload(name))
            except FailedPrecondition as exc:
                log.error("collection %s: %s; keeps serving", name, exc)
        return done

    async def watch(self, stop: asyncio.Event) -> None:
        interval = self.settings.admin.watch_interval_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                await self.refresh()

    # -- internals ---------------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _require_root(self, name: str) -> SnapshotRoot:
        if self.root is None:
            raise FailedPrecondition(
                f"collection {name!r} is not served from a snapshot root (serve with --root to use generations)"
            )
        return self.root

    def _target(self, name: str, generation: str, current: Collection) -> tuple[Path, str]:
        if self.root is None:
            if generation:
                raise FailedPrecondition(
                    f"collection {name!r} is not served from a snapshot root: it has no named generations"
                )
            return current.root, ""  # re-read the same directory (e.g. replaced with --force)
        try:
            path = self.root.resolve(name, generation or None)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        except SnapshotError as exc:
            raise NotFound(str(exc)) from None
        try:
            return self.locate(path), path.name
        except SnapshotError as exc:
            raise FailedPrecondition(f"refused {path.name}: {exc}") from None

    def _unchanged(self, path: Path, label: str, current: Any) -> ReloadOutcome | None:
        """The outcome of a reload to what is serving already (nothing loaded), else None; a generation
        whose manifest cannot be read is refused here."""
        try:
            version = read_manifest(path).snapshot_version
        except SnapshotError as exc:
            raise FailedPrecondition(f"refused {label or path}: {exc}") from None
        if version == current.version and label == current.generation:
            return ReloadOutcome(self._status(current), current.version, 0.0, unchanged=True)
        return None

    async def _switch(self, name: str, path: Path, label: str, current: Collection) -> ReloadOutcome:
        t0 = time.perf_counter()
        if (same := self._unchanged(path, label, current)) is not None:
            return same
        where = log_location(self.settings, self.root if label else None, name)
        changelog, work_root = where if where is not None else (None, None)
        try:
            fresh = await asyncio.to_thread(
                Collection,
                path,
                self.settings.for_collection(name),
                verify=self.settings.verify,
                generation=label,
                strict=True,
                changelog=changelog,
                work_root=work_root,
            )
            if fresh.name != name:
                raise SnapshotError(f"{path} holds collection {fresh.name!r}, not {name!r}")
            lost = {b: r for b, r in fresh.unavailable.items() if b in current.branches}
            if lost:
                raise SnapshotError(
                    "it cannot feed branches the serving generation has: "
                    + "; ".join(f"{b}: {r}" for b, r in sorted(lost.items()))
                )
            await self._warm_up(fresh)
        except (SnapshotError, ModelLoadError, ChangeLogError, OSError, ValueError) as exc:
            reason = str(exc)  # text only: the exception's traceback would pin the refused generation
            log.error(
                "collection %s: refused %s (%s); %s keeps serving",
                name,
                label or path,
                reason,
                current.version,
            )
            raise FailedPrecondition(f"refused {label or path}: {reason}") from None
        previous = await asyncio.to_thread(self._put, fresh)
        load_ms = (time.perf_counter() - t0) * 1000
        heap.after_swap()  # the old generation collectable now, the heap frozen again later
        log.info(
            "collection %s: now serving %s (%s), was %s; loaded and validated in %.0f ms",
            name,
            fresh.version,
            label or path,
            previous.version if previous else "-",
            load_ms,
        )
        return ReloadOutcome(self._status(fresh), current.version, load_ms, unchanged=False)

    def _put(self, fresh: Collection) -> Collection | None:
        """Switch to `fresh` after a last catch-up with the change log, under the collection's writer lock:
        an Upsert acknowledged before the switch is in the new generation, one after it goes to it."""
        if self.realtime is None or fresh.changelog is None:
            return self.registry.put(fresh)
        with self.realtime.lock(fresh.name):
            fresh.catch_up()
            return self.registry.put(fresh)

    async def _warm_up(self, coll: Collection) -> None:
        """One recall through every branch with a probe request built from the generation's own data:
        fails the reload if any branch raises (or hangs) instead of failing the first real request."""
        from concurrent.futures import ThreadPoolExecutor

        fw = coll.forward
        row = fw.rows([0])[0] if len(fw) else {}
        with_location = [o for o in range(min(len(fw), 1000)) if fw.lat[o] == fw.lat[o]]  # not NaN
        user = coll.behavior.sample_users(1) if coll.behavior is not None else []
        text = str(row.get("title") or "")
        query = SearchQuery(
            collection=coll.name,
            text=text,
            user_id=user[0] if user else "",
            location=GeoPoint(float(fw.lat[with_location[0]]), float(fw.lon[with_location[0]]))
            if with_location
            else None,
        )
        limit = self.settings.limits.max_query_terms
        with ThreadPoolExecutor(2, thread_name_prefix="quarry-warmup") as pool:
            request = RecallRequest(
                query=query, collection=coll, pool=pool, terms=analyze_query(text, coll.analyzers, limit)
            )
            for name, branch in coll.branches.items():
                if branch.skip_reason(request) is not None:
                    continue
                try:
                    async with asyncio.timeout(WARM_UP_TIMEOUT_S):
                        await branch.recall(request, 1)
                except Exception as exc:
                    raise SnapshotError(
                        f"warm-up recall through branch {name!r} failed: {type(exc).__name__}: {exc}"
                    ) from exc
