"""Value types that cross layers: what recall produces, fusion merges and the ranker reorders.

Recall branches return `Candidate`s; fusion turns them into `Fused` items carrying each branch's
`SourceScore` (provenance); the ranking stage reorders `Fused` using the request's `GeoPoint` and the
user's real-time `UserCounters`. They live on the ground floor so the retriever and the ranker share them
without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Literal, NamedTuple, get_args, overload

import numpy as np


@dataclass(frozen=True, slots=True)
class GeoPoint:
    lat: float
    lon: float


class Candidate(NamedTuple):
    """What a recall branch returns: an item ordinal and the branch's own score (higher is better).

    A NamedTuple rather than a frozen dataclass: branches build hundreds per request, and a frozen
    dataclass's __init__ costs ~1 µs each (measured: 100 candidates added ~0.1 ms to ANN recall)."""

    ordinal: int
    score: float


class Ranked(Sequence[Candidate]):
    """A branch's candidates, best first, held as two arrays (ordinals int64, scores float64) instead of
    one `Candidate` per item: the engines answer in arrays and fusion reads arrays, so the hot path never
    builds the tuples (≈ 250 a five-branch Search: creating them, ordering them and reading them back
    into arrays took ~10% of the event loop's time). It reads as a sequence of `Candidate` all the same —
    indexing, iteration, slicing (a `Ranked` view) and equality with any sequence of pairs — so code that
    walks candidates one by one (debug answers, evaluation, the trainers) needs no change."""

    __slots__ = ("ordinals", "scores")

    def __init__(self, ordinals: np.ndarray, scores: np.ndarray) -> None:
        ords = np.asarray(ordinals, dtype=np.int64)
        vals = np.asarray(scores, dtype=np.float64)
        if ords.ndim != 1 or ords.shape != vals.shape:
            raise ValueError(f"ordinals {ords.shape} and scores {vals.shape} must be 1-d of one length")
        self.ordinals = ords
        self.scores = vals

    @classmethod
    def empty(cls) -> Ranked:
        return cls(np.zeros(0, np.int64), np.zeros(0))

    @classmethod
    def of(cls, candidates: Sequence[tuple[int, float]]) -> Ranked:
        """Any sequence of (ordinal, score) pairs as arrays (a `Ranked` as it is)."""
        if isinstance(candidates, Ranked):
            return candidates
        n = len(candidates)
        if not n:
            return cls.empty()
        flat = np.fromiter(chain.from_iterable(candidates), dtype=np.float64, count=2 * n).reshape(n, 2)
        return cls(flat[:, 0].astype(np.int64), flat[:, 1])

    def __len__(self) -> int:
        return len(self.ordinals)

    @overload
    def __getitem__(self, i: int) -> Candidate: ...
    @overload
    def __getitem__(self, i: slice) -> Ranked: ...
    def __getitem__(self, i: int | slice) -> Candidate | Ranked:
        if isinstance(i, slice):
            return Ranked(self.ordinals[i], self.scores[i])
        return Candidate(int(self.ordinals[i]), float(self.scores[i]))

    def __iter__(self) -> Iterator[Candidate]:
        return map(Candidate._make, zip(self.ordinals.tolist(), self.scores.tolist(), strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ranked):
            return np.array_equal(self.ordinals, other.ordinals) and np.array_equal(self.scores, other.scores)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside, like a list

    def __repr__(self) -> str:
        return f"Ranked({list(self)!r})"


class SourceScore(NamedTuple):
    """One branch's view of a fused item (provenance). A NamedTuple like `Candidate`: fusion builds one
    per (branch, item) of every request, ~250 on a five-branch Search."""

    branch: str
    score: float
    rank: int  # 1-based rank inside the branch's list


@dataclass(slots=True)
class Fused:
    """A merged candidate: one item, every branch that found it, and the fused score."""

    ordinal: int
    score: float
    sources: list[SourceScore]


@dataclass(frozen=True, slots=True)
class CandidateArrays:
    """Fused candidates as arrays — what the ranker's features read: per candidate (best first) its
    ordinal and fused score; per source (one branch's view of one candidate, in branch order within a
    candidate) the candidate's position, the branch, its raw score and rank. Serving takes them from
    fusion's arrays without building a `Fused` per candidate; `of` makes them from `Fused` objects (the
    trainers, debug answers), so both reach the same feature code."""

    ordinal: np.ndarray  # int64 (n,)
    score: np.ndarray  # float64 (n,)
    src_item: np.ndarray  # int64 (m,): position in `ordinal`
    src_branch: np.ndarray  # int64 (m,): index into `branches`
    src_score: np.ndarray  # float64 (m,)
    src_rank: np.ndarray  # int64 (m,), 1-based
    branches: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ordinal)

    @classmethod
    def of(cls, fused: Sequence[Fused]) -> CandidateArrays:
        names: dict[str, int] = {}
        item: list[int] = []
        branch: list[int] = []
        score: list[float] = []
        rank: list[int] = []
        for i, f in enumerate(fused):
            for s in f.sources:
                item.append(i)
                branch.append(names.setdefault(s.branch, len(names)))
                score.append(s.score)
                rank.append(s.rank)
        return cls(
            np.fromiter((f.ordinal for f in fused), dtype=np.int64, count=len(fused)),
            np.fromiter((f.score for f in fused), dtype=np.float64, count=len(fused)),
            np.asarray(item, dtype=np.int64),
            np.asarray(branch, dtype=np.int64),
            np.asarray(score, dtype=np.float64),
            np.asarray(rank, dtype=np.int64),
            tuple(names),
        )


