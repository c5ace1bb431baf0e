"""Statistics shared by the offline evaluations (SciFact fusion, MovieLens recommendation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def paired_bootstrap(
    values: Mapping[str, Sequence[float] | np.ndarray],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float, float]]:
    """Mean and percentile bootstrap interval of each method's per-query (or per-user) values, from the
    same resamples for every method, so differences between them are paired."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    n = len(next(iter(arrays.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, v in arrays.items():
        lo, hi = np.quantile(v[idx].mean(axis=1), [alpha, 1.0 - alpha])
        out[name] = (float(v.mean()), float(lo), float(hi))
    return out
