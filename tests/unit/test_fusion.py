from __future__ import annotations

import pytest

from common.types import Candidate
from retriever.core.fusion import fuse, rrf, weighted

A = [Candidate(1, 10.0), Candidate(2, 8.0), Candidate(3, 1.0)]
B = [Candidate(3, 0.9), Candidate(4, 0.8), Candidate(1, 0.1)]


def test_rrf_scores_and_provenance() -> None:
    out = rrf({"a": A, "b": B}, k=60)
    by = {f.ordinal: f for f in out}
    assert by[1].score == pytest.approx(1 / 61 + 1 / 63)
    assert by[3].score == pytest.approx(1 / 63 + 1 / 61)
    assert by[2].score == pytest.approx(1 / 62)
    assert [(s.branch, s.score, s.rank) for s in by[1].sources] == [("a", 10.0, 1), ("b", 0.1, 3)]
    # 1 and 3 tie on score; tie broken by best rank then ordinal.
    assert [f.ordinal for f in out] == [1, 3, 2, 4]


def test_rrf_weights_and_k() -> None:
    out = rrf({"a": A, "b": B}, k=1, weights={"a": 0.0, "b": 1.0})
    assert out[0].ordinal == 3 and out[0].score == pytest.approx(0.5)
    with pytest.raises(ValueError):
        rrf({"a": A}, k=0)


def test_dedup_within_a_branch_keeps_best_rank() -> None:
    out = rrf({"a": [Candidate(7, 2.0), Candidate(7, 1.0)]}, k=60)
    assert len(out) == 1 and out[0].sources[0].rank == 1


def test_weighted_minmax() -> None:
    out = weighted({"a": A, "b": B}, normalization="minmax")
    by = {f.ordinal: f.score for f in out}
    assert by[1] == pytest.approx(1.0 + 0.0)
    assert by[2] == pytest.approx(7 / 9)
    assert by[3] == pytest.approx(0.0 + 1.0)
    assert by[4] == pytest.approx(0.7 / 0.8)


def test_weighted_zscore_and_rank() -> None:
    z = {f.ordinal: f.score for f in weighted({"a": A}, normalization="zscore")}
    assert sum(z.values()) == pytest.approx(0.0, abs=1e-9)
    r = [f.ordinal for f in weighted({"a": A}, normalization="rank")]
    assert r == [1, 2, 3]


def test_empty_and_constant_lists() -> None:
    assert fuse({}, strategy="rrf") == []
    same = [Candidate(1, 5.0), Candidate(2, 5.0)]
    assert [f.score for f in weighted({"a": same})] == [1.0, 1.0]
    with pytest.raises(ValueError):
        fuse({"a": A}, strategy="nope")  # type: ignore[arg-type]
