"""Items searched by their best passage: a vector index over passages, answering over items.

A long item (an abstract, an article) is poorly represented by one vector: the encoder truncates it (MiniLM
at 256 tokens) and averages whatever it keeps, while a query usually matches one or two of its sentences.
The indexer can encode each long item's sentence windows too (`common.passages`); this index holds every
item's own vector plus those windows, each row owned by its item, and scores an item by its **best row**
(max-pooling, like a nested kNN with score mode `max`).

Rows ``0..N-1`` are the items' own vectors (``owner[i] == i``), rows ``N..`` the windows. A search asks the
inner index for more rows than items wanted, keeps each item's first (= best) row, and asks again with more
rows (`ROWS_PER_ITEM`, `GROWTH`) until ``k`` distinct items are found or every allowed row has been seen. With an exact inner search
the answer is exact: an item missing from the top ``r`` rows scores below the ``r``-th row, so below every
item found. The filter contract of `base` holds, over items: ``allowed`` is a mask over item ordinals
(each row inherits its owner's flag).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from common.fsutil import atomic_write
from common.index.vectors.base import (
    GpuMode,
    SearchParams,
    VectorIndex,
    as_mask,
    as_queries,
    check_k,
    check_meta,
    empty_result,
    manifest_entry,
)
from common.index.vectors.kinds import build_vector_index, load_flat_index

OWNER_FILE = "owner.i32.npy"
#: Rows first asked for per item wanted, at most (fewer when the index has fewer rows an item); then 1.5×
#: more while too few distinct items come back. On SciFact (8.7 rows an item, k = 100) 400 rows give
#: 100 distinct items for 57% of the claims, 600 for 94%: measured cheapest of 400/500/600/800 first
#: fetches with 1.5× or 2× growth (hnswlib at ef = rows: 0.60 ms for 400 rows, 1.13 ms for 800).
ROWS_PER_ITEM = 4
GROWTH = 1.5


class PassageIndex:
    kind: ClassVar[str] = "passages"

    def __init__(self, inner: VectorIndex, owner: np.ndarray, items: int) -> None:
        owner = np.asarray(owner)
        if owner.ndim != 1 or owner.shape[0] != inner.count:
            raise ValueError(f"owner has shape {owner.shape}, the passage index {inner.count} rows")
        if items <= 0 or owner.shape[0] < items or not np.array_equal(owner[:items], np.arange(items)):
            raise ValueError(f"the first {items} passage rows must be the items' own vectors, in order")
        if len(owner) and (owner.min() < 0 or owner.max() >= items):
            raise ValueError(f"passage owners must be item ordinals 0..{items - 1}")
        self.inner = inner
        self.owner = owner.astype(np.int64, copy=False)
        self.dim = inner.dim
        self.count = items
        self.rows = inner.count
        self.device = inner.device
        self._rows_per_item = min(float(ROWS_PER_ITEM), self.rows / items)

    def first_fetch(self, k: int) -> int:
        """Rows asked of the inner index first for ``k`` items."""
        return max(k, math.ceil(k * self._rows_per_item))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by their best row: (item ordinals (nq, k), scores (nq, k)), padded with -1 / -inf."""
        q = as_queries(queries, self.dim)
        check_k(k)
        k = int(k)
        ids, scores = empty_result(q.shape[0], k)
        if allowed is None:
            row_mask, items_allowed, rows_allowed = None, self.count, self.rows
        else:
            mask = as_mask(allowed, self.count)
            row_mask = mask[self.owner]
            items_allowed = int(np.count_nonzero(mask))
            rows_allowed = int(np.count_nonzero(row_mask))
        want = min(k, items_allowed)
        if want == 0:
            return ids, scores
        for i in range(q.shape[0]):
            fetch = min(rows_allowed, self.first_fetch(k))
            while True:
                rows, row_scores = self.inner.search(q[i : i + 1], fetch, allowed=row_mask, params=params)
                found = rows[0] >= 0
                owners = self.owner[rows[0][found]]
                # np.unique's first index is each item's best row: the rows come best first.
                uniq, first = np.unique(owners, return_index=True)
                if len(uniq) >= want or fetch >= rows_allowed:
                    break
                fetch = min(rows_allowed, math.ceil(fetch * GROWTH))
            order = np.sort(first)[:k]
            ids[i, : len(order)] = owners[order]
            scores[i, : len(order)] = row_scores[0][found][order]
        return ids, scores

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the inner index and the owner array into ``directory``; return the manifest entry."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        inner = self.inner.save(directory)
        path = directory / OWNER_FILE
        if not path.exists():  # shared by every backend's entry, like the raw matrix
            buf = io.BytesIO()
            np.save(buf, self.owner.astype(np.int32))
            atomic_write(path, buf.getvalue())
        entry = manifest_entry(self, {**inner["files"], "owner": OWNER_FILE}, {})
        return {**entry, "rows": self.rows, "inner": inner}

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto") -> Self:
        check_meta(meta, cls.kind)
        directory = Path(directory)
        inner = load_flat_index(directory, meta["inner"], mmap=mmap, use_gpu=use_gpu)
        owner = np.load(directory / meta["files"]["owner"], mmap_mode="r" if mmap else None)
        if owner.shape != (int(meta["rows"]),) or inner.count != int(meta["rows"]):
            raise ValueError(
                f"{directory}: {owner.shape[0]} owners and {inner.count} rows, manifest says {meta['rows']}"
            )
        return cls(inner, np.asarray(owner), int(meta["count"]))


def build_passage_index(
    kind: str,
    item_vectors: np.ndarray,
    passage_vectors: np.ndarray,
    passage_owner: np.ndarray,
    params: Mapping[str, Any] | None = None,
    *,
    progress: bool = False,
) -> PassageIndex:
    """A ``kind`` index over the items' own vectors followed by their passages (``passage_owner[j]`` is
    passage j's item ordinal)."""
    n = item_vectors.shape[0]
    if passage_vectors.shape[0] != passage_owner.shape[0]:
        raise ValueError(f"{passage_vectors.shape[0]} passage vectors, {passage_owner.shape[0]} owners")
    rows = np.concatenate([item_vectors, passage_vectors]).astype(np.float32, copy=False)
    owner = np.concatenate([np.arange(n), np.asarray(passage_owner, dtype=np.int64)])
    inner = build_vector_index(kind, rows, params, progress=progress)  # type: ignore[arg-type]
    return PassageIndex(inner, owner, n)
