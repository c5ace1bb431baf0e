"""Vector index backends for the ANN recall branch: hnswlib HNSW and faiss IVF.

Items of a snapshot are addressed by dense ordinals ``0..N-1``; vectors are float32, L2-normalised, and the
similarity is the inner product (higher is better).  Every backend keeps a reference to the raw float32
matrix (``vectors.f32.npy`` in the snapshot directory, memory-mapped when loaded with ``mmap=True``)
because a request filter that lets only a few items through is answered exactly and cheaply by brute
force over those items, while the graph/IVF structures answer it slowly or with poor recall.

Filtered search contract (``allowed`` is a boolean mask over ordinals):

* a disallowed ordinal is never returned;
* when at least ``k`` items are allowed, ``k`` results are returned (the ANN paths escalate and finally
  fall back to exact search rather than return fewer);
* when ``<= exact_threshold`` items are allowed, the result is the exact top-k over the allowed set.

Thread-safety: ``search`` may be called from several threads at once (both libraries release the GIL).
The one shared mutable knob is hnswlib's index-global ``ef``; see ``HnswIndex._set_ef``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["hnsw", "ivf"]
GpuMode = Literal["auto", "never", "always"]

VECTORS_FILE = "vectors.f32.npy"
FORMAT_VERSION = 1

# A filtered search that lets at most this many items through skips the index and brute-forces the allowed
# rows: exact, and cheaper there.  Chosen from `bench/ann_bench.py --synthetic 100000,128 --filter-sweep`
# (SYNTHETIC clustered data, 2 shared cores, one thread, k=10, 400 single queries, p50 us; "uniform" = a
# random subset is allowed, "corr." = the allowed items lie along one direction of the embedding space,
# like a language or region filter -- the hard case for filtered ANN):
#   allowed rows (of 100k)       1000   2000   3000   4000   5000   7000  10000  20000
#   brute force over them         104    267    436    524    794   1018   1308   2209
#   hnsw over-fetch, uniform     2421   1469   1313    884   1104    553    651    484   recall >= .98
#   hnsw over-fetch, corr.       3177   2325   4564   3507   2756   2417   1622    649   recall >= .99
#   ivf-flat + selector, unif.    300    312    326    299    440    305    370    430   recall 1.00
#   ivf-flat + selector, corr.    498    380    408    334    357    419    464    457
#     ... its recall             .935   .927   .965   .946   .957   .985   .985   .994
# HNSW: brute force stays cheaper up to ~6k (uniform) / ~10k (correlated) allowed rows -> 8000.
# IVF: brute force is cheaper only up to ~2.5k, but below ~5k allowed rows a correlated filter pulls IVF
# recall under 0.95 -> 5000 (paying up to ~2x the IVF latency between 2.5k and 5k, for exact results).
# Brute force costs ~0.1 us per allowed row (random row reads from a 51 MB matrix), HNSW's cost grows
# with k / selectivity and IVF's barely moves, so the crossover shifts with N (for HNSW roughly with
# sqrt(N)): re-run the sweep for catalogues far from 100k items.
HNSW_EXACT_THRESHOLD = 8000
IVF_EXACT_THRESHOLD = 5000

# Query rows x candidate rows per score block in brute force (float32): bounds its scratch memory at 64 MiB.
_EXACT_BLOCK_ELEMS = 16 * 1024 * 1024
# Up to this many (query, allowed row) pairs, filtered brute force uses faiss's in-place scorer (see
# _exact_topk); beyond it one BLAS matmul over the gathered rows wins.
_BY_IDX_MAX_WORK = 1 << 20
# hnswlib/faiss add in chunks so a progress bar can advance; large enough not to cost parallelism.
_ADD_CHUNK = 16_384
_FLOAT32 = np.dtype(np.float32)
_INT64 = np.dtype(np.int64)
# GPU IVF searches select at most this many items per query (nprobe and k); faiss-gpu without cuVS.
_GPU_MAX_SELECTION = 2048


@dataclass(frozen=True, slots=True)
class SearchParams:
    """Per-request overrides of a backend's search-time defaults (None keeps the index default).

    ``ef`` applies to HNSW, ``nprobe`` to IVF; the other is ignored so one request shape serves both.
    ``exact_threshold`` overrides the allowed-count under which filtered searches go exact (0 forces the
    ANN path, which benchmarks use to measure it).
    """

    ef: int | None = None
    nprobe: int | None = None
    exact_threshold: int | None = None

    def __post_init__(self) -> None:
        for name in ("ef", "nprobe"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"SearchParams.{name} must be a positive int, got {value!r}")
        if self.exact_threshold is not None and self.exact_threshold < 0:
            raise ValueError(f"SearchParams.exact_threshold must be >= 0, got {self.exact_threshold!r}")


@runtime_checkable
class VectorIndex(Protocol):
    """What the recall branch needs from a vector index, whatever the library behind it."""

    # Read-only properties, so that class-level constants and plain instance attributes both satisfy them.
    @property
    def kind(self) -> str:
        """ "hnsw" or "ivf": which loader reads this index back."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    @property
    def count(self) -> int:
        """Number of items N; valid ordinals are 0..N-1."""
        ...

    @property
    def device(self) -> str:
        """Where unfiltered searches run: "cpu" or "gpu"."""
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (ordinals int64 (nq, k), scores float32 (nq, k)), padded with -1 / -inf."""
        ...

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the index files into ``directory``; return the manifest entry needed to load them."""
        ...

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> Self:
        """Open an index written by ``save`` (``meta`` is what ``save`` returned)."""
        ...


