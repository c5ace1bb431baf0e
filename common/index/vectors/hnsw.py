"""hnswlib HNSW backend (inner product).

The one shared mutable knob is hnswlib's index-global ``ef``; see ``HnswIndex._set_ef``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from common.index.vectors.approximate import ApproximateIndex
from common.index.vectors.base import (
    HNSW_EXACT_THRESHOLD,
    INT64,
    SearchParams,
    add_chunks,
    check_build_vectors,
    check_meta,
    empty_result,
    library_version,
    load_vectors,
    manifest_entry,
    save_vectors,
)
from common.index.vectors.exact import exact_topk

log = logging.getLogger(__name__)


class HnswIndex(ApproximateIndex):
    """hnswlib HNSW graph, inner-product space.

    hnswlib keeps its own in-RAM copy of the vectors and cannot memory-map its file, so ``mmap`` only
    applies to the shared raw matrix used for exact filtered search.
    """

    kind: ClassVar[str] = "hnsw"
    INDEX_FILE: ClassVar[str] = "hnsw.bin"

    def __init__(
        self,
        index: Any,
        vectors: np.ndarray,
        *,
        M: int,
        ef_construction: int,
        ef_search: int = 64,
        exact_threshold: int = HNSW_EXACT_THRESHOLD,
        overfetch_safety: float = 2.0,
        max_overfetch: int = 1024,
        num_threads: int = -1,
    ) -> None:
        """Wrap a built/loaded ``hnswlib.Index`` whose labels are the ordinals of ``vectors``.

        ``overfetch_safety``: a filtered search first asks hnswlib for ``k / selectivity * safety``
        neighbours, so that for filters uncorrelated with the query about ``safety * k`` of them pass; 2
        makes a second round rare for k >= 10.  ``max_overfetch``: beyond this many neighbours (hnswlib then
        runs at ef = that many) brute force over the allowed rows is cheaper, so the search goes exact.
        """
        if index.get_current_count() != vectors.shape[0] or index.dim != vectors.shape[1]:
            raise ValueError(
                f"hnsw index holds {index.get_current_count()} x {index.dim}, vectors are {vectors.shape}"
            )
        self._index = index
        self._vectors = vectors
        self.count, self.dim = (int(s) for s in vectors.shape)
        self.device = "cpu"
        self.M = M
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_threshold = exact_threshold
        self.overfetch_safety = overfetch_safety
        self.max_overfetch = max_overfetch
        self.num_threads = num_threads
        self._ef_lock = threading.Lock()
        self._ef = ef_search
        index.set_ef(ef_search)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        M: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        num_threads: int = -1,
        seed: int = 100,
        exact_threshold: int = HNSW_EXACT_THRESHOLD,
        overfetch_safety: float = 2.0,
        max_overfetch: int = 1024,
        progress: bool = False,
    ) -> HnswIndex:
        """Build the graph over all rows of ``vectors`` (ordinal i = row i); the array is kept, not copied."""
        import hnswlib

        vectors = check_build_vectors(vectors)
        n, d = vectors.shape
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=ef_construction, M=M, random_seed=seed)
        started = time.perf_counter()
        for start, stop in add_chunks(n, progress, "hnsw"):
            index.add_items(vectors[start:stop], np.arange(start, stop), num_threads=num_threads)
        log.info("built hnsw index %d x %d (M=%d, efC=%d) in %.1fs", n, d, M, ef_construction,
                 time.perf_counter() - started)  # fmt: skip
        return cls(
            index,
            vectors,
            M=M,
            ef_construction=ef_construction,
            ef_search=ef_search,
            exact_threshold=exact_threshold,
            overfetch_safety=overfetch_safety,
            max_overfetch=max_overfetch,
            num_threads=num_threads,
        )

    @property
    def raw(self) -> Any:
        """The underlying ``hnswlib.Index`` (benchmarks time it directly)."""
        return self._index

    def _set_ef(self, ef: int) -> None:
        # hnswlib has no per-query ef: it is index-global state.  A request with a non-default ef therefore
        # briefly changes it for searches running concurrently in other threads too.  That only moves their
        # recall/latency (never which ordinals are allowed), so we do not serialise searches, which would
        # give up the GIL-free parallelism; the lock only keeps two writers consistent with ``_ef``.
        if ef != self._ef:
            with self._ef_lock:
                self._index.set_ef(ef)
                self._ef = ef

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # One query runs inline; a thread pool for a single query costs more than it saves.
        labels, dists = self._index.knn_query(q, k=k, num_threads=1 if q.shape[0] == 1 else self.num_threads)
        # hnswlib's "ip" distance is 1 - <x, q>; labels are uint64 ordinals < 2**63, so a view is exact.
        return labels.view(INT64), 1.0 - dists

    def _search_ann(
        self, q: np.ndarray, k: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._set_ef(params.ef if params is not None and params.ef is not None else self.ef_search)
        kq = min(k, self.count)
        try:
            ids, scores = self._knn(q, kq)
        except RuntimeError:
            # hnswlib refuses when the graph walk finds fewer than k (k close to N): brute force is exact.
            return exact_topk(self._vectors, q, k, None)
        if kq == k:
            return ids, scores
        out_ids, out_scores = empty_result(q.shape[0], k)
        out_ids[:, :kq], out_scores[:, :kq] = ids, scores
        return out_ids, out_scores

    def _search_filtered(
        self, q: np.ndarray, k: int, mask: np.ndarray, n_allowed: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        # hnswlib's filter= callback re-enters Python for every candidate (~10x slower at 10% selectivity);
        # instead over-fetch unfiltered neighbours, drop the disallowed ones, and double until k survive.
        # Note hnswlib searches with max(ef, fetch), so the over-fetch also raises the effective ef.
        self._set_ef(params.ef if params is not None and params.ef is not None else self.ef_search)
        kk = min(k, n_allowed)
        ids, scores = empty_result(q.shape[0], k)
        pending = np.arange(q.shape[0])
        fetch = min(self.count, math.ceil(kk * self.count / n_allowed * self.overfetch_safety))
        while pending.size and fetch <= self.max_overfetch:
            try:
                cand, cand_scores = self._knn(q[pending], fetch)
            except RuntimeError:
                break
            ok = mask[cand]
            found = ok.sum(axis=1)
            filled = found >= kk
            if filled.any():
                # Stable argsort of "not allowed" lists the allowed positions first, in distance order.
                pos = np.argsort(~ok[filled], axis=1, kind="stable")[:, :kk]
                rows = pending[filled]
                ids[rows, :kk] = np.take_along_axis(cand[filled], pos, axis=1)
                scores[rows, :kk] = np.take_along_axis(cand_scores[filled], pos, axis=1)
            pending = pending[~filled]
            if not pending.size or fetch >= self.count:
                break
            # A filter correlated with the query's neighbourhood passes fewer than the global rate: size the
            # next round from the rate actually seen by the worst row (at least double), so a hopeless case
            # goes straight to brute force instead of climbing through several ever-larger searches.
            worst = max(int(found[~filled].min()), 1)
            fetch = min(self.count, max(2 * fetch, math.ceil(fetch * kk * self.overfetch_safety / worst)))
        self._finish_with_exact(q, k, mask, pending, ids, scores)
        return ids, scores

    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``hnsw.bin`` (+ the shared raw matrix) and return the manifest entry."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vectors_file = save_vectors(directory, self._vectors)
        tmp = directory / (self.INDEX_FILE + ".tmp")
        self._index.save_index(str(tmp))
        os.replace(tmp, directory / self.INDEX_FILE)
        return manifest_entry(
            self,
            {"index": self.INDEX_FILE, "vectors": vectors_file},
            {
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
                "exact_threshold": self.exact_threshold,
                "overfetch_safety": self.overfetch_safety,
                "max_overfetch": self.max_overfetch,
            },
            {"hnswlib": library_version("hnswlib")},
        )

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> Self:
        """Open a saved index; ``mmap`` maps the raw matrix (hnswlib always reads its graph into RAM)."""
        import hnswlib

        directory = Path(directory)
        check_meta(meta, cls.kind)
        vectors = load_vectors(directory, meta, mmap=mmap)
        index = hnswlib.Index(space="ip", dim=int(meta["dim"]))
        index.load_index(str(directory / meta["files"]["index"]), max_elements=int(meta["count"]))
        p = meta["params"]
        return cls(
            index,
            vectors,
            M=int(p["M"]),
            ef_construction=int(p["ef_construction"]),
            ef_search=int(p["ef_search"]),
            exact_threshold=int(p["exact_threshold"]),
            overfetch_safety=float(p["overfetch_safety"]),
            max_overfetch=int(p["max_overfetch"]),
        )
