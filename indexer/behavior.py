"""Behavior-based recall, offline part: item-to-item tables, popularity and user histories.

The tables are written in the layout `common.index.behavior` documents and reads back (`BehaviorIndex`);
`quarry eval behavior` evaluates them on a temporal split.

Methods (`methods` in the manifest part):

* ``itemcf``: sim(i,j) = Σ_{u ∈ N(i)∩N(j)} w_u / (|N(i)|^α · |N(j)|^(1-α)), w_u = 1 / ln(1 + |N(u)|) (IUF:
  a user who likes everything says little about any pair).
* ``swing`` (Yang et al., "Large Scale Product Graph Construction for Recommendation in E-commerce", 2020):
  sim(i,j) = Σ_{u<v ∈ U_i∩U_j} w_u · w_v / (α + |I_u ∩ I_v|), w_u = 1 / sqrt(|I_u|). Each unordered user pair
  counts once (the paper's ordered double sum is exactly twice this, which no ranking can see). A pair of
  users who share little beyond i and j is strong evidence; a pair who share everything is not.

Tractability caps (both keep the *most recent* interactions, so the tables follow current behavior and a
build is deterministic):

* ``max_items_per_user``: only a user's last K positive items enter the similarity computations. Work grows
  with Σ_u |I_u|², so one crawler or bot account could otherwise dominate the build.
* ``swing_max_users_per_item``: Swing enumerates user pairs per item, Σ_i |U_i|²; for an item with more
  than M users only its M most recent users form pairs (as a row of the table: sim(i, ·) uses i's sampled
  users, while the overlap |I_u ∩ I_v| and the co-items j use the users' full (capped) lists). The table is
  then slightly asymmetric for heavy items, which a per-row top-k never notices.
* ``ease`` (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the item-item weights
  B that best reconstruct each user's items from their other items under an L2 penalty λ, in closed form:
  P = (XᵀX + λI)⁻¹, B_ij = −P_ij / P_jj, B_ii = 0, over the binary user × item matrix X of positive
  interactions. A user's score for j is Σ_{i ∈ the user's items} B_ij: unlike the two co-occurrence
  counts it discounts what the user's other items already explain, and its weights can be negative
  (an item whose fans avoid j). The inverse is dense, so only the `ease_max_items` items with the most
  interactions take part (the rest get no row and are nobody's neighbour), and each row keeps its
  `ease_neighbors` largest weights by magnitude, negative ones included: in the README's MovieLens-1M
  diagnostic, keeping the 200 largest positive weights instead took the ranker from 0.271 to 0.260.

Counts that describe a user or item (|N(u)|, |I_u|, |N(i)|) are taken before the caps: the caps bound work,
they should not make a heavy user look moderate.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import scipy.linalg
import scipy.sparse as sp

from common.catalog import Event
from common.index.behavior import (
    FORMAT_VERSION,
    HIST_INDICES,
    HIST_INDPTR,
    HIST_USERS,
    ITEM_WEIGHT,
    METHODS,
    POPULARITY,
    POPULARITY_ORDER,
    USER_COLUMN,
    table_files,
)

log = logging.getLogger(__name__)

# Per-block work bounds for the sparse products: each is roughly the number of nonzeros one step
# materialises, so peak memory stays around a few hundred MB whatever the data size.
_ITEMCF_BLOCK_WORK = 8_000_000
_SWING_BLOCK_PAIRS = 2_000_000
_SWING_CHUNK_NNZ = 8_000_000
#: `item_weight`: pseudo-events at the mean over all items added to each item's own (shrinkage).
ITEM_WEIGHT_PRIOR_EVENTS = 5


@dataclass(frozen=True)
class BehaviorParams:
    #: Neighbors kept per item and method.
    neighbors: int = 50
    #: Items kept per user history, newest first: the seeds of online recall (the branches read the first
    #: few) and of the ranker's whole-taste affinity features (ranker.schema.AFFINITY_MEMORIES, which read
    #: up to 500: in the README's MovieLens-1M diagnostic, seeding EASE with a user's last 50 items
    #: instead of all cost the ranker 0.021 NDCG@10).
    history_len: int = 500
    #: An event is a positive interaction when type_weight × weight ≥ min_weight (and > 0); others are
    #: ignored entirely. MovieLens: 4 (ratings of 4 and 5 are "liked").
    min_weight: float = 0.0
    #: Multiplier per event type (missing types: 1.0), e.g. {"view": 1, "cart": 3, "buy": 5}.
    type_weights: Mapping[str, float] = field(default_factory=dict)
    #: ItemCF popularity damping: 0.5 is cosine; towards 1 favors popular neighbors, towards 0 niche ones.
    itemcf_alpha: float = 0.5
    #: Swing smoothing in 1/(α + |I_u ∩ I_v|).
    swing_alpha: float = 1.0
    #: Swing: users per item that form pairs (most recent first); see the module docstring.
    swing_max_users_per_item: int = 300
    #: Both methods: positive items per user used for similarities (most recent first).
    max_items_per_user: int = 500
    #: Popularity half-life in days, relative to the newest positive event; None counts without decay.
    popularity_half_life_days: float | None = 30.0
    #: EASE: the L2 penalty λ (larger leans towards popular items; EASE alone on MovieLens-1M's test
    #: window scored NDCG@10 0.186 / 0.195 / 0.202 at λ 200 / 500 / 1,000, all ratings), the items that
    #: take part (the inverse is dense: m² memory, m³ time; 5,000 items take ~5 s and 0.4 GB on 2 cores,
    #: measured on synthetic interactions) and the weights kept per row (by magnitude).
    ease_lambda: float = 1000.0
    ease_max_items: int = 5000
    ease_neighbors: int = 200
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        for name in (
            "neighbors",
            "history_len",
            "swing_max_users_per_item",
            "max_items_per_user",
            "ease_max_items",
            "ease_neighbors",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.swing_max_users_per_item < 2:
            raise ValueError("swing_max_users_per_item must be ≥ 2 (Swing needs user pairs)")
        if not 0.0 <= self.itemcf_alpha <= 1.0:
            raise ValueError("itemcf_alpha must be in [0, 1]")
        if not self.swing_alpha > 0:
            raise ValueError("swing_alpha must be > 0")
        if not (self.ease_lambda > 0 and math.isfinite(self.ease_lambda)):
            raise ValueError("ease_lambda must be a finite number > 0")
        if self.popularity_half_life_days is not None and not self.popularity_half_life_days > 0:
            raise ValueError("popularity_half_life_days must be > 0 (or None for no decay)")
        unknown = set(self.methods) - set(METHODS)
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if not all(math.isfinite(w) for w in self.type_weights.values()):
            raise ValueError("type_weights must be finite")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["type_weights"] = dict(self.type_weights)
        out["methods"] = list(self.methods)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BehaviorParams:
        fields = dict(data)
        if "methods" in fields:
            fields["methods"] = tuple(fields["methods"])
        return cls(**fields)


# --------------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Interactions:
    """Positive interactions, one row per distinct (user, item) pair."""

    n_items: int
    user_ids: list[str]
    user: np.ndarray  # int64 user code (first-appearance order)
    item: np.ndarray  # int64 ordinal
    ts: np.ndarray  # float64, the pair's latest event
    seq: np.ndarray  # int64, that event's position in the input (breaks timestamp ties: later wins)
    weight: np.ndarray  # float64, the pair's strongest event
    counts: dict[str, int]
    #: Over every event of a known item (positive or not): each item's summed strength and event count.
    strength_sum: np.ndarray  # float64 (n_items)
    strength_events: np.ndarray  # int64 (n_items)


def _collect(events: Iterable[Event], ord_of: Mapping[str, int], params: BehaviorParams) -> _Interactions:
    n_items = len(ord_of)
    type_weights = params.type_weights
    min_weight = params.min_weight
    user_code: dict[str, int] = {}
    users, items, tss, weights = array("q"), array("q"), array("d"), array("d")
    all_items, all_strengths = array("q"), array("d")
    seen = unknown = not_positive = 0
    for ev in events:
        seen += 1
        ordinal = ord_of.get(ev.item)
        if ordinal is None:
            unknown += 1
            continue
        strength = type_weights.get(ev.type, 1.0) * ev.weight
        if math.isfinite(strength):
            all_items.append(ordinal)
            all_strengths.append(strength)
        if not (strength > 0 and strength >= min_weight):
            not_positive += 1
            continue
        code = user_code.get(ev.user)
        if code is None:
            code = user_code[ev.user] = len(user_code)
        users.append(code)
        items.append(ordinal)
        tss.append(ev.ts)
        weights.append(strength)
    u = np.frombuffer(users, dtype=np.int64) if users else np.zeros(0, np.int64)
    i = np.frombuffer(items, dtype=np.int64) if items else np.zeros(0, np.int64)
    t = np.frombuffer(tss, dtype=np.float64) if tss else np.zeros(0, np.float64)
    w = np.frombuffer(weights, dtype=np.float64) if weights else np.zeros(0, np.float64)
    if len(i) and (i.min() < 0 or i.max() >= n_items):
        raise ValueError(f"ord_of maps an item outside 0..{n_items - 1}: ordinals must be dense")
    seq = np.arange(len(u), dtype=np.int64)
    # One row per (user, item): repeated events (re-views, a rating then a purchase) are one interaction,
    # dated by the latest event so histories and decay follow the newest signal.
    key = u * max(n_items, 1) + i
    order = np.lexsort((seq, t, key))
    key_s = key[order]
    last = np.flatnonzero(np.r_[key_s[1:] != key_s[:-1], True]) if len(key_s) else np.zeros(0, np.int64)
    first = np.r_[0, last[:-1] + 1] if len(last) else np.zeros(0, np.int64)
    pair_weight = np.maximum.reduceat(w[order], first) if len(first) else np.zeros(0, np.float64)
    take = order[last]
    counts = {
        "events": seen,
        "skipped_unknown_item": unknown,
        "skipped_not_positive": not_positive,
        "positive_events": len(u),
        "interactions": len(take),
        "users": len(user_code),
    }
    ai = np.frombuffer(all_items, dtype=np.int64) if all_items else np.zeros(0, np.int64)
    aw = np.frombuffer(all_strengths, dtype=np.float64) if all_strengths else np.zeros(0, np.float64)
    return _Interactions(
        strength_sum=np.bincount(ai, weights=aw, minlength=n_items)[:n_items],
        strength_events=np.bincount(ai, minlength=n_items)[:n_items],
        n_items=n_items,
        user_ids=list(user_code),
        user=u[take],
        item=i[take],
        ts=t[take],
        seq=seq[take],
        weight=pair_weight,
        counts=counts,
    )


def _rank_within(groups_sorted: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal values (input sorted by group)."""
    n = len(groups_sorted)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups_sorted[1:] != groups_sorted[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def _newest_per_group(group: np.ndarray, ts: np.ndarray, seq: np.ndarray, limit: int) -> np.ndarray:
    """Row indices of each group's `limit` newest rows, ordered by group then newest first."""
    order = np.lexsort((-seq, -ts, group))
    return order[_rank_within(group[order]) < limit]


def _blocks(work: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Contiguous item ranges whose summed work is about `budget` (a single heavy item gets its own)."""
    n = len(work)
    if n == 0:
        return
    start_work = np.cumsum(work) - work
    block_id = (start_work // max(budget, 1)).astype(np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(block_id)) + 1, n]
    for b0, b1 in itertools.pairwise(bounds.tolist()):
        yield int(b0), int(b1)


def _topk_rows(s: Any, row_offset: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row top-k of a sparse block (self-similarity dropped): (counts per row, columns, scores)."""
    s = sp.csr_array(s)
    s.sum_duplicates()
    n = s.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(s.indptr))
    cols = s.indices.astype(np.int64)
    vals = s.data.astype(np.float64)
    keep = (cols != rows + row_offset) & (vals > 0)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # Ties go to the lower ordinal so builds are reproducible.
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    sel = _rank_within(rows) < k
    return (
        np.bincount(rows[sel], minlength=n).astype(np.int64),
        cols[sel].astype(np.int32),
        vals[sel].astype(np.float32),
    )


class _TableBuilder:
    def __init__(self) -> None:
        self.counts: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    def add(self, part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.counts.append(part[0])
        self.indices.append(part[1])
        self.scores.append(part[2])

    def add_empty(self, rows: int) -> None:
        self.add((np.zeros(rows, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)))

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int32)
        scores = np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)
        return indptr, indices.astype(np.int32), scores.astype(np.float32)


