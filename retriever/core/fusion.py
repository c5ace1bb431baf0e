"""Fusion strategies: pure functions from per-branch ranked lists to one fused, deduplicated list.

Every fused item keeps each branch that found it with that branch's raw score and 1-based rank.
- `rrf`: Reciprocal Rank Fusion, score = Σ_b w_b / (k + rank_b) (Cormack et al. 2009) with explicit k.
- `weighted`: Σ_b w_b · norm_b(score), with per-branch normalisation (min-max, z-score or rank-based),
  since BM25 scores and cosine similarities live on unrelated scales.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from common.types import Candidate, Fused, SourceScore

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


def fuse(
    ranked: Mapping[str, Sequence[Candidate]],
    *,
    strategy: Literal["rrf", "weighted"],
    rrf_k: float = 60.0,
    weights: Mapping[str, float] | None = None,
    normalization: Normalization = "minmax",
) -> list[Fused]:
    if strategy == "rrf":
        return rrf(ranked, k=rrf_k, weights=weights)
    if strategy == "weighted":
        return weighted(ranked, weights=weights, normalization=normalization)
    raise ValueError(f"unknown fusion strategy {strategy!r}")
