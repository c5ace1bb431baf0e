"""The behavior part of a snapshot: its file layout and its reader (`BehaviorIndex`).

The offline build (ItemCF/Swing tables, popularity, histories) is `indexer.behavior`; the serving side
(behavior and popular recall, ranking features) reads the part through `BehaviorIndex`.

The snapshot part `behavior/`::

    i2i_<method>.indptr.npy   int64 (N+1)   CSR row pointers over item ordinals
    i2i_<method>.indices.npy  int32         neighbor ordinals, score-descending within each row
    i2i_<method>.scores.npy   float32       similarity scores, same order (EASE's can be negative)
    popularity.npy            float32 (N)   time-decayed positive-interaction weight per item
    popularity.order.npy      int32         ordinals with popularity > 0, most popular first
    item_weight.npy           float32 (N)   mean event strength per item, shrunk to the mean over all
                                            items (optional: snapshots before it lack it)
    user_hist.indptr.npy      int64 (U+1)   CSR row pointers, one row per user
    user_hist.indices.npy     int32         each user's last `history_len` distinct positive items, newest first
    user_hist.users.arrow     Arrow IPC file, one large_string column "user": user ids in row order, sorted

Every file is a plain array (never a pickle) so the retriever memory-maps it: a snapshot with millions of
users opens without parsing. Users are sorted so a lookup is a binary search over the mapped column rather
than a dict built at load time.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common.arrays import in_sorted

FORMAT_VERSION = 1
METHODS = ("itemcf", "swing", "ease")
POPULARITY = "popularity.npy"
POPULARITY_ORDER = "popularity.order.npy"
ITEM_WEIGHT = "item_weight.npy"
HIST_INDPTR = "user_hist.indptr.npy"
HIST_INDICES = "user_hist.indices.npy"
HIST_USERS = "user_hist.users.arrow"
USER_COLUMN = "user"


def table_files(method: str) -> tuple[str, str, str]:
    return (f"i2i_{method}.indptr.npy", f"i2i_{method}.indices.npy", f"i2i_{method}.scores.npy")


#: Users whose row a generation remembers (a lookup is a binary search of ~1 µs a step; the same users come
#: back request after request): ~100 bytes each.
USER_ROW_CACHE = 16_384


class _SortedUsers:
    """Binary search over the memory-mapped, sorted user id column (no dict built at load time), with the
    most recently asked users' rows remembered."""

    def __init__(self, column: pa.Array) -> None:
        self._column = column
        # A cache over the column alone (not over self: no reference cycle keeps a retired generation's
        # mapped files alive until the garbage collector runs).
        self.row: Callable[[str], int | None] = functools.lru_cache(maxsize=USER_ROW_CACHE)(
            functools.partial(_sorted_row, column)
        )

    def __len__(self) -> int:
        return len(self._column)

    def sample(self, n: int) -> list[str]:
        """Up to `n` user ids (the first in sort order), for benchmarks and smoke checks."""
        return self._column.slice(0, n).to_pylist()


