from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError

from common.settings import CollectionSettings, FusionSettings, LearnedFusion
from common.types import LEARNED_FEATURES, Candidate, CandidateArrays, Fused, Ranked
from retriever.core.fusion import (
    LinearModel,
    fuse,
    learned,
    learned_features,
    rrf,
    rrf_arrays,
    weighted,
    weighted_arrays,
)

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


# -- learned fusion -------------------------------------------------------------------------------------


def test_learned_features_per_branch_with_missing_defaults() -> None:
    names = ["a.minmax", "a.zscore", "a.rrf", "a.found", "b.minmax", "b.found", "c.found"]
    merged, X = learned_features({"a": A, "b": B}, names, rrf_k=60)
    assert [f.ordinal for f in merged] == [1, 2, 3, 4]  # first-seen order, then the order of b's new ones
    row = {f.ordinal: dict(zip(names, x, strict=True)) for f, x in zip(merged, X.tolist(), strict=True)}
    assert row[1]["a.minmax"] == pytest.approx(1.0) and row[3]["a.minmax"] == pytest.approx(0.0)
    assert row[2]["a.rrf"] == pytest.approx(1 / 62) and row[1]["a.found"] == 1.0
    assert sum(row[o]["a.zscore"] for o in (1, 2, 3)) == pytest.approx(0.0, abs=1e-9)
    # Not found by a branch (4 by a, 2 by b), or a branch that did not run (c): every feature 0.
    assert row[4]["a.minmax"] == row[4]["a.zscore"] == row[4]["a.rrf"] == row[4]["a.found"] == 0.0
    assert row[2]["b.minmax"] == row[2]["b.found"] == 0.0
    assert all(r["c.found"] == 0.0 for r in row.values())
    with pytest.raises(ValueError, match="unknown learned-fusion feature"):
        learned_features({"a": A}, ["a.bm25"])


def test_learned_every_feature_is_computed() -> None:
    names = [f"a.{f}" for f in LEARNED_FEATURES]
    _, X = learned_features({"a": A}, names)
    assert (X[0] != 0).any() and X.shape == (3, len(LEARNED_FEATURES))


def test_learned_scores_linearly_and_orders_deterministically() -> None:
    out = learned({"a": A, "b": B}, weights={"a.found": 1.0, "b.found": 1.0}, intercept=-0.5)
    by = {f.ordinal: f.score for f in out}
    assert by == {1: pytest.approx(1.5), 2: pytest.approx(0.5), 3: pytest.approx(1.5), 4: pytest.approx(0.5)}
    # Ties break on best rank in any branch, then ordinal, as in every strategy.
    assert [f.ordinal for f in out] == [1, 3, 2, 4]
    assert [(s.branch, s.rank) for s in out[0].sources] == [("a", 1), ("b", 3)]
    out2 = learned({"b": B, "a": A}, weights={"a.found": 1.0, "b.found": 1.0}, intercept=-0.5)
    assert [f.ordinal for f in out2] == [1, 3, 2, 4]
    # Only b's rank matters: b's order comes out.
    assert [f.ordinal for f in learned({"a": A, "b": B}, weights={"b.rrf": 1.0})][:3] == [3, 4, 1]


def test_fuse_dispatches_learned() -> None:
    model = LinearModel({"a.minmax": 2.0}, intercept=1.0)
    out = fuse({"a": A}, strategy="learned", model=model)
    assert [f.score for f in out] == pytest.approx([3.0, 1 + 2 * 7 / 9, 1.0])
    assert fuse({}, strategy="learned", model=model) == []
    with pytest.raises(ValueError, match="needs a model"):
        fuse({"a": A}, strategy="learned")


def test_learned_settings_validation() -> None:
    with pytest.raises(ValidationError, match=r'strategy = "learned" needs fitted parameters'):
        FusionSettings(strategy="learned")
    ok = LearnedFusion(branches=["inverted", "ann"], weights={"inverted.minmax": 1.0, "ann.rrf": 2.0})
    assert FusionSettings(strategy="learned", learned=ok).learned == ok
    with pytest.raises(ValidationError, match=r"features are named <branch>\.<feature>"):
        LearnedFusion(branches=["inverted"], weights={"ann.minmax": 1.0})
    with pytest.raises(ValidationError, match="features are named"):
        LearnedFusion(branches=["inverted"], weights={"inverted.bm25": 1.0})
    with pytest.raises(ValidationError, match="weights is empty"):
        LearnedFusion(branches=["inverted"], weights={})
    with pytest.raises(ValidationError, match="not Search branches here"):
        CollectionSettings(
            fusion=FusionSettings(learned=LearnedFusion(branches=["popular"], weights={"popular.found": 1}))
        )


