from __future__ import annotations

import math

import pytest

from quarry.evaluate import ndcg_at_k, recall_at_k


def test_perfect_and_empty() -> None:
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], {"a": 1}, 10) == 0.0
    assert ndcg_at_k(["a"], {}, 10) == 0.0


def test_known_value() -> None:
    # relevant doc at rank 3 only: DCG = 1/log2(4); IDCG = 1
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 10) == pytest.approx(1 / math.log2(4))
    # cut at k
    assert ndcg_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0
    # graded
    got = ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10)
    assert got == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_recall() -> None:
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / 3)
