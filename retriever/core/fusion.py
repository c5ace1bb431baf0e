"""Fusion strategies: pure functions from per-branch ranked lists to one fused, deduplicated list.

Every fused item keeps each branch that found it with that branch's raw score and 1-based rank.
- `rrf`: Reciprocal Rank Fusion, score = Σ_b w_b / (k + rank_b) (Cormack et al. 2009) with explicit k.
- `weighted`: Σ_b w_b · norm_b(score), with per-branch normalisation (min-max, z-score or rank-based),
  since BM25 scores and cosine similarities live on unrelated scales.
- `learned`: intercept + w·x, a linear model fitted offline on judgments (quarry.learned_fusion) over
  per-branch features (common.types.LEARNED_FEATURES). `learned_features` is the one feature function: the
  trainer builds its rows with it, so training and serving cannot disagree on what a feature means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.types import LEARNED_FEATURES, Candidate, CandidateArrays, Fused, Ranked, SourceScore

Normalization = Literal["minmax", "zscore", "rank"]


def _collect(ranked: Mapping[str, Sequence[Candidate]]) -> dict[int, Fused]:
    merged: dict[int, Fused] = {}
    for branch, cands in ranked.items():
        seen: set[int] = set()
        for rank, c in enumerate(cands, 1):
            if c.ordinal in seen:  # a branch listing an item twice counts once, at its best rank
                continue
            seen.add(c.ordinal)
            f = merged.get(c.ordinal)
            if f is None:
                f = merged[c.ordinal] = Fused(c.ordinal, 0.0, [])
            f.sources.append(SourceScore(branch, c.score, rank))
    return merged


def _ordered(merged: dict[int, Fused]) -> list[Fused]:
    # Ties break on the best rank in any branch, then the ordinal, so output is deterministic.
    return sorted(merged.values(), key=lambda f: (-f.score, min(s.rank for s in f.sources), f.ordinal))


@dataclass(frozen=True, slots=True)
class _Entries:
    """Every (branch, item) of the ranked lists as arrays: each branch's first listing of an item, in
    branch order then rank order (the order `_collect` appends sources in)."""

    ordinal: np.ndarray  # int64
    branch: np.ndarray  # int64: index into `names`
    rank: np.ndarray  # int64, 1-based position in the branch's list (duplicates counted)
    score: np.ndarray  # float64, the branch's raw score
    names: tuple[str, ...]
    #: Each branch's whole list (duplicates included): its scores, for normalisation.
    lists: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, ranked: Mapping[str, Sequence[Candidate]]) -> _Entries:
        # Each branch's list as arrays: a `Ranked` (what the serving branches return) as it is, a list of
        # candidates in one pass; building per-field arrays one candidate at a time cost more than fusion.
        parts = [Ranked.of(c) for c in ranked.values()]
        sizes = [len(p) for p in parts]
        n = sum(sizes)
        ords = np.concatenate([p.ordinals for p in parts]) if parts else np.zeros(0, np.int64)
        scores = np.concatenate([p.scores for p in parts]) if parts else np.zeros(0)
        ends = np.cumsum(sizes, dtype=np.int64)
        starts = ends - np.asarray(sizes, dtype=np.int64)
        branch = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        rank = np.arange(1, n + 1, dtype=np.int64) - np.repeat(starts, sizes)
        lists = tuple(scores[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True))
        if n > 1:  # a branch listing an item twice counts once, at its best rank
            _, first = np.unique(branch * (int(ords.max()) + 1) + ords, return_index=True)
            if len(first) < n:
                first.sort()
                ords, scores, rank, branch = ords[first], scores[first], rank[first], branch[first]
        return cls(ords, branch, rank, scores, tuple(ranked), lists)


@dataclass(frozen=True, slots=True)
class FusedArrays:
    """Fused candidates as arrays, best first, with each item's sources kept as entry indices: `Fused`
    objects are built only for the items a stage asks for (`fused`), after filters dropped the others.
    Building one per candidate was most of fusion's cost (≈ 250 items a five-branch Search, of which a
    radius filter may keep ten)."""

    ordinal: np.ndarray  # int64, best first
    score: np.ndarray  # float64
    _entries: _Entries
    _by_item: np.ndarray  # entry indices grouped by item, each group in entry (= branch) order
    _start: np.ndarray  # per item (best first): where its group starts in _by_item
    _count: np.ndarray  # per item: how many sources

    def __len__(self) -> int:
        return len(self.ordinal)

    def take(self, keep: np.ndarray) -> FusedArrays:
        """The items where the boolean mask `keep` (over best-first positions) holds, in the same order."""
        return FusedArrays(
            self.ordinal[keep],
            self.score[keep],
            self._entries,
            self._by_item,
            self._start[keep],
            self._count[keep],
        )

    def reorder(self, order: np.ndarray, score: np.ndarray) -> FusedArrays:
        """The items in `order` (positions), with new scores (a model ranker's), sources unchanged."""
        return FusedArrays(
            self.ordinal[order], score, self._entries, self._by_item, self._start[order], self._count[order]
        )

    def _sources(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first n items' entry indices, item by item (each in branch order), and the bounds."""
        counts = self._count[:n]
        bounds = np.concatenate([[0], np.cumsum(counts)])
        return self._by_item[np.repeat(self._start[:n] - bounds[:-1], counts) + np.arange(bounds[-1])], bounds

    def candidates(self) -> CandidateArrays:
        """Every item as the ranker's features read them: equal to `CandidateArrays.of(self.fused())`
        without building the objects (~0.3 ms for 235 items)."""
        n = len(self.ordinal)
        at, _bounds = self._sources(n)
        e = self._entries
        return CandidateArrays(
            self.ordinal,
            self.score,
            np.repeat(np.arange(n, dtype=np.int64), self._count),
            e.branch[at],
            e.score[at],
            e.rank[at],
            e.names,
        )

    def fused(self, limit: int | None = None) -> list[Fused]:
        """The first `limit` items (all without one) as `Fused`, sources in branch order."""
        n = len(self.ordinal) if limit is None else max(0, min(limit, len(self.ordinal)))
        if n == 0:
            return []
        at, bounds = self._sources(n)
        e = self._entries
        names = e.names
        sources = [
            SourceScore(names[b], s, r)
            for b, s, r in zip(e.branch[at].tolist(), e.score[at].tolist(), e.rank[at].tolist(), strict=True)
        ]
        ords, vals, ends = self.ordinal[:n].tolist(), self.score[:n].tolist(), bounds.tolist()
        return [Fused(ords[i], vals[i], sources[ends[i] : ends[i + 1]]) for i in range(n)]


def _fused(entries: _Entries, contribution: np.ndarray) -> FusedArrays:
    """One item per distinct ordinal: score = Σ of its entries' contributions (added in branch order, as a
    Python sum over its sources would), best first — ties by the best rank in any branch, then the
    ordinal (deterministic)."""
    items, inverse = np.unique(entries.ordinal, return_inverse=True)
    if not len(items):
        empty = np.zeros(0, dtype=np.int64)
        return FusedArrays(empty, np.zeros(0), entries, empty, empty, empty)
    scores = np.bincount(inverse, weights=contribution, minlength=len(items))
    counts = np.bincount(inverse, minlength=len(items))
    by_item = np.argsort(inverse, kind="stable")
    start = np.cumsum(counts) - counts
    best_rank = np.minimum.reduceat(entries.rank[by_item], start)
    order = np.lexsort((items, best_rank, -scores))
    return FusedArrays(items[order], scores[order], entries, by_item, start[order], counts[order])


def rrf_arrays(
    ranked: Mapping[str, Sequence[Candidate]], *, k: float = 60.0, weights: Mapping[str, float] | None = None
) -> FusedArrays:
    if k <= 0:
        raise ValueError("rrf k must be > 0")
    e = _Entries.of(ranked)
    w = np.array([(weights or {}).get(b, 1.0) for b in e.names], dtype=np.float64)
    return _fused(e, w[e.branch] / (k + e.rank))


def rrf(
    ranked: Mapping[str, Sequence[Candidate]], *, k: float = 60.0, weights: Mapping[str, float] | None = None
) -> list[Fused]:
    return rrf_arrays(ranked, k=k, weights=weights).fused()


def _normalized(scores: np.ndarray, how: Normalization) -> np.ndarray:
    """One branch's scores (its whole list, best first), normalised: rank 1 − i/n, min-max (all 1 when
    constant) or z-score (all 0 when constant)."""
    n = len(scores)
    if how == "rank":
        return 1.0 - np.arange(n, dtype=np.float64) / n
    if how == "minmax":
        lo, hi = scores.min(), scores.max()
        span = hi - lo
        return np.ones(n) if span == 0 else (scores - lo) / span
    mean = scores.mean()
    std = scores.std()
    return np.zeros(n) if std == 0 else (scores - mean) / std


def _normalizer(cands: Sequence[Candidate], how: Normalization) -> dict[int, float]:
    """Ordinal → normalised score (an item listed twice takes its first listing's value)."""
    if not cands:
        return {}
    values = _normalized(np.fromiter((c.score for c in cands), dtype=np.float64, count=len(cands)), how)
    return {c.ordinal: v for c, v in zip(reversed(cands), reversed(values.tolist()), strict=True)}


def weighted_arrays(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    weights: Mapping[str, float] | None = None,
    normalization: Normalization = "minmax",
) -> FusedArrays:
    e = _Entries.of(ranked)
    contribution = np.empty(len(e.ordinal), dtype=np.float64)
    for b, whole in enumerate(e.lists):
        at = np.flatnonzero(e.branch == b)
        if not len(at):
            continue
        # normalised over the branch's whole list; an item takes the value of its first listing
        contribution[at] = (weights or {}).get(e.names[b], 1.0) * _normalized(whole, normalization)[
            e.rank[at] - 1
        ]
    return _fused(e, contribution)


def weighted(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    weights: Mapping[str, float] | None = None,
    normalization: Normalization = "minmax",
) -> list[Fused]:
    return weighted_arrays(ranked, weights=weights, normalization=normalization).fused()


def _branch_features(cands: Sequence[Candidate], rrf_k: float) -> dict[str, dict[int, float]]:
    """Every LEARNED_FEATURES value of each item in one branch's list (first occurrence = its rank)."""
    rank: dict[int, int] = {}
    for r, c in enumerate(cands, 1):
        rank.setdefault(c.ordinal, r)
    return {
        "minmax": _normalizer(cands, "minmax"),
        "zscore": _normalizer(cands, "zscore"),
        "rrf": {o: 1.0 / (rrf_k + r) for o, r in rank.items()},
        "found": dict.fromkeys(rank, 1.0),
    }


def learned_features(
    ranked: Mapping[str, Sequence[Candidate]], names: Sequence[str], *, rrf_k: float = 60.0
) -> tuple[list[Fused], np.ndarray]:
    """The merged candidates (first-seen order, score 0) and their feature matrix, one column per name
    "<branch>.<feature>". A branch that did not run, or did not find an item, gives 0 for all its features:
    the "found" weight is what the model learns for being found at all."""
    if rrf_k <= 0:
        raise ValueError("rrf k must be > 0")
    merged = list(_collect(ranked).values())
    X = np.zeros((len(merged), len(names)), dtype=np.float64)
    per_branch = {b: _branch_features(c, rrf_k) for b, c in ranked.items()}
    for j, name in enumerate(names):
        branch, _, feature = name.rpartition(".")
        if feature not in LEARNED_FEATURES:
            raise ValueError(f"unknown learned-fusion feature {name!r}")
        values = per_branch.get(branch, {}).get(feature)
        if values:
            X[:, j] = [values.get(f.ordinal, 0.0) for f in merged]
    return merged, X


def learned(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    weights: Mapping[str, float],
    intercept: float = 0.0,
    rrf_k: float = 60.0,
) -> list[Fused]:
    names = list(weights)
    merged, X = learned_features(ranked, names, rrf_k=rrf_k)
    scores = X @ np.fromiter((weights[n] for n in names), dtype=np.float64, count=len(names)) + intercept
    for f, s in zip(merged, scores.tolist(), strict=True):
        f.score = s
    return _ordered({f.ordinal: f for f in merged})


@dataclass(frozen=True, slots=True)
class LinearModel:
    """The learned strategy's parameters (from settings: common.settings.LearnedFusion)."""

    weights: Mapping[str, float]
    intercept: float = 0.0
    rrf_k: float = 60.0


def fuse(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    strategy: Literal["rrf", "weighted", "learned"],
    rrf_k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    normalization: Normalization = "minmax",
    model: LinearModel | None = None,
) -> list[Fused]:
    if strategy == "rrf":
        return rrf(ranked, k=rrf_k, weights=weights)
    if strategy == "weighted":
        return weighted(ranked, weights=weights, normalization=normalization)
    if strategy == "learned":
        if model is None:
            raise ValueError("the learned fusion strategy needs a model")
        return learned(ranked, weights=model.weights, intercept=model.intercept, rrf_k=model.rrf_k)
    raise ValueError(f"unknown fusion strategy {strategy!r}")
