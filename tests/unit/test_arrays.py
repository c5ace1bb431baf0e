"""common.arrays: the request path's NumPy helpers agree with the NumPy functions they stand in for."""

from __future__ import annotations

import numpy as np
import pytest

from common.arrays import in_sorted


@pytest.mark.parametrize("seed", range(30))
def test_in_sorted_is_isin_over_a_sorted_haystack(seed: int) -> None:
    rng = np.random.default_rng(seed)
    haystack = np.unique(rng.integers(0, 60, rng.integers(0, 40)))
    needles = rng.integers(-5, 70, rng.integers(0, 30))  # duplicates, values outside, below and above
    if len(haystack) and len(needles):
        needles[: min(3, len(needles))] = rng.choice(haystack, min(3, len(needles)))  # some sure hits
    for dtype in (np.int64, np.int32):
        got = in_sorted(haystack.astype(dtype), needles)
        np.testing.assert_array_equal(got, np.isin(haystack, needles))
        assert got.dtype == bool and got.shape == haystack.shape


def test_in_sorted_edges() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert in_sorted(empty, np.array([1, 2])).shape == (0,)
    assert not in_sorted(np.array([1, 2, 3]), empty).any()
    np.testing.assert_array_equal(in_sorted(np.array([1, 2, 3]), np.array([3, 3, 9])), [False, False, True])
