"""The GPU path of the faiss IVF backend: a GPU copy of a CPU IVF index for unfiltered searches.

Filtered searches always stay on the CPU index: faiss-gpu IVF takes only nprobe from SearchParametersIVF
and ignores (older releases) or rejects the IDSelector, which would leak disallowed ordinals.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from common.index.vectors.base import GpuMode, require_faiss

log = logging.getLogger(__name__)

#: GPU IVF searches select at most this many items per query (nprobe and k); faiss-gpu without cuVS.
GPU_MAX_SELECTION = 2048


@dataclass
class GpuIvf:
    """A GPU copy of an IVF index; `keepalive` holds the GPU resources and sub-indexes it points into."""

    index: Any
    keepalive: tuple[Any, ...]
    #: StandardGpuResources is not thread-safe: one search at a time on the GPU.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepts(self, nprobe: int, k_total: float) -> bool:
        """Whether a search probing `nprobe` lists for `k_total` candidates fits the GPU's selection limit."""
        return nprobe <= GPU_MAX_SELECTION and k_total <= GPU_MAX_SELECTION

    def search(self, q: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            scores, ids = self.index.search(q, k, params=params)
        return scores, ids


def gpu_unavailable_reason(faiss: Any) -> str:
    """Why this process cannot search on a GPU ('' when it can)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return "this faiss build has no GPU support (faiss-cpu installed)"
    if faiss.get_num_gpus() == 0:
        return "no CUDA GPU visible"
    return ""


def copy_to_gpu(
    cpu_index: Any, *, quantizer: Literal["flat", "pq"], nprobe: int, use_gpu: GpuMode
) -> GpuIvf | None:
    """The GPU copy `use_gpu` asks for, or None (CPU search); `always` raises when it cannot be made."""
    faiss = require_faiss()
    if use_gpu == "never":
        log.info("faiss %s index: searching on CPU (use_gpu=never)", quantizer)
        return None
    reason = gpu_unavailable_reason(faiss)
    if reason:
        if use_gpu == "always":
            raise RuntimeError(f"use_gpu=always but {reason}")
        log.info("faiss %s index: searching on CPU (%s)", quantizer, reason)
        return None
    try:
        res = faiss.StandardGpuResources()
        if quantizer == "flat":
            gpu = gpu_ivf = faiss.index_cpu_to_gpu(res, 0, cpu_index)
            keep: tuple[Any, ...] = (res,)
        else:
            # The GPU cloner does not know IndexRefine: move the IVFPQ part and keep the flat refine
            # stage on the CPU (it re-ranks only k * k_factor candidates per query).
            base = faiss.index_cpu_to_gpu(res, 0, faiss.downcast_index(cpu_index.base_index))
            gpu = faiss.IndexRefine(base, cpu_index.refine_index)
            gpu.k_factor = cpu_index.k_factor
            keep = (res, base)
            gpu_ivf = base
        gpu_ivf.nprobe = min(nprobe, GPU_MAX_SELECTION)
    except Exception as exc:
        if use_gpu == "always":
            raise RuntimeError(f"use_gpu=always but copying the index to the GPU failed: {exc}") from exc
        log.warning("faiss %s index: GPU copy failed (%s); searching on CPU", quantizer, exc)
        return None
    log.info(
        "faiss %s index: unfiltered searches on GPU 0 (of %d); filtered searches stay on the CPU copy",
        quantizer,
        faiss.get_num_gpus(),
    )
    return GpuIvf(gpu, keep)