# --------------------------------------------------------------------------------------------------------
# validation and brute force
# --------------------------------------------------------------------------------------------------------


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    # Called on every request: the common case (C-contiguous float32 2-D) must cost next to nothing.
    if not isinstance(queries, np.ndarray):
        raise ValueError(f"queries must be a numpy array, got {type(queries).__name__}")
    if queries.ndim == 1:
        queries = queries[None, :]
    elif queries.ndim != 2:
        raise ValueError(f"queries must have shape (nq, {dim}) or ({dim},), got {queries.shape}")
    if queries.shape[1] != dim:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {dim}")
    if queries.dtype is not _FLOAT32 or not queries.flags.c_contiguous:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
    return queries


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _as_mask(allowed: np.ndarray, count: int) -> np.ndarray:
    # Only a boolean mask is accepted: an int array of ordinals would otherwise be read as 0/1 flags.
    if not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_:
        got = allowed.dtype if isinstance(allowed, np.ndarray) else type(allowed).__name__
        raise ValueError(f"allowed must be a boolean numpy mask of length {count}, got {got}")
    if allowed.shape != (count,):
        raise ValueError(f"allowed mask has shape {allowed.shape}, expected ({count},) (one flag per item)")
    return allowed


def _empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), -np.inf, dtype=np.float32)


