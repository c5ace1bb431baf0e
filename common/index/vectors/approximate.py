"""The search skeleton shared by the approximate backends (HNSW, IVF): validation, the exact-or-ANN
decision for filtered searches, and padding. A backend supplies only its unfiltered and filtered paths."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from common.index.vectors.base import SearchParams, as_mask, as_queries, check_k, empty_result
from common.index.vectors.exact import exact_topk


class ApproximateIndex:
    """Validation, the exact/ANN decision for filters, and padding -- common to the approximate backends."""

    kind: ClassVar[str]
    dim: int
    count: int
    device: str
    exact_threshold: int
    _vectors: np.ndarray

    @property
    def vectors(self) -> np.ndarray:
        """The raw float32 (N, d) matrix (possibly memory-mapped, read-only)."""
        return self._vectors

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product; see the module docstring for the filter contract."""
        q = as_queries(queries, self.dim)
        check_k(k)
        k = int(k)
        if q.shape[0] == 0:
            return empty_result(0, k)
        if allowed is None:
            return self._search_ann(q, k, params)
        mask = as_mask(allowed, self.count)
        n_allowed = int(np.count_nonzero(mask))
        if n_allowed == 0:
            return empty_result(q.shape[0], k)
        if n_allowed == self.count:
            return self._search_ann(q, k, params)
        threshold = self.exact_threshold
        if params is not None and params.exact_threshold is not None:
            threshold = params.exact_threshold
        if n_allowed <= max(threshold, k):
            return exact_topk(self._vectors, q, k, np.flatnonzero(mask))
        return self._search_filtered(q, k, mask, n_allowed, params)

    def _search_ann(
        self, q: np.ndarray, k: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _search_filtered(
        self, q: np.ndarray, k: int, mask: np.ndarray, n_allowed: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _finish_with_exact(
        self,
        q: np.ndarray,
        k: int,
        mask: np.ndarray,
        rows: np.ndarray,
        ids: np.ndarray,
        scores: np.ndarray,
    ) -> None:
        """Answer the query ``rows`` the ANN path could not fill by brute force over the allowed set."""
        if rows.size:
            ids[rows], scores[rows] = exact_topk(self._vectors, q[rows], k, np.flatnonzero(mask))
