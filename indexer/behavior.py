"""Behavior-based recall, offline part: item-to-item tables, popularity and user histories.

The snapshot part `behavior/`::

    i2i_<method>.indptr.npy   int64 (N+1)   CSR row pointers over item ordinals
    i2i_<method>.indices.npy  int32         neighbor ordinals, score-descending within each row
    i2i_<method>.scores.npy   float32       similarity scores, same order
    popularity.npy            float32 (N)   time-decayed positive-interaction weight per item
    popularity.order.npy      int32         ordinals with popularity > 0, most popular first
    user_hist.indptr.npy      int64 (U+1)   CSR row pointers, one row per user
    user_hist.indices.npy     int32         each user's last `history_len` distinct positive items, newest first
    user_hist.users.arrow     Arrow IPC file, one large_string column "user": user ids in row order, sorted

Every file is a plain array (never a pickle) so the retriever memory-maps it: a snapshot with millions of
users opens without parsing. Users are sorted so a lookup is a binary search over the mapped column rather
than a dict built at load time.

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

Counts that describe a user or item (|N(u)|, |I_u|, |N(i)|) are taken before the caps: the caps bound work,
they should not make a heavy user look moderate.

Run ``python -m indexer.behavior eval-movielens`` for the offline evaluation (temporal split).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import logging
import math
import sys
import tempfile
import time
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import scipy.sparse as sp

from indexer.catalog import Event

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METHODS = ("itemcf", "swing")
POPULARITY = "popularity.npy"
POPULARITY_ORDER = "popularity.order.npy"
HIST_INDPTR = "user_hist.indptr.npy"
HIST_INDICES = "user_hist.indices.npy"
HIST_USERS = "user_hist.users.arrow"
USER_COLUMN = "user"

# Per-block work bounds for the sparse products: each is roughly the number of nonzeros one step
# materialises, so peak memory stays around a few hundred MB whatever the data size.
_ITEMCF_BLOCK_WORK = 8_000_000
_SWING_BLOCK_PAIRS = 2_000_000
_SWING_CHUNK_NNZ = 8_000_000


def table_files(method: str) -> tuple[str, str, str]:
    return (f"i2i_{method}.indptr.npy", f"i2i_{method}.indices.npy", f"i2i_{method}.scores.npy")


@dataclass(frozen=True)
class BehaviorParams:
    #: Neighbors kept per item and method.
    neighbors: int = 50
    #: Items kept per user history (the seeds of online recall).
    history_len: int = 50
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
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        for name in ("neighbors", "history_len", "swing_max_users_per_item", "max_items_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.swing_max_users_per_item < 2:
            raise ValueError("swing_max_users_per_item must be ≥ 2 (Swing needs user pairs)")
        if not 0.0 <= self.itemcf_alpha <= 1.0:
            raise ValueError("itemcf_alpha must be in [0, 1]")
        if not self.swing_alpha > 0:
            raise ValueError("swing_alpha must be > 0")
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


def _collect(events: Iterable[Event], ord_of: Mapping[str, int], params: BehaviorParams) -> _Interactions:
    n_items = len(ord_of)
    type_weights = params.type_weights
    min_weight = params.min_weight
    user_code: dict[str, int] = {}
    users, items, tss, weights = array("q"), array("q"), array("d"), array("d")
    seen = unknown = not_positive = 0
    for ev in events:
        seen += 1
        ordinal = ord_of.get(ev.item)
        if ordinal is None:
            unknown += 1
            continue
        strength = type_weights.get(ev.type, 1.0) * ev.weight
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
    return _Interactions(
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
    builders = {"itemcf": _itemcf, "swing": _swing}
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
        "counts": counts,
        "seconds": timings,
    }


# --------------------------------------------------------------------------------------------------------
# read side
# --------------------------------------------------------------------------------------------------------


class _SortedUsers:
    """Binary search over the memory-mapped, sorted user id column (no dict built at load time)."""

    def __init__(self, column: pa.Array) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def sample(self, n: int) -> list[str]:
        """Up to `n` user ids (the first in sort order), for benchmarks and smoke checks."""
        return self._column.slice(0, n).to_pylist()

    def row(self, user_id: str) -> int | None:
        col = self._column
        lo = bisect.bisect_left(range(len(col)), user_id, key=lambda i: col[i].as_py())
        if lo < len(col) and col[lo].as_py() == user_id:
            return lo
        return None


class BehaviorIndex:
    """Read side of the behavior part; arrays stay memory-mapped."""

    def __init__(
        self,
        tables: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        popularity: np.ndarray,
        popularity_order: np.ndarray,
        hist_indptr: np.ndarray,
        hist_indices: np.ndarray,
        users: pa.Array,
    ) -> None:
        self._tables = dict(tables)
        self.popularity = popularity
        self._pop_order = popularity_order
        self._hist_indptr = hist_indptr
        self._hist_indices = hist_indices
        self._users = _SortedUsers(users)
        self.num_items = len(popularity)

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> BehaviorIndex:
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported behavior format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        n_items, n_users = int(meta["items"]), int(meta["users"])

        def load_npy(name: str, dtype: type, length: int | None = None) -> np.ndarray:
            arr = np.load(directory / name, mmap_mode="r")
            if arr.dtype != dtype or arr.ndim != 1 or (length is not None and len(arr) != length):
                raise ValueError(f"{directory / name}: {arr.shape} {arr.dtype} does not match the manifest")
            # A plain ndarray view of the map: still file-backed, without np.memmap's per-slice overhead.
            return np.asarray(arr)

        tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for method in meta["methods"]:
            f_indptr, f_indices, f_scores = table_files(method)
            indptr = load_npy(f_indptr, np.int64, n_items + 1)
            nnz = int(indptr[-1])
            tables[method] = (indptr, load_npy(f_indices, np.int32, nnz), load_npy(f_scores, np.float32, nnz))
        hist_indptr = load_npy(HIST_INDPTR, np.int64, n_users + 1)
        hist_indices = load_npy(HIST_INDICES, np.int32, int(hist_indptr[-1]))
        reader = ipc.open_file(pa.memory_map(str(directory / HIST_USERS), "r"))
        users = (
            reader.get_batch(0).column(0)
            if reader.num_record_batches == 1
            else pa.array([], pa.large_string())
        )
        if len(users) != n_users:
            raise ValueError(f"{directory / HIST_USERS}: {len(users)} users, manifest says {n_users}")
        return cls(
            tables,
            load_npy(POPULARITY, np.float32, n_items),
            load_npy(POPULARITY_ORDER, np.int32),
            hist_indptr,
            hist_indices,
            users,
        )

    @property
    def methods(self) -> list[str]:
        return list(self._tables)

    def _table(self, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            return self._tables[method]
        except KeyError:
            raise ValueError(
                f"unknown behavior method {method!r}; this snapshot has {self.methods}"
            ) from None

    def neighbors(self, method: str, ordinal: int) -> tuple[np.ndarray, np.ndarray]:
        """(neighbor ordinals int32, scores float32), best first; views into the mapped files."""
        indptr, indices, scores = self._table(method)
        if not 0 <= ordinal < self.num_items:
            raise IndexError(f"ordinal {ordinal} outside 0..{self.num_items - 1}")
        lo, hi = int(indptr[ordinal]), int(indptr[ordinal + 1])
        return indices[lo:hi], scores[lo:hi]

    def expand(
        self,
        method: str,
        seeds: Sequence[tuple[int, float]],
        k: int,
        *,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Top-k items by Σ_seed weight · sim(seed, item); seeds, `exclude` and items outside `allowed`
        (boolean mask over ordinals) never appear. Ties go to the lower ordinal."""
        indptr, indices, scores = self._table(method)
        if k <= 0 or not seeds:
            return []
        if allowed is not None and allowed.shape != (self.num_items,):
            raise ValueError(f"allowed must be a boolean mask of shape ({self.num_items},)")
        seed_ords = np.fromiter((s[0] for s in seeds), dtype=np.int64, count=len(seeds))
        seed_w = np.fromiter((s[1] for s in seeds), dtype=np.float64, count=len(seeds))
        if seed_ords.min() < 0 or seed_ords.max() >= self.num_items:
            raise IndexError(f"a seed ordinal is outside 0..{self.num_items - 1}")
        starts = indptr[seed_ords]
        lengths = indptr[seed_ords + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return []
        # Gather every seed's neighbor slice in one fancy-index read instead of a Python loop.
        offsets = np.cumsum(lengths) - lengths
        pos = np.repeat(starts - offsets, lengths) + np.arange(total)
        cand, inverse = np.unique(indices[pos], return_inverse=True)
        agg = np.bincount(inverse, weights=scores[pos] * np.repeat(seed_w, lengths), minlength=len(cand))
        keep = ~np.isin(cand, seed_ords)
        if exclude:
            keep &= ~np.isin(cand, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        if allowed is not None:
            keep &= allowed[cand]
        cand, agg = cand[keep], agg[keep]
        top = np.lexsort((cand, -agg))[:k]
        return [(int(o), float(s)) for o, s in zip(cand[top], agg[top], strict=True)]

    def sample_users(self, n: int) -> list[str]:
        """Up to `n` user ids that have a history (for benchmarks and smoke checks)."""
        return self._users.sample(n)

    def user_history(self, user_id: str) -> list[int]:
        """The user's last positive items, most recent first; [] for a user without any."""
        row = self._users.row(user_id)
        if row is None:
            return []
        lo, hi = int(self._hist_indptr[row]), int(self._hist_indptr[row + 1])
        return self._hist_indices[lo:hi].tolist()

    def popular(self, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k most popular items (time-decayed), optionally restricted to a boolean mask."""
        if k <= 0:
            return []
        order = self._pop_order
        if allowed is None:
            top = np.asarray(order[:k])
        else:
            if allowed.shape != (self.num_items,):
                raise ValueError(f"allowed must be a boolean mask of shape ({self.num_items},)")
            # Walk the precomputed order in growing chunks: a permissive mask finishes in the first one.
            found: list[np.ndarray] = []
            have, lo, step = 0, 0, max(4 * k, 1024)
            while have < k and lo < len(order):
                chunk = np.asarray(order[lo : lo + step])
                hit = chunk[allowed[chunk]]
                found.append(hit)
                have += len(hit)
                lo += step
                step *= 4
            top = np.concatenate(found)[:k] if found else np.zeros(0, np.int32)
        return [(int(o), float(self.popularity[o])) for o in top]


# --------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------


def evaluate_behavior(
    events: Iterable[Event],
    ord_of: Mapping[str, int],
    *,
    split_ts: float | None = None,
    fraction: float = 0.8,
    k: int = 50,
    params: BehaviorParams | None = None,
    seeds: int | None = None,
    seed_decay: float = 1.0,
) -> dict[str, Any]:
    """Temporal hold-out evaluation of ItemCF, Swing and popularity recall.

    Events before the cut (default: the `fraction` quantile of all timestamps) build the tables; each user
    with a training history and at least one positive test item not seen in training is a query: the last
    `seeds` (default history_len) training positives, weighted seed_decay**rank (newest rank 0), are
    expanded, excluding every item the user interacted with in training. Recall@k is the user's share of
    test positives retrieved, averaged over users; HitRate@k the share of users with at least one.
    """
    params = params or BehaviorParams()
    evs = list(events)
    ts = np.fromiter((e.ts for e in evs), dtype=np.float64, count=len(evs))
    if split_ts is None:
        if not 0.0 < fraction < 1.0:
            raise ValueError("fraction must be in (0, 1)")
        split_ts = float(np.quantile(ts, fraction))
    train = [e for e in evs if e.ts < split_ts]
    test = [e for e in evs if e.ts >= split_ts]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quarry-behavior-eval-") as tmp:
        directory = Path(tmp) / "behavior"
        meta = build_behavior(train, ord_of, directory, params=params)
        build_s = time.perf_counter() - t0
        index = BehaviorIndex.load(directory, meta)
        seen: dict[str, set[int]] = {}
        for e in train:
            o = ord_of.get(e.item)
            if o is not None:
                seen.setdefault(e.user, set()).add(o)
        targets: dict[str, set[int]] = {}
        for e in test:
            o = ord_of.get(e.item)
            w = params.type_weights.get(e.type, 1.0) * e.weight
            if o is not None and w > 0 and w >= params.min_weight and o not in seen.get(e.user, ()):
                targets.setdefault(e.user, set()).add(o)
        methods = ["popularity", *params.methods]
        hits = {m: 0 for m in methods}
        recall = {m: 0.0 for m in methods}
        returned = {m: 0 for m in methods}
        n_seeds = seeds or params.history_len
        expand_s = 0.0
        users = positives = 0
        for user in sorted(targets):
            history = index.user_history(user)
            if not history:
                continue
            users += 1
            truth = targets[user]
            positives += len(truth)
            excluded = seen[user]
            allowed = np.ones(index.num_items, dtype=bool)
            allowed[list(excluded)] = False
            recs: dict[str, list[tuple[int, float]]] = {"popularity": index.popular(k, allowed)}
            weighted = [(o, seed_decay**r) for r, o in enumerate(history[:n_seeds])]
            for method in params.methods:
                t1 = time.perf_counter()
                recs[method] = index.expand(method, weighted, k, exclude=excluded)
                expand_s += time.perf_counter() - t1
            for method, rec in recs.items():
                got = len(truth.intersection(o for o, _ in rec))
                recall[method] += got / len(truth)
                hits[method] += got > 0
                returned[method] += len(rec)
        del index
    denom = max(users, 1)
    return {
        "split_ts": split_ts,
        "split_utc": datetime.fromtimestamp(split_ts, UTC).isoformat(),
        "train_events": len(train),
        "test_events": len(test),
        "users": users,
        "test_positives": positives,
        "k": k,
        "seeds": n_seeds,
        "seed_decay": seed_decay,
        "build_seconds": round(build_s, 2),
        "expand_ms_mean": round(1000 * expand_s / max(users * len(params.methods), 1), 3),
        "build": meta,
        "methods": {
            m: {
                f"recall@{k}": recall[m] / denom,
                f"hit_rate@{k}": hits[m] / denom,
                "avg_returned": returned[m] / denom,
            }
            for m in methods
        },
    }


def format_eval(result: Mapping[str, Any]) -> str:
    k = result["k"]
    lines = [
        f"temporal split at ts={result['split_ts']:.0f} ({result['split_utc']}): "
        f"{result['train_events']} train / {result['test_events']} test events; "
        f"{result['users']} test users with {result['test_positives']} unseen positives; seeds={result['seeds']} decay={result['seed_decay']}",
        f"build {result['build_seconds']:.2f}s, expand {result['expand_ms_mean']:.3f} ms/query",
        f"{'method':<12}{f'Recall@{k}':>12}{f'HitRate@{k}':>13}{'avg returned':>14}",
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"{method:<12}{row[f'recall@{k}']:>12.4f}{row[f'hit_rate@{k}']:>13.4f}{row['avg_returned']:>14.1f}"
        )
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer.behavior", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval-movielens", help="temporal-split Recall/HitRate on MovieLens-100K")
    ev.add_argument("--data-dir", type=Path, default=None, help="default: $QUARRY_DATA_DIR or ../shared/data")
    ev.add_argument("--k", type=int, default=50)
    ev.add_argument("--fraction", type=float, default=0.8, help="timestamp quantile of the train/test cut")
    ev.add_argument("--min-rating", type=float, default=4.0, help="ratings ≥ this are positive")
    ev.add_argument("--seeds", type=int, default=None, help="history items expanded (default history_len)")
    ev.add_argument("--seed-decay", type=float, default=1.0, help="seed weight = decay**recency_rank")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from indexer.datasets import load_dataset

    ds = load_dataset("movielens", args.data_dir)
    assert ds.events is not None
    ord_of = {item.id: i for i, item in enumerate(ds.items())}
    result = evaluate_behavior(
        ds.events(),
        ord_of,
        fraction=args.fraction,
        k=args.k,
        params=BehaviorParams(min_weight=args.min_rating),
        seeds=args.seeds,
        seed_decay=args.seed_decay,
    )
    print(json.dumps(result, indent=2) if args.json else format_eval(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
