"""Building and opening the single-level indexes (hnsw, ivf, exact) by kind; the package's
`load_vector_index` adds the passage index, which wraps one of these."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.index.vectors.base import GpuMode, IndexKind, VectorIndex
from common.index.vectors.exact import ExactIndex
from common.index.vectors.hnsw import HnswIndex
from common.index.vectors.ivf import FaissIvfIndex

_BUILDERS: dict[str, Callable[..., VectorIndex]] = {
    "hnsw": HnswIndex.build,
    "ivf": FaissIvfIndex.build,
    "exact": ExactIndex.build,
}


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
    return builder(vectors, progress=progress, **dict(params or {}))


def load_flat_index(
    directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto"
) -> VectorIndex:
    """Open the index a snapshot manifest entry (``meta``, as returned by ``save``) describes."""
    kind = meta.get("kind")
    if kind == "ivf":
        return FaissIvfIndex.load(Path(directory), meta, mmap=mmap, use_gpu=use_gpu)
    if kind == "hnsw":
        return HnswIndex.load(Path(directory), meta, mmap=mmap)
    if kind == "exact":
        return ExactIndex.load(Path(directory), meta, mmap=mmap)
    raise ValueError(
        f"unknown vector index kind {kind!r} in manifest (expected one of {sorted([*_BUILDERS, 'passages'])})"
    )
