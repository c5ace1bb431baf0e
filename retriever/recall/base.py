"""The recall-branch Protocol: the one extension point every recall source implements, and the types a
branch sees (the `Generation` it is built over, the `RecallRequest` it answers).

A branch is constructed once per loaded generation (`create`) and then called concurrently by the
executor for many requests, so it must keep no per-request state. The executor owns deadlines, quotas
and fail-open; the merger owns dedup and exclusions; a branch only turns a request into ranked
`Candidate`s (best first).

Adding a branch = one module in `retriever/recall/` whose class is decorated with
`retriever.recall.registry.register` (that is its one registration: name, options type, factory), plus a
`BranchSpec` line in the default settings if it should run by default, plus one test that runs the
`RecallBranchContract` suite (tests/contracts/recall.py) over it. This module imports nothing from the generation
loader, so `retriever.generations` can import the registry without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel

from common.index.behavior import BehaviorIndex
from common.index.forward import ForwardStore
from common.index.text import Analyzer, TextField, analyze
from common.profile import TagTable
from common.settings import CollectionSettings
from common.snapshot import Manifest
from common.types import Candidate
from retriever.core.types import Filters, SearchQuery
from retriever.live import LiveView

if TYPE_CHECKING:
    import tantivy

    from retriever.features.recent import RecentItem, RecentStore, UserRecent

T = TypeVar("T")


class Generation(Protocol):
    """What a branch may read from the loaded snapshot generation it serves (read-only; implemented by
    `retriever.generations.Collection`). Branches built over one generation never see another."""

    @property
    def name(self) -> str: ...
    @property
    def root(self) -> Path: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def settings(self) -> CollectionSettings: ...
    @property
    def base_forward(self) -> ForwardStore:
        """The generation's own rows: the ordinal space of its indexes (and of behavior tables)."""
        ...

    @property
    def view(self) -> LiveView:
        """The generation plus its real-time changes now (see retriever.live)."""
        ...

    @property
    def text_index(self) -> tantivy.Index: ...
    @property
    def text_fields(self) -> list[TextField]: ...
    @property
    def behavior(self) -> BehaviorIndex | None:
        """The behavior part (i2i tables, popularity, histories), loaded once and shared; None without one."""
        ...

    @property
    def tag_table(self) -> TagTable | None:
        """Item tags and per-tag popular lists (common.profile), built once; None without any."""
        ...

    def filter_mask(self, filters: Filters, view: LiveView | None = None) -> np.ndarray | None:
        """Boolean mask over `view`'s ordinals passing `filters` (dead ones never); None: all pass."""
        ...

    def seed_items(self, keys: np.ndarray) -> np.ndarray:
        """User seeds (keys of the behavior tables) as item ordinals of this generation: the same keys on
        one node; a shard's seeds are global ordinals, of which only its own items are returned."""
        ...


@dataclass(frozen=True, slots=True)
class RootInputs:
    """What a shard's branches receive from the root instead of computing it: the root owns the user
    (one store read, seeds from the long-term history it holds, the preference profile over the whole
    set's tags) and encodes the query once for all shards."""

    #: branch name → {global ordinal of a seed item: weight} (decayed_seeds under that branch's settings)
    seeds: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    #: Preference profile: affinity per tag id of the set's vocabulary (None: no profile).
    profile: np.ndarray | None = None
    #: The query text's embedding (None: no text, or no vectors).
    vector: np.ndarray | None = None
    #: The whole set's document frequency of each (field, analysed query term).
    term_df: Mapping[tuple[str, str], int] = field(default_factory=dict)


def analyze_query(text: str, analyzers: Iterable[Analyzer], max_terms: int) -> dict[Analyzer, list[str]]:
    """The query text analysed once per analyzer (deduplicated in query order, at most `max_terms`)."""
    if not text.strip():
        return {}
    # dict.fromkeys dedups while keeping the query's order; the cap bounds query cost.
    return {a: list(dict.fromkeys(analyze(text, a)))[:max_terms] for a in analyzers}


