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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.types import LEARNED_FEATURES, Candidate, Fused, SourceScore

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


def rrf(
    ranked: Mapping[str, Sequence[Candidate]], *, k: float = 60.0, weights: Mapping[str, float] | None = None
) -> list[Fused]:
    if k <= 0:
        raise ValueError("rrf k must be > 0")
    merged = _collect(ranked)
    for f in merged.values():
        f.score = sum((weights or {}).get(s.branch, 1.0) / (k + s.rank) for s in f.sources)
    return _ordered(merged)


def _normalizer(cands: Sequence[Candidate], how: Normalization) -> dict[int, float]:
    if not cands:
        return {}
    if how == "rank":
        n = len(cands)
        return {c.ordinal: 1.0 - (i / n) for i, c in reversed(list(enumerate(cands)))}
    scores = [c.score for c in cands]
    if how == "minmax":
        lo, hi = min(scores), max(scores)
        span = hi - lo
        return {c.ordinal: (1.0 if span == 0 else (c.score - lo) / span) for c in reversed(cands)}
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return {c.ordinal: (0.0 if std == 0 else (c.score - mean) / std) for c in reversed(cands)}


def weighted(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    weights: Mapping[str, float] | None = None,
    normalization: Normalization = "minmax",
) -> list[Fused]:
    merged = _collect(ranked)
    norms = {b: _normalizer(c, normalization) for b, c in ranked.items()}
    for f in merged.values():
        f.score = sum((weights or {}).get(s.branch, 1.0) * norms[s.branch][f.ordinal] for s in f.sources)
    return _ordered(merged)


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
