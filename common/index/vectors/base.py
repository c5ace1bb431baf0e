"""The vector-index contract shared by every backend, and the helpers they all use.

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
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["hnsw", "ivf", "exact"]
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
_ADD_CHUNK = 16_384
FLOAT32 = np.dtype(np.float32)
INT64 = np.dtype(np.int64)


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
        """ "hnsw", "ivf" or "exact": which loader reads this index back."""
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
# validation
# --------------------------------------------------------------------------------------------------------


def as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    # Called on every request: the common case (C-contiguous float32 2-D) must cost next to nothing.
    if not isinstance(queries, np.ndarray):
        raise ValueError(f"queries must be a numpy array, got {type(queries).__name__}")
    if queries.ndim == 1:
        queries = queries[None, :]
    elif queries.ndim != 2:
        raise ValueError(f"queries must have shape (nq, {dim}) or ({dim},), got {queries.shape}")
    if queries.shape[1] != dim:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the index dimension {dim}")
    if queries.dtype is not FLOAT32 or not queries.flags.c_contiguous:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
    return queries


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")


def as_mask(allowed: np.ndarray, count: int) -> np.ndarray:
    # Only a boolean mask is accepted: an int array of ordinals would otherwise be read as 0/1 flags.
    if not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_:
        got = allowed.dtype if isinstance(allowed, np.ndarray) else type(allowed).__name__
        raise ValueError(f"allowed must be a boolean numpy mask of length {count}, got {got}")
    if allowed.shape != (count,):
        raise ValueError(f"allowed mask has shape {allowed.shape}, expected ({count},) (one flag per item)")
    return allowed


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), -np.inf, dtype=np.float32)


def check_build_vectors(vectors: np.ndarray) -> np.ndarray:
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


def save_vectors(directory: Path, vectors: np.ndarray) -> str:
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


def load_vectors(directory: Path, meta: Mapping[str, Any], *, mmap: bool) -> np.ndarray:
    path = directory / meta["files"]["vectors"]
    vectors = np.load(path, mmap_mode="r" if mmap else None)
    expected = (int(meta["count"]), int(meta["dim"]))
    if vectors.shape != expected or vectors.dtype != np.float32:
        raise ValueError(f"{path} holds {vectors.shape} {vectors.dtype}, manifest says {expected} float32")
    return vectors


def manifest_entry(
    index: VectorIndex,
    files: dict[str, str],
    params: dict[str, Any],
    library: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The snapshot manifest entry `save` returns and `check_meta` + the backend's `load` read back."""
    entry: dict[str, Any] = {
        "kind": index.kind,
        "format": FORMAT_VERSION,
        "metric": "ip",
        "dim": index.dim,
        "count": index.count,
        "files": files,
        "params": params,
    }
    if library is not None:
        entry["library"] = library
    return entry


def check_meta(meta: Mapping[str, Any], kind: str) -> None:
    if meta.get("kind") != kind:
        raise ValueError(f"manifest entry is for a {meta.get('kind')!r} index, not {kind!r}")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported vector index format {meta.get('format')!r}, expected {FORMAT_VERSION}")


def library_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_chunks(n: int, progress: bool, desc: str) -> Iterator[tuple[int, int]]:
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


def require_faiss() -> Any:
    """The faiss module, or an ImportError that says which extra installs it."""
    try:
        import faiss
    except ImportError as exc:  # faiss comes from the `cpu` or `gpu` extra, not the base dependencies
        raise ImportError("faiss is not installed: install quarry with the `cpu` or `gpu` extra") from exc
    return faiss