def _sorted_row(col: pa.Array, user_id: str) -> int | None:
    """The row of `user_id` in a sorted string column, or None."""
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
        item_weight: np.ndarray | None = None,
    ) -> None:
        self._tables = dict(tables)
        self.popularity = popularity
        #: Each item's mean event strength (shrunk; `indexer.behavior`); None in older snapshots.
        self.item_weight = item_weight
        self._pop_order = popularity_order
        self._hist_indptr = hist_indptr
        self._hist_indices = hist_indices
        self._users = _SortedUsers(users)
        self.num_items = len(popularity)
        #: Seed keys the i2i tables cover: item ordinals, or a shard's global ordinals.
        self.num_rows = len(next(iter(self._tables.values()))[0]) - 1 if self._tables else self.num_items

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> BehaviorIndex:
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported behavior format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        n_items, n_users = int(meta["items"]), int(meta["users"])
        # A shard's tables are keyed by the seed's global ordinal (the root hands it global seeds) while
        # their neighbours are the shard's own items: rows then outnumber items.
        n_rows = int(meta.get("seed_rows", n_items))

        def load_npy(name: str, dtype: type, length: int | None = None) -> np.ndarray:
            arr = np.load(directory / name, mmap_mode="r")
            if arr.dtype != dtype or arr.ndim != 1 or (length is not None and len(arr) != length):
                raise ValueError(f"{directory / name}: {arr.shape} {arr.dtype} does not match the manifest")
            # A plain ndarray view of the map: still file-backed, without np.memmap's per-slice overhead.
            return np.asarray(arr)

        tables: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for method in meta["methods"]:
            f_indptr, f_indices, f_scores = table_files(method)
            indptr = load_npy(f_indptr, np.int64, n_rows + 1)
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
            load_npy(ITEM_WEIGHT, np.float32, n_items) if "item_weight" in meta else None,
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
        seed_items: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Top-k items by Σ_seed weight · sim(seed, item) > 0; seeds, `exclude` and items outside `allowed`
        (boolean mask over ordinals) never appear. Ties go to the lower ordinal. `seed_items`: the
        seeds as item ordinals, where seeds are keyed otherwise (a shard's global ordinals)."""
        seed_ords = np.fromiter((s[0] for s in seeds), dtype=np.int64, count=len(seeds))
        seed_w = np.fromiter((s[1] for s in seeds), dtype=np.float64, count=len(seeds))
        items, agg = self.expand_arrays(
            method, seed_ords, seed_w, k, exclude=exclude, allowed=allowed, seed_items=seed_items
        )
        return list(zip(items.tolist(), agg.tolist(), strict=True))

    def expand_arrays(
        self,
        method: str,
        seed_ords: np.ndarray,
        seed_w: np.ndarray,
        k: int,
        *,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
        seed_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`expand` with the seeds (keys, weights) and the answer (items int64, scores float64, best
        first) as arrays."""
        indptr, indices, scores = self._table(method)
        none = np.zeros(0, np.int64), np.zeros(0)
        if k <= 0 or not len(seed_ords):
            return none
        if allowed is not None and allowed.shape != (self.num_items,):
            raise ValueError(f"allowed must be a boolean mask of shape ({self.num_items},)")
        seed_ords = np.asarray(seed_ords, dtype=np.int64)
        seed_w = np.asarray(seed_w, dtype=np.float64)
        pos, lengths = self._gather(indptr, seed_ords)
        if not len(pos):
            return none
        cand, inverse = np.unique(indices[pos], return_inverse=True)
        agg = np.bincount(inverse, weights=scores[pos] * np.repeat(seed_w, lengths), minlength=len(cand))
        keep = ~in_sorted(cand, seed_ords if seed_items is None else np.asarray(seed_items))
        if exclude:
            keep &= ~in_sorted(cand, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        if allowed is not None:
            keep &= allowed[cand]
        # An item the seeds speak against on balance (EASE's weights can be negative) is not recalled.
        keep &= agg > 0
        cand, agg = cand[keep], agg[keep]
        top = np.lexsort((cand, -agg))[:k]
        return cand[top].astype(np.int64), agg[top]

    def _gather(self, indptr: np.ndarray, seed_ords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (non-empty) seed's neighbour slice in one fancy-index read instead of a Python loop:
        the table positions, seed after seed, and each seed's neighbour count."""
        if seed_ords.min() < 0 or seed_ords.max() >= self.num_rows:
            raise IndexError(f"a seed ordinal is outside 0..{self.num_rows - 1}")
        starts = indptr[seed_ords]
        lengths = indptr[seed_ords + 1] - starts
        total = int(lengths.sum())
        offsets = np.cumsum(lengths) - lengths
        return np.repeat(starts - offsets, lengths) + np.arange(total), lengths

    def affinity(
        self, method: str, seed_ords: np.ndarray, weights: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        """The score `expand` ranks by, for given items: Σ_seed w · sim(seed, item), once per row of
        `weights` (m × len(seed_ords): several weightings of the same seeds share one gather).
        `items`: ordinals of this index's items (-1 or past them: none, scored 0). Returns (m, len(items))."""
        return self.affinities((method,), seed_ords, weights, items)[method]

    def affinities(
        self, methods: Sequence[str], seed_ords: np.ndarray, weights: np.ndarray, items: np.ndarray
    ) -> dict[str, np.ndarray]:
        """`affinity` under each of `methods`, the items' lookup built once for all of them."""
        tables = {method: self._table(method) for method in methods}
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        seed_ords = np.asarray(seed_ords, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if w.shape[1] != len(seed_ords):
            raise ValueError(f"weights has {w.shape[1]} columns for {len(seed_ords)} seeds")
        out = {method: np.zeros((w.shape[0], len(items))) for method in methods}
        if not len(seed_ords) or not len(items):
            return out
        # Only the neighbours that are asked-for items count: a dense item → slot map finds them in one
        # gather (a binary search per neighbour was ~80% of the cost with a few hundred seeds).
        distinct, inverse = np.unique(items, return_inverse=True)
        valid = (distinct >= 0) & (distinct < self.num_items)
        slot_of = np.full(self.num_items, -1, dtype=np.int32)
        slot_of[distinct[valid]] = np.flatnonzero(valid)
        for method, (indptr, indices, scores) in tables.items():
            pos, lengths = self._gather(indptr, seed_ords)
            slot = slot_of[indices[pos]]
            hits = np.flatnonzero(slot >= 0)
            if not len(hits):
                continue
            # Each hit's seed: the first seed whose neighbour slices end past it.
            seed = np.searchsorted(np.cumsum(lengths), hits, side="right")
            sim = scores[pos[hits]].astype(np.float64)
            slot = slot[hits]
            for j, row in enumerate(w):
                per = np.bincount(slot, weights=sim * row[seed], minlength=len(distinct))
                out[method][j] = per[inverse]
        return out

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
        items, pop = self.popular_arrays(k, allowed)
        return list(zip(items.tolist(), pop.tolist(), strict=True))

    def popular_arrays(self, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`popular` as arrays: (items int64, popularity float64), most popular first."""
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0)
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
        top = top.astype(np.int64)
        return top, self.popularity[top].astype(np.float64)


# --------------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------------
