"""faiss IVF backend (inner product): IVF-Flat, or IVF-PQ with exact re-ranking; GPU search through
`common.index.vectors.ivf_gpu` when faiss has GPU support and a GPU is visible."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np

from common.index.vectors.approximate import ApproximateIndex
from common.index.vectors.base import (
    IVF_EXACT_THRESHOLD,
    GpuMode,
    SearchParams,
    add_chunks,
    check_build_vectors,
    check_meta,
    empty_result,
    load_vectors,
    manifest_entry,
    require_faiss,
    save_vectors,
)
from common.index.vectors.exact import exact_topk
from common.index.vectors.ivf_gpu import copy_to_gpu

log = logging.getLogger(__name__)


def default_nlist(n: int) -> int:
    """~4*sqrt(N) inverted lists, but at least 39 training points per list (faiss's k-means minimum)."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39, 65_536))


def _default_pq_m(d: int) -> int:
    # ~4 dimensions per sub-quantizer: cheap lookup tables, and the flat refine stage restores precision.
    for m in range(max(1, d // 4), 0, -1):
        if d % m == 0:
            return m
    return 1


class FaissIvfIndex(ApproximateIndex):
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
        faiss = require_faiss()
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
        self._gpu = copy_to_gpu(index, quantizer=quantizer, nprobe=self.nprobe, use_gpu=use_gpu)
        self.device = "cpu" if self._gpu is None else "gpu"

    # -- search ------------------------------------------------------------------------------------------

    @property
    def raw(self) -> Any:
        """The underlying CPU faiss index (benchmarks time it directly)."""
        return self._index

    def _params(self, nprobe: int, sel: Any = None) -> Any:
        faiss = require_faiss()
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
        gpu = self._gpu
        if gpu is not None and gpu.accepts(nprobe, k * self._k_factor):
            scores, ids = gpu.search(q, k, self._plain(nprobe))
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
        faiss = require_faiss()
        # The filtered k-th neighbour sits around unfiltered rank k / selectivity, further out than the
        # unfiltered k-th: probe more lists as the filter gets more selective, or recall drops.  Measured on
        # 100k x 128 (uniform filter, nprobe 32): exponent 0 gives recall .84/.91/.98 at 1%/2%/5% allowed,
        # 0.5 gives >= .998 at ~1.5x the latency, 1.0 gives 1.000 at ~3-4x.
        scale = (self.count / n_allowed) ** self.filter_nprobe_exponent
        nprobe = min(self.nlist, math.ceil(self._nprobe(params) * scale))
        kk = min(k, n_allowed)
        ids, scores = empty_result(q.shape[0], k)
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
            ids[pending], scores[pending] = exact_topk(self._vectors, q[pending], ids.shape[1], rows_allowed)

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
        faiss = require_faiss()
        vectors = check_build_vectors(vectors)
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
        for start, stop in add_chunks(n, progress, f"ivf-{quantizer}"):
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
        faiss = require_faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vectors_file = save_vectors(directory, self._vectors)
        # Write-then-rename: this index may itself be mapped from the file being replaced.
        tmp = directory / (self.INDEX_FILE + ".tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, directory / self.INDEX_FILE)
        return manifest_entry(
            self,
            {"index": self.INDEX_FILE, "vectors": vectors_file},
            {
                "quantizer": self.quantizer,
                "nlist": self.nlist,
                "nprobe": self.nprobe,
                "exact_threshold": self.exact_threshold,
                "pq_m": self.pq_m,
                "refine_k_factor": self.refine_k_factor,
                "filter_nprobe_exponent": self.filter_nprobe_exponent,
            },
            {"faiss": str(faiss.__version__)},
        )

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any], *, mmap: bool, use_gpu: GpuMode = "auto") -> Self:
        """Open a saved index; with ``mmap`` the bulk data is mapped read-only and loading is instant."""
        faiss = require_faiss()
        directory = Path(directory)
        check_meta(meta, cls.kind)
        p = meta["params"]
        vectors = load_vectors(directory, meta, mmap=mmap)
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
