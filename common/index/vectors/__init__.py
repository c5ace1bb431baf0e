"""Vector indexes: one module per backend behind one Protocol (`base.VectorIndex`).

- `base`        the contract (Protocol, SearchParams, filtered-search rules) and the shared file layout
- `exact`       brute force: ground truth, the selective-filter path, and `ExactIndex`
- `approximate` the search skeleton the approximate backends share (exact-or-ANN decision, padding)
- `hnsw`        hnswlib HNSW
- `ivf`         faiss IVF-Flat / IVF-PQ, with `ivf_gpu` (its GPU copy) beside it
- `kinds`       build / open a single-level index by kind
- `passages`    items scored by their best passage (max-pooled rows of an inner index of either kind)

Both the indexer (build) and the retriever (load, search) use this package; the snapshot manifest entry
written by `save` is what `load_vector_index` reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.index.vectors.base import (
    FORMAT_VERSION,
    HNSW_EXACT_THRESHOLD,
    IVF_EXACT_THRESHOLD,
    VECTORS_FILE,
    GpuMode,
    IndexKind,
    SearchParams,
    VectorIndex,
)
from common.index.vectors.exact import ExactIndex, exact_search
from common.index.vectors.hnsw import HnswIndex
from common.index.vectors.ivf import FaissIvfIndex, default_nlist
from common.index.vectors.kinds import build_vector_index, load_flat_index
from common.index.vectors.passages import PassageIndex, build_passage_index


def load_vector_index(
    directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto"
) -> VectorIndex:
    """Open the index a snapshot manifest entry (``meta``, as returned by ``save``) describes."""
    if meta.get("kind") == PassageIndex.kind:
        return PassageIndex.load(Path(directory), meta, mmap=mmap, use_gpu=use_gpu)
    return load_flat_index(directory, meta, mmap=mmap, use_gpu=use_gpu)


__all__ = [
    "FORMAT_VERSION",
    "HNSW_EXACT_THRESHOLD",
    "IVF_EXACT_THRESHOLD",
    "VECTORS_FILE",
    "ExactIndex",
    "FaissIvfIndex",
    "GpuMode",
    "HnswIndex",
    "IndexKind",
    "PassageIndex",
    "SearchParams",
    "VectorIndex",
    "build_passage_index",
    "build_vector_index",
    "default_nlist",
    "exact_search",
    "load_vector_index",
]