def _reference(
    ranked: dict[str, list[Candidate]], contribution: Callable[[str, list[Candidate], int, int], float]
) -> list[tuple[int, float, list[tuple[str, float, int]], int]]:
    """Fusion written the plain way (one dict per item, sources appended in branch order), to check the
    array implementation against: (ordinal, score, sources, best rank), best first."""
    items: dict[int, list[tuple[str, float, int, float]]] = {}
    for branch, cands in ranked.items():
        seen: set[int] = set()
        for i, c in enumerate(cands):
            if c.ordinal not in seen:
                seen.add(c.ordinal)
                items.setdefault(c.ordinal, []).append(
                    (branch, c.score, i + 1, contribution(branch, cands, i, len(cands)))
                )
    rows = [
        (o, sum(x[3] for x in src), [x[:3] for x in src], min(x[2] for x in src)) for o, src in items.items()
    ]
    return sorted(rows, key=lambda r: (-r[1], r[3], r[0]))


@pytest.mark.parametrize("seed", range(25))
def test_array_fusion_matches_the_plain_definition(seed: int) -> None:
    """Random lists with duplicates inside a branch, exact and near score ties, items shared by several
    branches and empty branches: the same items, scores, provenance and order as the plain definition."""
    rng = np.random.default_rng(seed)
    ranked: dict[str, list[Candidate]] = {}
    for b in ("inverted", "ann", "geo", "behavior", "preference")[: rng.integers(1, 6)]:
        n = int(rng.integers(0, 60))
        ords = rng.integers(0, 80, n)  # overlaps across branches and repeats inside one
        scores = np.sort(np.round(rng.random(n) * 4, 1))[::-1]  # exact ties are common
        ranked[b] = [Candidate(int(o), float(s)) for o, s in zip(ords, scores, strict=True)]
    weights = {b: float(rng.choice([0.0, 0.5, 1.0, 2.0])) for b in ranked}

    def check(out: list[Fused], want: list[tuple[int, float, list[tuple[str, float, int]], int]]) -> None:
        assert [f.ordinal for f in out] == [w[0] for w in want]
        for f, (_, score, sources, _) in zip(out, want, strict=True):
            assert f.score == pytest.approx(score, rel=1e-12, abs=1e-12)
            assert [(s.branch, s.score, s.rank) for s in f.sources] == sources

    check(
        rrf(ranked, k=60, weights=weights),
        _reference(ranked, lambda b, _c, i, _n: weights[b] / (60 + i + 1)),
    )
    # The branches' arrays (`Ranked`), every list or only some of them, fuse exactly as the tuples do.
    every = {b: Ranked.of(c) for b, c in ranked.items()}
    some = {b: Ranked.of(c) if i % 2 else c for i, (b, c) in enumerate(ranked.items())}
    for as_arrays in (every, some):
        assert rrf(as_arrays, k=60, weights=weights) == rrf(ranked, k=60, weights=weights)
        assert weighted(as_arrays, weights=weights, normalization="minmax") == weighted(
            ranked, weights=weights, normalization="minmax"
        )
    for how in ("minmax", "zscore", "rank"):
        norm: dict[str, list[float]] = {}
        for b, cands in ranked.items():
            xs = [c.score for c in cands]
            if how == "rank":
                norm[b] = [1.0 - i / len(xs) for i in range(len(xs))]
            elif how == "minmax":
                lo, hi = (min(xs), max(xs)) if xs else (0.0, 0.0)
                norm[b] = [1.0 if hi == lo else (x - lo) / (hi - lo) for x in xs]
            else:
                mean = sum(xs) / len(xs) if xs else 0.0
                std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) if xs else 0.0
                norm[b] = [0.0 if std == 0 else (x - mean) / std for x in xs]
        out = weighted(ranked, weights=weights, normalization=how)  # type: ignore[arg-type]
        want = _reference(ranked, lambda b, _c, i, _n, norm=norm: weights[b] * norm[b][i])
        # numpy's mean may differ from Python's sum in the last bits (z-scores): the same items, scores
        # to 1e-9, and best first by (score, best rank, ordinal) with the scores it computed
        assert sorted(f.ordinal for f in out) == sorted(w[0] for w in want)
        by = {w[0]: w for w in want}
        for f in out:
            assert f.score == pytest.approx(by[f.ordinal][1], rel=1e-9, abs=1e-12)
            assert [(s.branch, s.score, s.rank) for s in f.sources] == by[f.ordinal][2]
        keys = [(-f.score, by[f.ordinal][3], f.ordinal) for f in out]
        assert keys == sorted(keys)