#: What learned fusion knows of one branch's view of a candidate, declared once for the trainer
#: (quarry.learned_fusion), the server (retriever.core.fusion) and settings validation. Model inputs are
#: named "<branch>.<feature>", e.g. "ann.zscore"; all are 0 when the branch did not find the candidate.
#: - minmax: the branch's score min-max normalised over its own list (1 = its best, 0 = its worst)
#: - zscore: the branch's score standardised over its own list
#: - rrf: 1 / (rrf_k + rank), the branch's rank as RRF sees it
#: - found: 1 when the branch found the candidate (the model's offset for being found at all)
LearnedFeature = Literal["minmax", "zscore", "rrf", "found"]
LEARNED_FEATURES: tuple[LearnedFeature, ...] = get_args(LearnedFeature)


@dataclass(frozen=True, slots=True)
class UserCounters:
    """Real-time per-user aggregates maintained by LogEvents (idempotently), read as ranking features."""

    events_total: int = 0
    weight_sum: float = 0.0
    distinct_items: int = 0
    last_ts: float = 0.0
    #: Of the user's newest real-time events (as many as the profile reads), those within the last hour,
    #: day and week before the request; derived by the serving layer like the profile. None: not derived.
    recent_windows: tuple[int, int, int] | None = field(default=None, compare=False)
    #: The user's preference profile (common.profile: affinity per tag id of the generation's tag
    #: table), derived by the serving layer from the same store and history; None when not derived.
    tag_affinity: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: The user's seed items for the i2i affinity features, derived likewise; None when not derived.
    i2i_seeds: SeedWeights | None = field(default=None, compare=False, repr=False)

    @property
    def avg_weight(self) -> float:
        return self.weight_sum / self.events_total if self.events_total else 0.0


@dataclass(frozen=True, slots=True)
class SeedWeights:
    """A user's seed items (item ordinals of the generation ranked; a root's: global ordinals) with
    their weight under each of several recipes (one row each, in `ranker.features.AFFINITY_MEMORIES`
    order): the inputs of the i2i affinity features."""

    ordinals: np.ndarray  # int64 (s,)
    weights: np.ndarray  # float64 (recipes, s)

    @classmethod
    def of(cls, per_recipe: Sequence[Mapping[int, float]]) -> SeedWeights:
        """From one seed → weight map a recipe: the union of their seeds (sorted), each weighted under
        each recipe (0 where a recipe has not it)."""
        ords = sorted(set().union(*per_recipe))
        weights = np.array([[m.get(o, 0.0) for o in ords] for m in per_recipe], dtype=np.float64)
        return cls(np.asarray(ords, dtype=np.int64), weights.reshape(len(per_recipe), len(ords)))


@dataclass(frozen=True, slots=True)
class ItemWindows:
    """Real-time events per item in the last hour, day and week before a request (the item-side
    counters LogEvents maintains; retriever.features.windows), by ordinal of the generation ranked.
    A candidate missing here had none the store knows of."""

    by_ordinal: Mapping[int, tuple[float, float, float]]


class DependencyUnavailable(Exception):
    """A dependency (the user store) could not answer: down, slow or behind its circuit breaker. Expected
    in operation and counted where it happens, so a branch it fails is logged in one line, without a
    traceback (under overload that would be one formatted traceback per branch per request). Here, on
    the ground floor, because the layer that raises it (retriever.features) sits below the one that
    reports it (retriever.recall) and above retriever.core."""