@dataclass
class RecallRequest:
    """One request as every branch sees it: the validated query plus read-only derived data."""

    query: SearchQuery
    collection: Generation
    #: The bounded thread pool for blocking native calls (tantivy, hnswlib, faiss, onnxruntime, ...).
    pool: Executor
    #: True: `blocking` calls run inline on the event loop (server.inline_recall); `offload` always hops.
    inline: bool = False
    #: The query text analysed once per analyzer the collection uses (shared by text-based branches).
    terms: dict[Analyzer, list[str]] = field(default_factory=dict)
    #: Real-time user behaviour (Redis or embedded); None where the caller has no store.
    recent: RecentStore | None = None
    #: The request's user's events, read once and shared by every branch (the service sets it).
    user_recent: UserRecent | None = None
    #: On a shard: the root's seeds, profile and query vector (None on a whole collection).
    root: RootInputs | None = None
    #: The generation's real-time state, taken once: every branch of this request sees the same one.
    live: LiveView = field(init=False)

    def __post_init__(self) -> None:
        self.live = self.collection.view

    @cached_property
    def allowed(self) -> np.ndarray | None:
        """Boolean mask over the view's ordinals passing the filters (never a dead one); None: all."""
        return self.collection.filter_mask(self.query.filters, self.live)

    @property
    def restricts(self) -> bool:
        """Whether the request's own filters restrict (beyond dead ordinals)."""
        return self.query.filters.restricts

    async def user_seeds(
        self, branch: str, history: Callable[[str], list[int]], ord_of: Mapping[str, int], s: SeedSettings
    ) -> dict[int, float]:
        """The request's user's seed items → weight (`decayed_seeds`) under `branch`'s settings:
        `history` gives the user's long-term items (the snapshot's), `ord_of` maps event item ids. On a
        shard, the root's seeds for that branch (global ordinals)."""
        if self.root is not None:
            return dict(self.root.seeds.get(branch, {}))
        recent = await self.recent_events(s.recent_n) if s.recent_n else []
        long_term = history(self.query.user_id) if s.history_n else []
        return decayed_seeds(recent, long_term, ord_of, s)

    async def recent_events(self, n: int) -> list[RecentItem]:
        """The request's user's newest `n` real-time events ([] without a user or a store)."""
        if self.user_recent is not None:
            return await self.user_recent.get(n)
        if self.recent is None or not self.query.user_id or n <= 0:
            return []
        return await self.recent.recent(self.query.collection, self.query.user_id, n)

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """A short native call (well under a millisecond): inline when the request says so, else in the
        pool."""
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def offload(self, fn: Callable[..., T], *args: object) -> T:
        """A long call that releases the GIL (a model's encoding): always in the pool, so the event loop
        serves other requests meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class BranchUnavailable(Exception):
    """Raised by `RecallBranch.create` when the snapshot lacks what the branch needs (reported, not fatal)."""


@runtime_checkable
class RecallBranch(Protocol):
    """A recall source. `name` is its one identifier: spec key, metric label, log field, response label."""

    name: str
    #: The type of this branch's own settings section, `CollectionSettings.<name>` (e.g. AnnSettings for
    #: "ann"), or None when it has none. The registry checks the two agree.
    options: ClassVar[type[BaseModel] | None]

    @classmethod
    def create(cls, generation: Generation, options: Any) -> Self:
        """Build the branch over `generation`; `options` is `generation.settings.<name>` (None without an
        options type). Raises BranchUnavailable when the snapshot cannot feed it."""
        ...

    def skip_reason(self, request: RecallRequest) -> str | None:
        """Why this branch has nothing to do for `request` (e.g. no query text), or None to run it."""
        ...

    async def recall(self, request: RecallRequest, quota: int) -> Sequence[Candidate]:
        """At most `quota` candidates passing the request's filters, best first (a `Ranked` where the
        engine answers in arrays: nothing is built per candidate)."""
        ...


__all__ = ["BranchUnavailable", "Generation", "RecallBranch", "RecallRequest", "RootInputs", "analyze_query"]


class SeedSettings(Protocol):
    """What a branch that starts from the user's own items configures (BehaviorSettings,
    PreferenceSettings): how many real-time and long-term items, and how their weight decays."""

    @property
    def recent_n(self) -> int: ...
    @property
    def history_n(self) -> int: ...
    @property
    def decay_half_life(self) -> float: ...
    @property
    def history_weight(self) -> float: ...


def decayed_seeds(
    recent: Sequence[RecentItem], history: Sequence[int], ord_of: Mapping[str, int], s: SeedSettings
) -> dict[int, float]:
    """A user's seed items → weight, shared by the branches that start from what the user did (behavior,
    preference) and the ranker's profile: the newest `s.recent_n` real-time events first (the event's
    weight × decay^position), then `s.history_n` long-term items (history_weight × decay^position); the
    weight halves every `s.decay_half_life` positions."""
    decay = 0.5 ** (1.0 / s.decay_half_life)
    seeds: dict[int, float] = {}
    pos = 0
    for r in recent[: s.recent_n]:
        o = ord_of.get(r.item_id)
        if o is None:
            continue
        seeds[o] = seeds.get(o, 0.0) + r.weight * decay**pos
        pos += 1
    for i, o in enumerate(history[: s.history_n]):
        seeds[o] = seeds.get(o, 0.0) + s.history_weight * decay**i
    return seeds
