"""Synthetic vectors shared by the ANN benchmark and the vector-index contract tests (labelled synthetic
wherever their figures are reported)."""

from __future__ import annotations

import math

import numpy as np


def synthetic_clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in ~sqrt(n) Gaussian clusters grouped under a few topics (SYNTHETIC, not a corpus).

    The spread is chosen so that neighbour similarities (top-1 ~0.68, top-10 ~0.62, random pairs ~0.05)
    look like sentence-embedding neighbourhoods and IVF/HNSW recall is not trivially 1.0.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(8, math.isqrt(n))
    n_topics = max(2, n_clusters // 16)
    topics = rng.standard_normal((n_topics, d), dtype=np.float32)
    centers = topics[rng.integers(n_topics, size=n_clusters)]
    centers += 0.7 * rng.standard_normal((n_clusters, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = centers[rng.integers(n_clusters, size=n)]
    x += rng.standard_normal((n, d), dtype=np.float32) / np.float32(np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x
