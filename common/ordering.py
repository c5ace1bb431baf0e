"""One canonical "best first" order for scored candidates: by score, and scores within RELATIVE_TIE of
each other count as ties, ordered by ordinal.

Why a tolerance: a shard rescales BM25 to the whole set's statistics in float32 (common.index.textstats),
so two documents one node scores exactly alike can differ in their last bits on two shards. Why by
ordinal: tantivy returns exact ties in segment order, which depends on how many threads wrote the index;
ordinals (catalog order; on a shard, increasing with the global ordinals) make the order a property of
the data. Every branch's list is put in this order (retriever.recall.executor) and a root merges shard lists in
it, so one node and a shard set agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from operator import itemgetter

import numpy as np

from common.types import Candidate, Ranked

#: Scores closer than this (relative) are ties: ~8 float32 ulps, far below any meaningful difference.
RELATIVE_TIE = 1e-6
#: How many more hits to ask an engine for at first, so that ties at the cut are usually all seen at once
#: (`cut_is_settled` says when they are not, and the caller asks for more).
TIE_MARGIN = 16
# A Candidate is an (ordinal, score) tuple: C-level getters read a list's fields without a generator.
_ORDINAL, _SCORE = itemgetter(0), itemgetter(1)
#: Up to this many candidates, `best_first` checks for an already ordered list in plain Python.
_SHORT = 32


def _gaps(vals: np.ndarray) -> np.ndarray:
    """Between each score and the next: whether the first is higher by more than the tie tolerance (False:
    a near tie, or a rise)."""
    return (vals[:-1] - vals[1:]) > RELATIVE_TIE * np.maximum(np.abs(vals[:-1]), 1e-300)


def best_first_arrays(ordinals: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` of (ordinal, score) pairs, best first (see the module docstring), as arrays (int64,
    float64). Near ties chain: a run of scores each within RELATIVE_TIE of the next is one tie group."""
    ords = np.asarray(ordinals, dtype=np.int64)
    vals = np.asarray(scores, dtype=np.float64)
    if not len(ords) or k <= 0:
        return ords[:0], vals[:0]
    # The usual engine answer is already strictly best first, without near ties: return it as it is.
    if _gaps(vals).all():
        return ords[:k], vals[:k]
    order = np.lexsort((ords, -vals))
    ords, vals = ords[order], vals[order]
    gap = _gaps(vals)
    if not gap.all():  # some near ties: order each group by ordinal
        group = np.concatenate([[0], np.cumsum(gap)])
        regroup = np.lexsort((ords, group))
        ords, vals = ords[regroup], vals[regroup]
    return ords[:k], vals[:k]


def best_first(ordinals: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """`best_first_arrays` as (ordinal, score) pairs."""
    ords = np.asarray(ordinals, dtype=np.int64)
    vals = np.asarray(scores, dtype=np.float64)
    if not len(ords) or k <= 0:
        return []
    # On short lists already in order, checked in Python, where NumPy's per-call cost would dominate.
    if len(vals) <= _SHORT:
        vl = vals.tolist()
        if all(a - b > RELATIVE_TIE * max(abs(a), 1e-300) for a, b in pairwise(vl)):  # _gaps, in Python
            return list(zip(ords[:k].tolist(), vl[:k], strict=True))
    ords, vals = best_first_arrays(ords, vals, k)
    return list(zip(ords.tolist(), vals.tolist(), strict=True))


def cut_is_settled(scores: np.ndarray, k: int) -> bool:
    """Whether a best-first score list (an engine's top hits, possibly cut short) shows where the tie
    group at position k ends: a gap beyond RELATIVE_TIE after it, or no more hits than k. Otherwise a
    tie straddles the cut and the engine picked its members its own way: ask it for more."""
    vals = np.asarray(scores, dtype=np.float64)
    if len(vals) <= k:
        return True
    tail = vals[k - 1 :] if k > 0 else vals
    return bool(_gaps(tail).any())


def canonical(candidates: Sequence[Candidate]) -> Sequence[Candidate]:
    """`candidates` (best first) in the canonical order; the same object when nothing changes (a `Ranked`
    stays one, read and reordered as arrays)."""
    n = len(candidates)
    if n < 2:
        return candidates
    if isinstance(candidates, Ranked):
        vals, ords = candidates.scores, candidates.ordinals
    else:
        vals = np.fromiter(map(_SCORE, candidates), dtype=np.float64, count=n)
        ords = None
    gap = _gaps(vals)
    if gap.all():  # the usual case: strictly best first, no near ties
        return candidates
    if ords is None:
        ords = np.fromiter(map(_ORDINAL, candidates), dtype=np.int64, count=n)
    tied = ~gap
    if (vals[:-1] >= vals[1:]).all() and (ords[1:][tied] >= ords[:-1][tied]).all():
        # Never rising, and every near tie already by ordinal: best_first would return it unchanged.
        return candidates
    ords, vals = best_first_arrays(ords, vals, n)
    if isinstance(candidates, Ranked):
        return Ranked(ords, vals)
    return [Candidate(o, s) for o, s in zip(ords.tolist(), vals.tolist(), strict=True)]