def _itemcf(
    inter: _Interactions, capped: np.ndarray, params: BehaviorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_users, n_items = len(inter.user_ids), inter.n_items
    cu, ci = inter.user[capped], inter.item[capped]
    user_act = np.bincount(inter.user, minlength=n_users).astype(np.float64)
    item_cnt = np.bincount(inter.item, minlength=n_items).astype(np.float64)
    iuf = 1.0 / np.log1p(np.maximum(user_act, 1.0))
    a = sp.csr_array((np.ones(len(cu)), (cu, ci)), shape=(n_users, n_items))
    a_wt = sp.csr_array((iuf[cu], (ci, cu)), shape=(n_items, n_users))
    safe = np.maximum(item_cnt, 1.0)
    row_norm = safe**params.itemcf_alpha
    col_norm = safe ** (1.0 - params.itemcf_alpha)
    user_len = np.diff(a.indptr).astype(np.float64)
    work = np.bincount(ci, weights=user_len[cu], minlength=n_items)
    out = _TableBuilder()
    for b0, b1 in _blocks(work, _ITEMCF_BLOCK_WORK):
        co = sp.csr_array(a_wt[b0:b1] @ a)
        rows = np.repeat(np.arange(b1 - b0), np.diff(co.indptr))
        co.data = co.data / (row_norm[rows + b0] * col_norm[co.indices])
        out.add(_topk_rows(co, b0, params.neighbors))
    return out.finish()


def _swing(
    inter: _Interactions, capped: np.ndarray, params: BehaviorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_users, n_items = len(inter.user_ids), inter.n_items
    cu, ci = inter.user[capped], inter.item[capped]
    user_act = np.bincount(inter.user, minlength=n_users).astype(np.float64)
    w_user = 1.0 / np.sqrt(np.maximum(user_act, 1.0))
    a = sp.csr_array((np.ones(len(cu)), (cu, ci)), shape=(n_users, n_items))
    user_len = np.diff(a.indptr)
    # Each item's most recent users (within the per-user caps) form its pairs.
    sampled = _newest_per_group(ci, inter.ts[capped], inter.seq[capped], params.swing_max_users_per_item)
    su, si = cu[sampled], ci[sampled]
    st = sp.csr_array((np.ones(len(su)), (si, su)), shape=(n_items, n_users))
    m = np.diff(st.indptr).astype(np.float64)
    out = _TableBuilder()
    for b0, b1 in _blocks(m * (m - 1) / 2, _SWING_BLOCK_PAIRS):
        block = st[b0:b1]
        active = np.unique(block.indices)
        if len(active) < 2:
            out.add_empty(b1 - b0)
            continue
        # Columns renumbered to the block's active users keeps the pair matrix small.
        local = sp.csr_array(
            (block.data, np.searchsorted(active, block.indices), block.indptr), shape=(b1 - b0, len(active))
        )
        local_t = sp.csr_array(local.T)
        pairs = sp.triu(sp.csr_array(local_t @ local), k=1).tocoo()
        pu, pv = pairs.row.astype(np.int64), pairs.col.astype(np.int64)
        if len(pu) == 0:
            out.add_empty(b1 - b0)
            continue
        gu, gv = active[pu], active[pv]
        # Chunk the pairs so the intersected user rows (A[u] ∘ A[v]) stay within a memory budget.
        pair_nnz = user_len[gu] + user_len[gv]
        chunk_id = (np.cumsum(pair_nnz) - pair_nnz) // _SWING_CHUNK_NNZ
        bounds = np.r_[0, np.flatnonzero(np.diff(chunk_id)) + 1, len(pu)]
        rows_acc: list[np.ndarray] = []
        cols_acc: list[np.ndarray] = []
        vals_acc: list[np.ndarray] = []
        for c0, c1 in itertools.pairwise(bounds.tolist()):
            if c0 == c1:
                continue
            shared = sp.csr_array(a[gu[c0:c1]].multiply(a[gv[c0:c1]]))
            overlap = np.diff(shared.indptr)
            weight = w_user[gu[c0:c1]] * w_user[gv[c0:c1]] / (params.swing_alpha + overlap)
            # Items of this block for which both users of a pair were sampled, weighted by the pair.
            q = sp.csr_array(local_t[pu[c0:c1]].multiply(local_t[pv[c0:c1]]))
            q.data = q.data * np.repeat(weight, np.diff(q.indptr))
            contrib = sp.coo_array(q.T @ shared)
            rows_acc.append(contrib.row)
            cols_acc.append(contrib.col)
            vals_acc.append(contrib.data)
        sim = sp.csr_array(
            (np.concatenate(vals_acc), (np.concatenate(rows_acc), np.concatenate(cols_acc))),
            shape=(b1 - b0, n_items),
        )
        out.add(_topk_rows(sim, b0, params.neighbors))
    return out.finish()


def _ease(
    inter: _Interactions, capped: np.ndarray, params: BehaviorParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EASE weights (module docstring) over the `ease_max_items` items with the most interactions (ties:
    the lower ordinal): each row's `ease_neighbors` largest by magnitude, weight-descending."""
    n_users, n_items = len(inter.user_ids), inter.n_items
    cu, ci = inter.user[capped], inter.item[capped]
    count = np.bincount(ci, minlength=n_items)
    order = np.lexsort((np.arange(n_items), -count))
    chosen = np.sort(order[: min(params.ease_max_items, int(np.count_nonzero(count)))])
    m = len(chosen)
    if m < 2:
        return np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    local = np.full(n_items, -1, np.int64)
    local[chosen] = np.arange(m)
    keep = local[ci] >= 0
    x = sp.csr_array((np.ones(int(keep.sum())), (cu[keep], local[ci[keep]])), shape=(n_users, m))
    gram = (x.T @ x).toarray()
    gram[np.diag_indices(m)] += params.ease_lambda
    b = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    b /= -np.diag(b).copy()  # B_ij = −P_ij / P_jj (columns scaled), in place: m² floats held once
    b[np.diag_indices(m)] = 0.0
    k = min(params.ease_neighbors, m - 1)
    counts = np.zeros(n_items, np.int64)
    kept_ords: list[np.ndarray] = []
    kept_vals: list[np.ndarray] = []
    # Row blocks bound the top-k's temporaries (|B|, the partition's indices) to ~64 MB.
    step = max(1, 8_000_000 // m)
    for r0 in range(0, m, step):
        block = b[r0 : r0 + step]
        top = np.argpartition(-np.abs(block), k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(block, top, axis=1)
        ords = chosen[top]
        # Weight-descending within a row, ties to the lower ordinal; the zero diagonal is never kept.
        order_in_row = np.lexsort((ords, -vals), axis=1)
        vals = np.take_along_axis(vals, order_in_row, axis=1)
        ords = np.take_along_axis(ords, order_in_row, axis=1)
        nonzero = (vals != 0) & (ords != chosen[r0 : r0 + step, None])
        counts[chosen[r0 : r0 + step]] = nonzero.sum(axis=1)
        kept_ords.append(ords[nonzero].astype(np.int32))
        kept_vals.append(vals[nonzero].astype(np.float32))
    # `chosen` is ascending, so the rows were visited in ordinal order.
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, np.concatenate(kept_ords), np.concatenate(kept_vals)


def _popularity(inter: _Interactions, params: BehaviorParams) -> tuple[np.ndarray, np.ndarray]:
    if len(inter.ts) and params.popularity_half_life_days is not None:
        # Decay relative to the newest event, not the wall clock: rebuilding the same data gives the same
        # snapshot, and an old data set does not decay to nothing.
        age = inter.ts.max() - inter.ts
        decay = np.exp2(-age / (params.popularity_half_life_days * 86400.0))
    else:
        decay = np.ones(len(inter.ts))
    pop = np.bincount(inter.item, weights=inter.weight * decay, minlength=inter.n_items)
    order = np.lexsort((np.arange(inter.n_items), -pop))
    order = order[pop[order] > 0]
    return pop.astype(np.float32), order.astype(np.int32)


def _item_weight(inter: _Interactions) -> tuple[np.ndarray, float]:
    """Each item's mean event strength (type weight × weight, every event: a 2-star rating lowers it),
    shrunk towards the mean over all events by ITEM_WEIGHT_PRIOR_EVENTS pseudo-events, so an item with
    one event is not judged by it alone; an item without events gets that mean. Returns (per item, mean)."""
    total = int(inter.strength_events.sum())
    prior = float(inter.strength_sum.sum() / total) if total else 0.0
    m = ITEM_WEIGHT_PRIOR_EVENTS
    mean = (inter.strength_sum + prior * m) / (inter.strength_events + m)
    return mean.astype(np.float32), prior


def _histories(inter: _Interactions, params: BehaviorParams) -> tuple[list[str], np.ndarray, np.ndarray]:
    n_users = len(inter.user_ids)
    by_id = sorted(range(n_users), key=inter.user_ids.__getitem__)
    row_of = np.empty(n_users, np.int64)
    row_of[np.asarray(by_id, dtype=np.int64)] = np.arange(n_users)
    rows = row_of[inter.user]
    keep = _newest_per_group(rows, inter.ts, inter.seq, params.history_len)
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=n_users), out=indptr[1:])
    return [inter.user_ids[c] for c in by_id], indptr, inter.item[keep].astype(np.int32)


def build_behavior(
    events: Iterable[Event], ord_of: Mapping[str, int], directory: Path, *, params: BehaviorParams
) -> dict[str, Any]:
    """Build the behavior part into `directory`; returns its manifest entry (file paths relative to the
    snapshot root, i.e. prefixed with the directory's name)."""
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    inter = _collect(events, ord_of, params)
    timings: dict[str, float] = {"collect": round(time.perf_counter() - t0, 3)}
    capped = _newest_per_group(inter.user, inter.ts, inter.seq, params.max_items_per_user)
    written: list[str] = []

    def save(name: str, arr: np.ndarray) -> None:
        np.save(directory / name, np.ascontiguousarray(arr))
        written.append(name)

    counts = dict(inter.counts)
    counts["items_with_interactions"] = int(np.count_nonzero(np.bincount(inter.item, minlength=1)))
    counts["interactions_for_similarity"] = len(capped)
    builders = {"itemcf": _itemcf, "swing": _swing, "ease": _ease}
    for method in params.methods:
        t1 = time.perf_counter()
        indptr, indices, scores = builders[method](inter, capped, params)
        for name, arr in zip(table_files(method), (indptr, indices, scores), strict=True):
            save(name, arr)
        counts[f"{method}_edges"] = len(indices)
        counts[f"{method}_items_with_neighbors"] = int(np.count_nonzero(np.diff(indptr)))
        timings[method] = round(time.perf_counter() - t1, 3)
    pop, pop_order = _popularity(inter, params)
    save(POPULARITY, pop)
    save(POPULARITY_ORDER, pop_order)
    item_weight, weight_prior = _item_weight(inter)
    save(ITEM_WEIGHT, item_weight)
    users, hist_indptr, hist_indices = _histories(inter, params)
    save(HIST_INDPTR, hist_indptr)
    save(HIST_INDICES, hist_indices)
    table = pa.table({USER_COLUMN: pa.array(users, pa.large_string())})
    with pa.OSFile(str(directory / HIST_USERS), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        # One record batch: the reader indexes a single contiguous array.
        writer.write_table(table, max_chunksize=max(len(users), 1))
    written.append(HIST_USERS)
    timings["total"] = round(time.perf_counter() - t0, 3)
    log.info(
        "behavior: %d positive interactions, %d users, %d items → %s in %.1fs",
        counts["interactions"],
        counts["users"],
        inter.n_items,
        ", ".join(params.methods),
        timings["total"],
    )
    return {
        "dir": directory.name,
        "format": FORMAT_VERSION,
        "items": inter.n_items,
        "users": len(users),
        "methods": list(params.methods),
        "files": [f"{directory.name}/{name}" for name in written],
        "params": params.to_json(),
        "item_weight": {"prior": weight_prior, "prior_events": ITEM_WEIGHT_PRIOR_EVENTS},
        "counts": counts,
        "seconds": timings,
    }
