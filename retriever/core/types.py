"""Transport-agnostic domain types of the serving path: requests, branch results and answers.

The value types that cross into the ranker (GeoPoint, Candidate, SourceScore, Fused) live in `common.types`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common.types import Candidate, GeoPoint, SourceScore, UserCounters


@dataclass(frozen=True, slots=True)
class NumericRange:
    field: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False


@dataclass(frozen=True, slots=True)
class Filters:
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    ranges: tuple[NumericRange, ...] = ()
    exclude_ids: tuple[str, ...] = ()

    @property
    def restricts(self) -> bool:
        """True when the filters narrow the candidate set (exclusions are applied by the merger)."""
        return bool(self.categories or self.tags or self.ranges)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    collection: str
    text: str = ""
    user_id: str = ""
    location: GeoPoint | None = None
    radius_m: float = 0.0
    filters: Filters = field(default_factory=Filters)
    top_k: int = 0
    debug: bool = False
    request_id: str = ""
    #: A subset of the pipeline's branches to run (empty: all); checked against the collection's.
    branches: tuple[str, ...] = ()
    #: A fusion strategy overriding the collection's ("" keeps it).
    fusion: str = ""


class BranchStatus(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"
    ERROR = "error"
    DISABLED = "disabled"


@dataclass(slots=True)
class BranchResult:
    branch: str
    status: BranchStatus
    #: Best first; a `Ranked` (arrays) from the branches that answer in arrays.
    candidates: Sequence[Candidate] = field(default_factory=list)
    latency_ms: float = 0.0
    detail: str = ""


@dataclass(slots=True)
class Hit:
    id: str
    score: float
    sources: list[SourceScore]
    title: str
    category: str | None
    tags: list[str]
    location: GeoPoint | None
    distance_m: float | None
    attributes: dict[str, float]
    fields: dict[str, str]
    debug: HitDetail | None = None


@dataclass(frozen=True, slots=True)
class HitDetail:
    """How the ranking stage saw a hit (debug requests only)."""

    fused_score: float
    fused_rank: int
    features: dict[str, float]


@dataclass(frozen=True, slots=True)
class DebugItem:
    """One entry of a debug list (a branch's own list, or the fused list), hydrated for display."""

    id: str
    title: str
    score: float
    rank: int
    sources: tuple[SourceScore, ...] = ()
    location: GeoPoint | None = None


@dataclass(frozen=True, slots=True)
class RecentEventDetail:
    item_id: str
    title: str
    type: str
    ts: float
    weight: float


@dataclass(frozen=True, slots=True)
class UserDetail:
    user_id: str
    available: bool
    recent: tuple[RecentEventDetail, ...] = ()
    counters: UserCounters | None = None


@dataclass(frozen=True, slots=True)
class DebugDetail:
    """Every stage's lists for one request (debug requests only): what a console shows."""

    branches: tuple[tuple[str, tuple[DebugItem, ...]], ...]
    fused: tuple[DebugItem, ...]
    fusion: str
    ranker: str
    feature_names: tuple[str, ...] = ()
    user: UserDetail | None = None


@dataclass(slots=True)
class SearchResult:
    hits: list[Hit]
    snapshot_version: str
    degraded: bool
    branch_stats: list[BranchResult]
    took_ms: float
    extra: dict[str, Any] = field(default_factory=dict)
    debug: DebugDetail | None = None
