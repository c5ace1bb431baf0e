"""`Ranked`, a branch's candidates as arrays: it reads as a sequence of `Candidate` wherever candidates are
walked one by one, and the live view's helpers (merge with the delta, drop dead ordinals) keep the order
the tuple versions gave."""

from __future__ import annotations

import numpy as np
import pytest

from common.types import Candidate, Ranked
from retriever.live import merge


def test_reads_as_a_sequence_of_candidates() -> None:
    r = Ranked(np.array([7, 3, 9], dtype=np.int32), np.array([2.5, 1.0, 0.5], dtype=np.float32))
    assert r.ordinals.dtype == np.int64 and r.scores.dtype == np.float64
    assert len(r) == 3 and bool(r)
    assert r[0] == Candidate(7, 2.5) and r[-1] == Candidate(9, 0.5)
    assert type(r[0].ordinal) is int and type(r[0].score) is float
    assert list(r) == [Candidate(7, 2.5), Candidate(3, 1.0), Candidate(9, 0.5)]
    assert [c.ordinal for c in r] == [7, 3, 9]
    head = r[:2]
    assert isinstance(head, Ranked) and list(head) == [(7, 2.5), (3, 1.0)]
    assert r[5:] == [] and not r[5:]
    with pytest.raises(IndexError):
        r[3]


def test_equality_with_lists_and_arrays() -> None:
    pairs = [Candidate(1, 0.5), Candidate(2, 0.25)]
    r = Ranked.of(pairs)
    assert r == pairs and pairs == r and r == [(1, 0.5), (2, 0.25)]
    assert r == Ranked(np.array([1, 2]), np.array([0.5, 0.25]))
    assert r != [Candidate(1, 0.5)] and r != [Candidate(2, 0.25), Candidate(1, 0.5)]
    assert r != Ranked(np.array([1, 2]), np.array([0.5, 0.3]))
    assert r != "ab" and r != 3
    assert Ranked.of(r) is r
    assert Ranked.empty() == [] and len(Ranked.of([])) == 0
    with pytest.raises(TypeError):
        hash(r)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="1-d of one length"):
        Ranked(np.array([1, 2]), np.array([0.5]))
    with pytest.raises(ValueError, match="1-d of one length"):
        Ranked(np.zeros((2, 2)), np.zeros((2, 2)))


def _plain_merge(a: list[Candidate], b: list[Candidate], k: int) -> list[Candidate]:
    """The tuple version this replaced (one side empty: the other as it is)."""
    if not b or not a:
        return (a or b)[:k]
    return sorted(a + b, key=lambda c: (-c.score, c.ordinal))[:k]


@pytest.mark.parametrize("seed", range(20))
def test_merge_orders_as_the_tuple_sort_did(seed: int) -> None:
    """A content index's answer and the delta's, merged: by score, exact ties by ordinal, cut to k."""
    rng = np.random.default_rng(seed)

    def side(n: int, offset: int) -> list[Candidate]:
        scores = np.sort(np.round(rng.random(n), 1))[::-1]  # exact ties are common
        return [Candidate(int(o) + offset, float(s)) for o, s in zip(rng.permutation(n), scores, strict=True)]

    a, b = side(int(rng.integers(0, 20)), 0), side(int(rng.integers(0, 8)), 100)
    for k in (0, 1, 5, 40):
        got = merge(Ranked.of(a), Ranked.of(b), k)
        assert isinstance(got, Ranked) and got == _plain_merge(a, b, k)
