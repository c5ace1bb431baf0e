"""Loading, validating and holding snapshot generations.

A `Collection` is one loaded generation (it implements `retriever.recall.Generation`, what branches read): manifest, native indexes, forward store and the recall branches
built over them. The `Registry` maps collection names to their current generation; a request takes one
reference at its start and keeps it to the end, so a later hot swap (replacing the whole generation at
once) never mixes two generations inside one answer.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common import snapshot
from common.changelog import ChangeLog, Position
from common.index import ranker_part
from common.index.behavior import BehaviorIndex
from common.index.forward import ForwardStore
from common.index.text import Analyzer, TextField, open_index
from common.profile import TagArrays, TagTable
from common.settings import CollectionSettings
from common.sharding import ShardPart, is_shard_set
from common.types import SeedWeights
from ranker.base import Ranker
from ranker.schema import AFFINITY_MEMORIES, affinity_feature
from retriever.core import metrics
from retriever.core.errors import InvalidArgument, NotFound, Unavailable
from retriever.core.types import Filters
from retriever.live import LiveForward, LiveState, LiveView, Vectorizer, work_dir_for
from retriever.recall import BranchUnavailable, RecallBranch, branch_class

log = logging.getLogger(__name__)


class Collection:
    def __init__(
        self,
        root: Path,
        settings: CollectionSettings,
        *,
        verify: Literal["full", "size"] = "full",
        generation: str = "",
        strict: bool = False,
        changelog: ChangeLog | None = None,
        work_root: Path | None = None,
    ) -> None:
        """Load and validate the snapshot at `root`. `generation`: its name in a snapshot root ("" for a
        plain snapshot directory). `strict` (hot reloads): a ranker model that cannot be served raises
        instead of falling back to fused order. `changelog`: the collection's change log, replayed from
        the generation's own position (real-time Upserts/Deletes); `work_root` holds the private working
        copies that replay needs (required with a change log)."""
        t0 = time.perf_counter()
        self.root = root
        self.generation = generation
        #: Unix time this generation started serving (set by Registry.put).
        self.serving_since = 0.0
        self.manifest = snapshot.open_snapshot(root, verify=verify)
        if is_shard_set(self.manifest.parts):
            raise snapshot.SnapshotError(
                f"{root} is a shard set of {self.manifest.parts['shards']['count']} shards: serve each shard "
                "with `quarry serve --shard N` and the set with `quarry serve --role root`"
            )
        self.name = self.manifest.collection
        self.version = self.manifest.snapshot_version
        self.settings = settings
        for part in ("text", "forward"):
            if part not in self.manifest.parts:
                raise snapshot.SnapshotError(f"{root}: manifest has no {part!r} part")
        self.text_index = open_index(root / self.manifest.parts["text"]["dir"])
        self.text_fields = [TextField.from_json(f) for f in self.manifest.parts["text"]["fields"]]
        self.analyzers: tuple[Analyzer, ...] = tuple(sorted({f.analyzer for f in self.text_fields}))
        #: The generation's own rows: the ordinals its indexes use (`forward` adds real-time changes).
        self.base_forward = ForwardStore(root, self.manifest.parts["forward"])
        if len(self.base_forward) != self.manifest.counts["items"]:
            raise snapshot.SnapshotError(
                f"{root}: forward store has {len(self.base_forward)} rows, manifest says {self.manifest.counts['items']}"
            )
        #: Where this generation sits in a shard set (None: a whole collection).
        self.shard: ShardPart | None = None
        if "shard" in self.manifest.parts:
            self.shard = ShardPart.load(root, self.manifest.parts["shard"])
            if len(self.shard.gord) != len(self.base_forward):
                raise snapshot.SnapshotError(f"{root}: shard part lists {len(self.shard.gord)} items")
        self.branches: dict[str, RecallBranch] = {}
        #: Enabled branches this snapshot cannot feed (e.g. ann without a vectors part), with the reason.
        self.unavailable: dict[str, str] = {}
        # One branch object per name serves both endpoints; each endpoint's specs say how it runs there.
        endpoints = (settings.branches, settings.recommend_branches)
        specs = {**settings.recommend_branches, **settings.branches}
        for name in specs:
            if not any(d[name].enabled for d in endpoints if name in d):
                continue
            try:
                cls = branch_class(name)
            except KeyError as exc:
                raise ValueError(f"collection {self.name}: {exc.args[0]}") from None
            options = getattr(settings, name) if cls.options is not None else None
            try:
                self.branches[name] = cls.create(self, options)
            except BranchUnavailable as exc:
                # Log the text, not the exception: a retained log record (e.g. a capturing handler) would
                # otherwise keep its traceback, and through it this whole generation, alive after a swap.
                self.unavailable[name] = reason = str(exc)
                log.warning("collection %s: branch %s unavailable: %s", self.name, name, reason)
        #: The collection's trained ranking model, or None (the service's default ranker, fused order):
        #: the generation's own (its `ranker` part), else the one settings name.
        self.ranker: Ranker | None = generation_ranker(root, self.manifest, settings, strict=strict)
        self.changelog = changelog
        self._log_pos: Position | int = self.log_seq
        self._catch_up_lock = threading.Lock()
        self.live = LiveState(
            base=self.base_forward,
            text_dir=root / self.manifest.parts["text"]["dir"],
            text_fields=self.text_fields,
            work_dir=None if changelog is None or work_root is None else work_dir_for(work_root, generation),
            vectorizer=Vectorizer.from_manifest(
                self.manifest.parts.get("vectors"), settings.ann.encoder_threads
            ),
            seq=self.log_seq,
            base_popularity=self.behavior.popularity if self.behavior is not None else None,
        )
        self._finalizer = weakref.finalize(self, LiveState.close, self.live)
        if changelog is not None:
            self.catch_up()
        log.info(
            "loaded collection %s (%s): %d items, branches %s, in %.2fs",
            self.name,
            self.version,
            self.view.item_count(),
            sorted(self.branches),
            time.perf_counter() - t0,
        )

    @cached_property
    def tag_table(self) -> TagTable | None:
        """Item → tags and tag → items by popularity (common.profile), built once per generation for the
        preference branch and the ranker's user–item affinity; None without behavior data or tags."""
        if self.behavior is None:
            return None
        per_tag = self.settings.preference.per_tag
        part = self.manifest.parts.get("tags")
        if part is not None:  # a shard: its items with their ranks in the whole set's per-tag lists
            return TagTable.from_arrays(TagArrays.read(self.root / part["dir"], part), per_tag=per_tag)
        table = TagTable.build(self.base_forward, self.behavior.popularity, per_tag=per_tag)
        return table if table.vocab else None

    @property
    def item_weight(self) -> np.ndarray | None:
        """Each item's mean event strength over every ordinal served (an upserted item keeps its base
        item's; a new id, the mean over all items); None without it in the snapshot."""
        behavior = self.behavior
        if behavior is None or behavior.item_weight is None:
            return None
        prior = float(self.manifest.parts["behavior"]["item_weight"]["prior"])
        return self.view.over_all("item_weight", behavior.item_weight, prior)

    def i2i_affinity(self, seeds: SeedWeights, ordinals: np.ndarray) -> dict[str, np.ndarray]:
        """The i2i affinity features (ranker.schema.AFFINITY_FEATURES) of candidates: each of this
        generation's i2i tables scored against the seeds under each memory. An upserted item scores as
        its base item (its behavior follows it); a new id scores 0."""
        behavior = self.behavior
        if behavior is None or not behavior.methods:
            return {}
        items = self.view.base_ordinals(ordinals)
        scores = behavior.affinities(behavior.methods, seeds.ordinals, seeds.weights, items)
        return {
            affinity_feature(method, suffix): row
            for method, rows in scores.items()
            for suffix, row in zip(AFFINITY_MEMORIES, rows, strict=True)
        }

    def seed_items(self, keys: np.ndarray) -> np.ndarray:
        """Seed keys as this generation's item ordinals: the same on one node; on a shard, seeds are
        global ordinals (from the root) and only those of its own items are returned."""
        keys = np.asarray(keys, dtype=np.int64)
        if self.shard is None:
            return keys
        local = self.shard.local_of(keys)
        return local[local >= 0]

    @cached_property
    def behavior(self) -> BehaviorIndex | None:
        """The snapshot's behavior part (i2i tables, popularity, histories), loaded once and shared by the
        behavior and popular branches and the ranker's features; None when the snapshot has no events."""
        part = self.manifest.parts.get("behavior")
        return None if part is None else BehaviorIndex.load(self.root / part["dir"], part)

    def item_count(self) -> int:
        """Items served now (the generation's plus upserts, minus deletes)."""
        return self.view.item_count()

    def user_history(self, user_id: str) -> list[int]:
        """The user's long-term items (the snapshot's histories), newest first; [] without behavior."""
        return self.behavior.user_history(user_id) if self.behavior is not None else []

    @property
    def log_seq(self) -> int:
        """The change-log position this generation's build included (0: none)."""
        return int(self.manifest.source.get("changelog_seq", 0))

    @property
    def view(self) -> LiveView:
        """The generation with its real-time changes as of now (immutable; take it once per request)."""
        return self.live.view

    @property
    def forward(self) -> ForwardStore | LiveForward:
        """Rows of every ordinal served now: the generation's own plus real-time upserts."""
        return self.live.view.forward

    @property
    def item_popularity(self) -> np.ndarray | None:
        return self.live.view.popularity

    def catch_up(self) -> int:
        """Apply change-log entries appended since the last look (by this or another process); returns
        how many. Cheap when nothing is new (one directory listing and a read at the end)."""
        if self.changelog is None:
            return 0
        with self._catch_up_lock:
            entries, self._log_pos = self.changelog.read(self._log_pos)
            if entries:
                self.live.apply(entries)
            return len(entries)

    def commit(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append `ops` to the change log (durable on return) and apply them, after catching up with what
        other processes appended: under the log's lock, so sequence numbers stay one total order."""
        if self.changelog is None:
            raise RuntimeError(f"collection {self.name} has no change log")
        with self._catch_up_lock:
            with self.changelog.locked():
                entries, _pos = self.changelog.read(self._log_pos)
                if entries:
                    self.live.apply(entries)
                written = self.changelog.append_locked(ops)
                self._log_pos = self.changelog.tail
            self.live.apply(written)
        return written

    def close(self) -> None:
        """Release the working copies now (also done when the generation is garbage-collected)."""
        self._finalizer()

    @property
    def attr_names(self) -> list[str]:
        return self.base_forward.attr_names

    def check_filters(self, filters: Filters) -> None:
        """Reject filters that name attributes this collection does not have."""
        for r in filters.ranges:
            if r.field not in self.base_forward.attr_names:
                known = ", ".join(self.base_forward.attr_names) or "none"
                raise InvalidArgument(
                    f"filters.ranges: unknown numeric attribute {r.field!r} in collection {self.name!r} (known: {known})"
                )

    def filter_mask(self, filters: Filters, view: LiveView | None = None) -> np.ndarray | None:
        """Boolean mask over every ordinal of `view` (default: the current one) passing `filters`, dead
        ordinals excluded; None when nothing is excluded."""
        view = view or self.view
        if not filters.restricts:
            return view.restrict(None)
        fw = view.forward
        mask = np.ones(len(fw), dtype=bool)
        if filters.categories:
            codes = [fw.category_vocab[c] for c in filters.categories if c in fw.category_vocab]
            mask &= np.isin(fw.category_codes, np.asarray(codes, dtype=np.int32))
        if filters.tags:
            mask &= fw.tags_mask(filters.tags)
        for r in filters.ranges:
            values = fw.attr(r.field)
            with np.errstate(invalid="ignore"):
                if r.min is not None:
                    mask &= values > r.min if r.min_exclusive else values >= r.min
                if r.max is not None:
                    mask &= values < r.max if r.max_exclusive else values <= r.max
        return view.restrict(mask)


def generation_ranker(
    root: Path, manifest: snapshot.Manifest, settings: CollectionSettings, *, strict: bool
) -> Ranker | None:
    """A generation's ranking model: its own `ranker` part, else the one settings name; None without
    either (the service's default ranker, fused order). `strict`: a model that cannot serve raises."""
    part = manifest.parts.get("ranker")
    model = settings.ranker.model_path if part is None else ranker_part.model_path(root, part)
    if model is None:
        return None
    from ranker.serving import load_model_ranker  # onnxruntime is imported only when a model is set

    return load_model_ranker(
        model,
        manifest.collection,
        window_ms=settings.ranker.window_ms,
        providers=settings.ranker.providers,
        strict=strict,
    )


class Registry:
    """Collection name → current generation. Thread-safe; swaps replace a whole generation.

    With `keep_previous`, the generation a swap replaces stays reachable through `previous` until
    `drop_previous`: a shard keeps answering its root's requests for the old shard set until the root
    has switched too (retriever.cluster.shard)."""

    def __init__(self, *, keep_previous: bool = False) -> None:
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        self._keep_previous = keep_previous
        self._previous: dict[str, Collection] = {}

    def previous(self, name: str) -> Collection | None:
        return self._previous.get(name)

    def drop_previous(self, name: str) -> None:
        with self._lock:
            self._previous.pop(name, None)

    def put(self, collection: Collection) -> Collection | None:
        """Serve `collection` from now on (one reference swap); returns the generation it replaces.
        Requests that already hold the old one finish on it; it is freed when the last of them ends."""
        collection.serving_since = time.time()
        with self._lock:
            old = self._collections.get(collection.name)
            self._collections[collection.name] = collection
            if self._keep_previous and old is not None and old is not collection:
                self._previous[collection.name] = old
            if old is not None and (old.version, old.generation) != (
                collection.version,
                collection.generation,
            ):
                metrics.retire(metrics.GENERATION, old.name, old.version, old.generation)
            metrics.GENERATION.labels(collection.name, collection.version, collection.generation).set(1)
            metrics.GENERATION_SINCE.labels(collection.name).set(collection.serving_since)
            metrics.ITEMS.labels(collection.name).set(collection.item_count())
        return old

    def get(self, name: str) -> Collection:
        try:
            return self._collections[name]
        except KeyError:
            if not self._collections:
                raise Unavailable("no collection is loaded yet") from None
            known = ", ".join(sorted(self._collections))
            raise NotFound(f"collection {name!r} not found (serving: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._collections)

    def __len__(self) -> int:
        return len(self._collections)
