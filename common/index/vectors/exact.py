"""Exact (brute-force) inner-product search: the ground truth for recall, the path for very selective
filters inside the approximate backends, and a backend of its own (`ExactIndex`) for small catalogues."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from common.index.vectors.base import (
    SearchParams,
    as_mask,
    as_queries,
    check_build_vectors,
    check_k,
    check_meta,
    empty_result,
    load_vectors,
    manifest_entry,
    save_vectors,
)

# Query rows x candidate rows per score block in brute force (float32): bounds its scratch memory at 64 MiB.
_EXACT_BLOCK_ELEMS = 16 * 1024 * 1024
# Up to this many (query, allowed row) pairs, filtered brute force uses faiss's in-place scorer (see
# exact_topk); beyond it one BLAS matmul over the gathered rows wins.
_BY_IDX_MAX_WORK = 1 << 20


@functools.cache
def _faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k over ``vectors`` (or only over ``rows`` of it); inputs already validated."""
    nq = queries.shape[0]
    m = vectors.shape[0] if rows is None else rows.shape[0]
    ids, scores = empty_result(nq, k)
    kk = min(k, m)
    if kk == 0 or nq == 0:
        return ids, scores
    faiss = _faiss_or_none() if rows is not None and nq * m <= _BY_IDX_MAX_WORK else None
    if faiss is not None and vectors.dtype == np.float32 and vectors.flags.c_contiguous:
        # The filtered single-query case: faiss scores the allowed rows in place with SIMD and keeps a
        # k-heap, with no (m, d) gather copy and no BLAS thread pool.  Measured 2-4x faster than the numpy
        # path below for one query (whose multi-threaded OpenBLAS call is also erratic on a busy 2-core box).
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        vals = np.empty((nq, kk), dtype=np.float32)
        found = np.empty((nq, kk), dtype=np.int64)
        sp = faiss.swig_ptr
        faiss.knn_inner_products_by_idx(
            sp(queries), sp(vectors), sp(rows), vectors.shape[1], nq, vectors.shape[0], m, kk,
            sp(vals), sp(found), 0,
        )  # fmt: skip
        ids[:, :kk] = found
        scores[:, :kk] = vals
        return ids, scores
    sub = np.asarray(vectors if rows is None else vectors[rows])
    step = max(1, _EXACT_BLOCK_ELEMS // m)
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        block = queries[start:stop] @ sub.T
        if kk < m:
            # argpartition is O(m); only the kk survivors get sorted.
            top = np.argpartition(block, m - kk, axis=1)[:, m - kk :]
            top_scores = np.take_along_axis(block, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(m), block.shape)
            top_scores = block
        order = np.argsort(-top_scores, axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)
        ids[start:stop, :kk] = best if rows is None else rows[best]
        scores[start:stop, :kk] = np.take_along_axis(top_scores, order, axis=1)
    return ids, scores


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: (ordinals int64 (nq, k), scores float32 (nq, k)), padded -1 / -inf.

    The ground truth for recall measurements and the path for very selective filters.  Score blocks are
    bounded to ``_EXACT_BLOCK_ELEMS`` floats by batching the queries, so it works on a memory-mapped
    catalogue of any size.
    """
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise ValueError("vectors must be a 2-D numpy array (N, d)")
    q = as_queries(queries, vectors.shape[1])
    check_k(k)
    if allowed is None:
        return exact_topk(vectors, q, int(k), None)
    mask = as_mask(allowed, vectors.shape[0])
    return exact_topk(vectors, q, int(k), np.flatnonzero(mask))


class ExactIndex:
    """Brute force over the raw matrix: exact answers at O(N·d) per query.

    The right backend up to a few tens of thousands of items (no build time, no recall loss) and the
    reference the approximate backends are measured against.  ``params`` are accepted and ignored (there
    is nothing to tune), so one request shape serves every backend.
    """

    kind: ClassVar[str] = "exact"
    device: ClassVar[str] = "cpu"

    def __init__(self, vectors: np.ndarray) -> None:
        self._vectors = vectors
        self.count, self.dim = (int(s) for s in vectors.shape)

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors

    @classmethod
    def build(cls, vectors: np.ndarray, *, progress: bool = False) -> ExactIndex:
        return cls(check_build_vectors(vectors))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = as_queries(queries, self.dim)
        check_k(k)
        if q.shape[0] == 0:
            return empty_result(0, int(k))
        rows = None if allowed is None else np.flatnonzero(as_mask(allowed, self.count))
        return exact_topk(self._vectors, q, int(k), rows)

    def save(self, directory: Path) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return manifest_entry(self, {"vectors": save_vectors(directory, self._vectors)}, {})

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> Self:
        check_meta(meta, cls.kind)
        return cls(load_vectors(Path(directory), meta, mmap=mmap))