@functools.cache
def _faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k over ``vectors`` (or only over ``rows`` of it); inputs already validated."""
    nq = queries.shape[0]
    m = vectors.shape[0] if rows is None else rows.shape[0]
    ids, scores = _empty_result(nq, k)
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
    q = _as_queries(queries, vectors.shape[1])
    _check_k(k)
    if allowed is None:
        return _exact_topk(vectors, q, int(k), None)
    mask = _as_mask(allowed, vectors.shape[0])
    return _exact_topk(vectors, q, int(k), np.flatnonzero(mask))


def _check_build_vectors(vectors: np.ndarray) -> np.ndarray:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2:
        raise ValueError("vectors must be a 2-D numpy array (N, d)")
    n, d = vectors.shape
    if n == 0 or d == 0:
        raise ValueError(f"cannot build a vector index from an empty matrix {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or inf")
    # The inner product is only a cosine on unit vectors; a forgotten normalisation silently skews ranking.
    probe = vectors[:: max(1, n // 1000)]
    norms = np.linalg.norm(probe, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        log.warning("vectors are not L2-normalised (sampled norms %.3f..%.3f)", norms.min(), norms.max())
    return vectors


# --------------------------------------------------------------------------------------------------------
# snapshot files
# --------------------------------------------------------------------------------------------------------


def _save_vectors(directory: Path, vectors: np.ndarray) -> str:
    """Store the raw matrix once per snapshot directory; both backends share the file."""
    path = directory / VECTORS_FILE
    if path.exists():
        # Already written (by the other backend, or this index was loaded from here): never rewrite a file
        # that may be memory-mapped right now.
        existing = np.load(path, mmap_mode="r")
        if existing.shape != vectors.shape or existing.dtype != np.float32:
            raise ValueError(
                f"{path} holds {existing.shape} {existing.dtype}, not this index's {vectors.shape} float32"
            )
        return VECTORS_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    os.replace(tmp, path)
    return VECTORS_FILE


def _load_vectors(directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> np.ndarray:
    path = directory / meta["files"]["vectors"]
    vectors = np.load(path, mmap_mode="r" if mmap else None)
    expected = (int(meta["count"]), int(meta["dim"]))
    if vectors.shape != expected or vectors.dtype != np.float32:
        raise ValueError(f"{path} holds {vectors.shape} {vectors.dtype}, manifest says {expected} float32")
    return vectors


def _check_meta(meta: Mapping[str, Any], kind: str) -> None:
    if meta.get("kind") != kind:
        raise ValueError(f"manifest entry is for a {meta.get('kind')!r} index, not {kind!r}")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported vector index format {meta.get('format')!r}, expected {FORMAT_VERSION}")


def _library_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _chunks(n: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, unit="vec")
    try:
        for start in range(0, n, _ADD_CHUNK):
            stop = min(n, start + _ADD_CHUNK)
            yield start, stop
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------------------------
# shared search skeleton
# --------------------------------------------------------------------------------------------------------


class _IndexBase:
    """Validation, the exact/ANN decision for filters, and padding -- common to every backend."""

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
        q = _as_queries(queries, self.dim)
        _check_k(k)
        k = int(k)
        if q.shape[0] == 0:
            return _empty_result(0, k)
        if allowed is None:
            return self._search_ann(q, k, params)
        mask = _as_mask(allowed, self.count)
        n_allowed = int(np.count_nonzero(mask))
        if n_allowed == 0:
            return _empty_result(q.shape[0], k)
        if n_allowed == self.count:
            return self._search_ann(q, k, params)
        threshold = self.exact_threshold
        if params is not None and params.exact_threshold is not None:
            threshold = params.exact_threshold
        if n_allowed <= max(threshold, k):
            return _exact_topk(self._vectors, q, k, np.flatnonzero(mask))
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
            ids[rows], scores[rows] = _exact_topk(self._vectors, q[rows], k, np.flatnonzero(mask))


# --------------------------------------------------------------------------------------------------------
# hnswlib
# --------------------------------------------------------------------------------------------------------


class HnswIndex(_IndexBase):
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

        vectors = _check_build_vectors(vectors)
        n, d = vectors.shape
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=ef_construction, M=M, random_seed=seed)
        started = time.perf_counter()
        for start, stop in _chunks(n, progress, "hnsw"):
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
        return labels.view(_INT64), 1.0 - dists

    def _search_ann(
        self, q: np.ndarray, k: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._set_ef(params.ef if params is not None and params.ef is not None else self.ef_search)
        kq = min(k, self.count)
        try:
            ids, scores = self._knn(q, kq)
        except RuntimeError:
            # hnswlib refuses when the graph walk finds fewer than k (k close to N): brute force is exact.
            return _exact_topk(self._vectors, q, k, None)
        if kq == k:
            return ids, scores
        out_ids, out_scores = _empty_result(q.shape[0], k)
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
        ids, scores = _empty_result(q.shape[0], k)
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
        vectors_file = _save_vectors(directory, self._vectors)
        tmp = directory / (self.INDEX_FILE + ".tmp")
        self._index.save_index(str(tmp))
        os.replace(tmp, directory / self.INDEX_FILE)
        return {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "metric": "ip",
            "dim": self.dim,
            "count": self.count,
            "files": {"index": self.INDEX_FILE, "vectors": vectors_file},
            "params": {
                "M": self.M,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
                "exact_threshold": self.exact_threshold,
                "overfetch_safety": self.overfetch_safety,
                "max_overfetch": self.max_overfetch,
            },
            "library": {"hnswlib": _library_version("hnswlib")},
        }

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> Self:
        """Open a saved index; ``mmap`` maps the raw matrix (hnswlib always reads its graph into RAM)."""
        import hnswlib

        directory = Path(directory)
        _check_meta(meta, cls.kind)
        vectors = _load_vectors(directory, meta, mmap=mmap)
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


# --------------------------------------------------------------------------------------------------------
# faiss IVF
# --------------------------------------------------------------------------------------------------------


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # faiss comes from the `cpu` or `gpu` extra, not the base dependencies
        raise ImportError("faiss is not installed: install quarry with the `cpu` or `gpu` extra") from exc
    return faiss


def default_nlist(n: int) -> int:
    """~4*sqrt(N) inverted lists, but at least 39 training points per list (faiss's k-means minimum)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39, 65_536))


def _default_pq_m(d: int) -> int:
    # ~4 dimensions per sub-quantizer: cheap lookup tables, and the flat refine stage restores precision.
    for m in range(max(1, d // 4), 0, -1):
        if d % m == 0:
            return m
    return 1


class FaissIvfIndex(_IndexBase):
    """faiss IVF (inner product): ``IndexIVFFlat``, or ``IndexIVFPQ`` + ``IndexRefineFlat`` re-ranking.

    Loaded with ``mmap=True`` the inverted lists (flat) or the refine vectors (pq) are memory-mapped
    read-only: snapshots are immutable, and adding to a mapped index aborts the process, so this class
    never adds after build.
    """

    kind: ClassVar[str] = "ivf"
    INDEX_FILE: ClassVar[str] = "ivf.faiss"

    def __init__(
        self,
        index: Any,
        vectors: np.ndarray,
        *,
        quantizer: Literal["flat", "pq"],
        nlist: int,
        nprobe: int,
        exact_threshold: int = IVF_EXACT_THRESHOLD,
        pq_m: int | None = None,
        refine_k_factor: float | None = None,
        filter_nprobe_exponent: float = 0.5,
        use_gpu: GpuMode = "auto",
    ) -> None:
        """Wrap a trained, filled faiss index whose ids are the ordinals of ``vectors``."""
        faiss = _faiss()
        if index.ntotal != vectors.shape[0] or index.d != vectors.shape[1]:
            raise ValueError(f"faiss index holds {index.ntotal} x {index.d}, vectors are {vectors.shape}")
        if use_gpu not in ("auto", "never", "always"):
            raise ValueError(f"use_gpu must be 'auto', 'never' or 'always', got {use_gpu!r}")
        self._index = index
        self._ivf = faiss.extract_index_ivf(index)
        self._vectors = vectors
        self.count, self.dim = (int(s) for s in vectors.shape)
        self.quantizer = quantizer
        self.nlist = nlist
        self.nprobe = min(nprobe, nlist)
        self.exact_threshold = exact_threshold
        self.pq_m = pq_m
        self.refine_k_factor = refine_k_factor
        # The defaults live on the index objects so that a default search passes no params at all.
        self._ivf.nprobe = self.nprobe
        if refine_k_factor is not None:
            index.k_factor = refine_k_factor
        self.filter_nprobe_exponent = filter_nprobe_exponent
        self._k_factor = 1 if refine_k_factor is None else refine_k_factor
        self._plain_params: dict[int, Any] = {}
        self._gpu_index: Any = None
        self._gpu_keepalive: tuple[Any, ...] = ()
        self._gpu_lock = threading.Lock()
        self.device = "cpu"
        self._maybe_move_to_gpu(use_gpu)

    # -- GPU ---------------------------------------------------------------------------------------------

    def _maybe_move_to_gpu(self, use_gpu: GpuMode) -> None:
        faiss = _faiss()
        if use_gpu == "never":
            log.info("faiss %s index: searching on CPU (use_gpu=never)", self.quantizer)
            return
        if not hasattr(faiss, "StandardGpuResources"):
            reason = "this faiss build has no GPU support (faiss-cpu installed)"
        elif faiss.get_num_gpus() == 0:
            reason = "no CUDA GPU visible"
        else:
            reason = ""
        if reason:
            if use_gpu == "always":
                raise RuntimeError(f"use_gpu=always but {reason}")
            log.info("faiss %s index: searching on CPU (%s)", self.quantizer, reason)
            return
        try:
            res = faiss.StandardGpuResources()
            if self.quantizer == "flat":
                gpu = gpu_ivf = faiss.index_cpu_to_gpu(res, 0, self._index)
                keep: tuple[Any, ...] = (res,)
            else:
                # The GPU cloner does not know IndexRefine: move the IVFPQ part and keep the flat refine
                # stage on the CPU (it re-ranks only k * k_factor candidates per query).
                base = faiss.index_cpu_to_gpu(res, 0, faiss.downcast_index(self._index.base_index))
                gpu = faiss.IndexRefine(base, self._index.refine_index)
                gpu.k_factor = self._index.k_factor
                keep = (res, base)
                gpu_ivf = base
            gpu_ivf.nprobe = min(self.nprobe, _GPU_MAX_SELECTION)
        except Exception as exc:
            if use_gpu == "always":
                raise RuntimeError(f"use_gpu=always but copying the index to the GPU failed: {exc}") from exc
            log.warning("faiss %s index: GPU copy failed (%s); searching on CPU", self.quantizer, exc)
            return
        self._gpu_index = gpu
        self._gpu_keepalive = keep
        self.device = "gpu"
        log.info(
            "faiss %s index: unfiltered searches on GPU 0 (of %d); filtered searches stay on the CPU copy",
            self.quantizer,
            faiss.get_num_gpus(),
        )

    # -- search ------------------------------------------------------------------------------------------

    @property
    def raw(self) -> Any:
        """The underlying CPU faiss index (benchmarks time it directly)."""
        return self._index

    def _params(self, nprobe: int, sel: Any = None) -> Any:
        faiss = _faiss()
        ivf_params = faiss.SearchParametersIVF(nprobe=nprobe) if sel is None else (
            faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))  # fmt: skip
        if self.quantizer == "pq":
            # The selector must reach the IVF scan; the refine stage only re-ranks what the scan kept.
            return faiss.IndexRefineSearchParameters(
                k_factor=self._index.k_factor, base_index_params=ivf_params
            )
        return ivf_params

    def _plain(self, nprobe: int) -> Any:
        # Parameter objects without a selector are immutable once built, so they are cached and shared
        # between threads (building one costs a few microseconds of SWIG per query).
        params = self._plain_params.get(nprobe)
        if params is None:
            params = self._plain_params[nprobe] = self._params(nprobe)
        return params

    @staticmethod
    def _fix_padding(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # faiss pads missing results with id -1 and -FLT_MAX; the contract says -inf.
        missing = ids < 0
        if missing.any():
            scores[missing] = -np.inf
        return ids, scores

    def _nprobe(self, params: SearchParams | None) -> int:
        nprobe = params.nprobe if params is not None and params.nprobe is not None else self.nprobe
        return min(nprobe, self.nlist)

    def _search_ann(
        self, q: np.ndarray, k: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        # The hot path of every unfiltered request: each numpy call costs ~1 us against a 20-200 us search,
        # so the common single-query case gets by with scalar checks (bench: wrapper vs raw faiss call).
        nprobe = self.nprobe if params is None or params.nprobe is None else min(params.nprobe, self.nlist)
        gpu = self._gpu_index
        if gpu is not None and nprobe <= _GPU_MAX_SELECTION and k * self._k_factor <= _GPU_MAX_SELECTION:
            # StandardGpuResources is not thread-safe: one search at a time on the GPU.
            with self._gpu_lock:
                scores, ids = gpu.search(q, k, params=self._plain(nprobe))
        else:
            plain = None if nprobe == self.nprobe else self._plain(nprobe)
            scores, ids = self._index.search(q, k, params=plain)
        kk = k if k <= self.count else self.count
        if kk == k and (ids[0, kk - 1] >= 0 if q.shape[0] == 1 else bool((ids[:, kk - 1] >= 0).all())):
            return ids, scores
        short = ids[:, kk - 1] < 0
        if short.any():
            # The probed lists held fewer than k items (large k or tiny lists): widen rather than pad.
            self._widen(q, kk, nprobe, None, None, np.flatnonzero(short), ids, scores)
        return self._fix_padding(ids, scores)

    def _search_filtered(
        self, q: np.ndarray, k: int, mask: np.ndarray, n_allowed: int, params: SearchParams | None
    ) -> tuple[np.ndarray, np.ndarray]:
        # Always on the CPU index: faiss-gpu IVF takes only nprobe from SearchParametersIVF and ignores
        # (older releases) or rejects the IDSelector, which would leak disallowed ordinals.
        faiss = _faiss()
        # The filtered k-th neighbour sits around unfiltered rank k / selectivity, further out than the
        # unfiltered k-th: probe more lists as the filter gets more selective, or recall drops.  Measured on
        # 100k x 128 (uniform filter, nprobe 32): exponent 0 gives recall .84/.91/.98 at 1%/2%/5% allowed,
        # 0.5 gives >= .998 at ~1.5x the latency, 1.0 gives 1.000 at ~3-4x.
        scale = (self.count / n_allowed) ** self.filter_nprobe_exponent
        nprobe = min(self.nlist, math.ceil(self._nprobe(params) * scale))
        kk = min(k, n_allowed)
        ids, scores = _empty_result(q.shape[0], k)
        # A bitmap costs N/8 bytes to build and O(1) per lookup; IDSelectorBatch would hash every allowed id.
        bitmap = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bitmap))
        self._widen(q, kk, nprobe, sel, mask, np.arange(q.shape[0]), ids, scores)
        del sel, bitmap  # the selector points into the bitmap: both live until the searches are done
        return ids, scores  # rows are either filled to kk by faiss or by brute force; the rest is -1/-inf

    def _widen(
        self,
        q: np.ndarray,
        kk: int,
        nprobe: int,
        sel: Any,
        mask: np.ndarray | None,
        pending: np.ndarray,
        ids: np.ndarray,
        scores: np.ndarray,
    ) -> None:
        """Search ``pending`` query rows on the CPU index, doubling nprobe until each has ``kk`` results.

        Probing all lists is an exhaustive scan, so only a refine/PQ oddity can leave a row short; such rows
        are answered by brute force.
        """
        while pending.size:
            found_scores, found = self._index.search(q[pending], kk, params=self._params(nprobe, sel))
            filled = found[:, kk - 1] >= 0
            rows = pending[filled]
            ids[rows, :kk] = found[filled]
            scores[rows, :kk] = found_scores[filled]
            pending = pending[~filled]
            if nprobe >= self.nlist:
                break
            nprobe = min(self.nlist, nprobe * 2)
        if pending.size:
            rows_allowed = None if mask is None else np.flatnonzero(mask)
            ids[pending], scores[pending] = _exact_topk(self._vectors, q[pending], ids.shape[1], rows_allowed)

    # -- build / persistence -----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        quantizer: Literal["flat", "pq"] = "flat",
        nlist: int | None = None,
        nprobe: int = 32,
        train_sample: int | None = None,
        pq_m: int | None = None,
        refine_k_factor: float = 8.0,
        filter_nprobe_exponent: float = 0.5,
        seed: int = 1234,
        exact_threshold: int = IVF_EXACT_THRESHOLD,
        use_gpu: GpuMode = "auto",
        progress: bool = False,
    ) -> FaissIvfIndex:
        """Train on a random sample (default 64 points per list) and add all rows (ordinal i = row i).

        ``quantizer="pq"`` scans compact PQ codes (~4 dims per byte) and re-ranks ``k * refine_k_factor``
        candidates exactly; it pays off for large catalogues where scanning float lists is memory-bound.
        """
        faiss = _faiss()
        vectors = _check_build_vectors(vectors)
        n, d = vectors.shape
        if quantizer not in ("flat", "pq"):
            raise ValueError(f"quantizer must be 'flat' or 'pq', got {quantizer!r}")
        nlist = default_nlist(n) if nlist is None else nlist
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in 1..{n}, got {nlist}")
        started = time.perf_counter()
        coarse = faiss.IndexFlatIP(d)
        if quantizer == "flat":
            ivf = faiss.IndexIVFFlat(coarse, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index = ivf
            pq_m = None
            refine: float | None = None
            min_train = nlist
        else:
            pq_m = _default_pq_m(d) if pq_m is None else pq_m
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
            ivf = faiss.IndexIVFPQ(coarse, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
            # Polysemous training only serves Hamming pre-filtering, which we do not use; it costs minutes.
            ivf.do_polysemous_training = False
            # faiss's k-means is oddly slow on 4-d sub-vectors (~1 s per sub-quantizer at 64k points); 64
            # points per code and 10 iterations cut PQ training ~3x, and the refine stage absorbs the loss.
            ivf.pq.cp.max_points_per_centroid = 64
            ivf.pq.cp.niter = 10
            index = faiss.IndexRefineFlat(ivf)
            index.k_factor = refine = float(refine_k_factor)
            min_train = max(nlist, 256)
        ivf.cp.spherical = True  # unit-norm centroids: the coarse assignment is then a cosine, like the data
        ivf.cp.seed = seed
        if n < min_train:
            raise ValueError(f"{quantizer} IVF needs at least {min_train} vectors to train, got {n}")
        n_train = min(n, train_sample if train_sample is not None else max(64 * nlist, 256 * 39))
        rng = np.random.default_rng(seed)
        sample = vectors if n_train >= n else vectors[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(sample)
        for start, stop in _chunks(n, progress, f"ivf-{quantizer}"):
            index.add(vectors[start:stop])
        log.info("built faiss ivf-%s index %d x %d (nlist=%d) in %.1fs", quantizer, n, d, nlist,
                 time.perf_counter() - started)  # fmt: skip
        return cls(
            index,
            vectors,
            quantizer=quantizer,
            nlist=nlist,
            nprobe=nprobe,
            exact_threshold=exact_threshold,
            pq_m=pq_m,
            refine_k_factor=refine,
            filter_nprobe_exponent=filter_nprobe_exponent,
            use_gpu=use_gpu,
        )

    def save(self, directory: Path) -> dict[str, Any]:
        """Write ``ivf.faiss`` (+ the shared raw matrix) and return the manifest entry."""
        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vectors_file = _save_vectors(directory, self._vectors)
        # Write-then-rename: this index may itself be mapped from the file being replaced.
        tmp = directory / (self.INDEX_FILE + ".tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, directory / self.INDEX_FILE)
        return {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "metric": "ip",
            "dim": self.dim,
            "count": self.count,
            "files": {"index": self.INDEX_FILE, "vectors": vectors_file},
            "params": {
                "quantizer": self.quantizer,
                "nlist": self.nlist,
                "nprobe": self.nprobe,
                "exact_threshold": self.exact_threshold,
                "pq_m": self.pq_m,
                "refine_k_factor": self.refine_k_factor,
                "filter_nprobe_exponent": self.filter_nprobe_exponent,
            },
            "library": {"faiss": str(faiss.__version__)},
        }

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto") -> Self:
        """Open a saved index; with ``mmap`` the bulk data is mapped read-only and loading is instant."""
        faiss = _faiss()
        directory = Path(directory)
        _check_meta(meta, cls.kind)
        p = meta["params"]
        vectors = _load_vectors(directory, meta, mmap=mmap)
        flags = 0
        if mmap:
            # IVFFlat: map the inverted lists.  IVFPQ+refine: the bulk is the refine stage's flat vectors
            # (IO_FLAG_MMAP_IFC); faiss 1.15 refuses both flags together, and the PQ lists are small anyway.
            bulk = faiss.IO_FLAG_MMAP if p["quantizer"] == "flat" else faiss.IO_FLAG_MMAP_IFC
            flags = bulk | faiss.IO_FLAG_READ_ONLY
        index = faiss.read_index(str(directory / meta["files"]["index"]), flags)
        return cls(
            index,
            vectors,
            quantizer=p["quantizer"],
            nlist=int(p["nlist"]),
            nprobe=int(p["nprobe"]),
            exact_threshold=int(p["exact_threshold"]),
            pq_m=p.get("pq_m"),
            refine_k_factor=p.get("refine_k_factor"),
            filter_nprobe_exponent=float(p["filter_nprobe_exponent"]),
            use_gpu=use_gpu,
        )


# --------------------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., _IndexBase]] = {"hnsw": HnswIndex.build, "ivf": FaissIvfIndex.build}


def build_vector_index(
    kind: IndexKind, vectors: np.ndarray, params: Mapping[str, Any] | None = None, *, progress: bool = False
) -> VectorIndex:
    """Build a ``kind`` index over ``vectors``; ``params`` are the backend's ``build`` keyword arguments.

    Unknown parameter names raise ``ValueError`` rather than being ignored, so a typo in a config file does
    not silently build with defaults.
    """
    try:
        builder = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown vector index kind {kind!r} (expected {sorted(_BUILDERS)})") from None

    allowed = set(inspect.signature(builder).parameters) - {"vectors", "progress"}
    unknown = set(params or {}) - allowed
    if unknown:
        raise ValueError(f"unknown {kind} index parameter(s) {sorted(unknown)}; known: {sorted(allowed)}")
    index = builder(vectors, progress=progress, **dict(params or {}))
    return index  # type: ignore[return-value]


def load_vector_index(
    directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto"
) -> VectorIndex:
    """Open the index a snapshot manifest entry (``meta``, as returned by ``save``) describes."""
    kind = meta.get("kind")
    if kind == "ivf":
        return FaissIvfIndex.load(Path(directory), meta, mmap=mmap, use_gpu=use_gpu)
    if kind == "hnsw":
        return HnswIndex.load(Path(directory), meta, mmap=mmap)
    raise ValueError(f"unknown vector index kind {kind!r} in manifest (expected 'hnsw' or 'ivf')")