@pytest.mark.parametrize("seed", range(20))
def test_fused_arrays_filter_then_build_equals_build_then_filter(seed: int) -> None:
    """What the service does (fuse as arrays, drop what the filters drop, build Fused objects for the first
    `limit` kept) gives exactly the Fused objects of the whole list filtered and cut the plain way."""
    rng = np.random.default_rng(100 + seed)
    ranked: dict[str, list[Candidate]] = {}
    for b in ("inverted", "ann", "geo", "behavior")[: rng.integers(1, 5)]:
        n = int(rng.integers(0, 50))
        scores = np.sort(np.round(rng.random(n) * 3, 1))[::-1]
        ranked[b] = [Candidate(int(o), float(s)) for o, s in zip(rng.integers(0, 70, n), scores, strict=True)]
    for arrays, whole in (
        (rrf_arrays(ranked, k=60), rrf(ranked, k=60)),
        (weighted_arrays(ranked, normalization="minmax"), weighted(ranked, normalization="minmax")),
    ):
        assert arrays.ordinal.tolist() == [f.ordinal for f in whole]
        assert arrays.fused() == whole
        keep = rng.random(len(arrays)) < 0.4
        kept = [f for f, k in zip(whole, keep.tolist(), strict=True) if k]
        part = arrays.take(keep)
        assert len(part) == len(kept)
        for limit in (None, 0, 1, 3, len(kept), len(kept) + 5):
            assert part.fused(limit) == kept[:limit]


@pytest.mark.parametrize("seed", range(20))
def test_fused_arrays_give_the_rankers_arrays_and_reorder_as_a_list_would(seed: int) -> None:
    """`candidates()` equals the arrays made from the built `Fused` objects (what the model ranker's
    features read either way), and a model's reordering (`reorder`, stable on equal scores) builds the
    same `Fused` objects as rescoring and stably sorting the list."""
    rng = np.random.default_rng(300 + seed)
    ranked: dict[str, list[Candidate]] = {}
    for b in ("inverted", "ann", "geo", "behavior", "preference")[: rng.integers(1, 6)]:
        n = int(rng.integers(0, 60))
        scores = np.sort(rng.random(n))[::-1]
        ranked[b] = [Candidate(int(o), float(s)) for o, s in zip(rng.integers(0, 90, n), scores, strict=True)]
    arrays = rrf_arrays(ranked, k=60)
    keep = rng.random(len(arrays)) < 0.7
    arrays = arrays.take(keep)
    whole = arrays.fused()
    got, want = arrays.candidates(), CandidateArrays.of(whole)
    assert got.ordinal.tolist() == want.ordinal.tolist() and got.score.tolist() == want.score.tolist()
    assert got.src_item.tolist() == want.src_item.tolist()
    assert [got.branches[b] for b in got.src_branch] == [want.branches[b] for b in want.src_branch]
    assert (
        got.src_score.tolist() == want.src_score.tolist() and got.src_rank.tolist() == want.src_rank.tolist()
    )
    # A model's scores (float32, with ties) → the same order and scores both ways.
    model = rng.integers(0, 5, len(arrays)).astype(np.float32) / 4
    order = np.argsort(-model, kind="stable")
    reordered = arrays.reorder(order, model[order].astype(np.float64))
    for f, s in zip(whole, model.tolist(), strict=True):
        f.score = s
    by_list = sorted(whole, key=lambda f: -f.score)
    for limit in (None, 0, 1, 10):
        assert reordered.fused(limit) == by_list[:limit]
