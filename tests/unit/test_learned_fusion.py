"""The learned-fusion trainer on synthetic data: the fit recovers a known weighting, folds are by query,
and the snippet it writes is valid settings that serve through the fusion function."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from common.settings import QuarrySettings
from common.types import Candidate
from quarry import learned_fusion as lf
from quarry.evaluate import cv_fusion
from retriever.core.fusion import learned

NAMES = ["a.minmax", "a.found", "b.minmax", "b.found"]
TRUE_W = np.array([3.0, -1.0, 1.0, 0.5])
TRUE_B = -2.0


def _synthetic_rows(queries: int, per_query: int, seed: int) -> list[lf.QueryRows]:
    """Labels drawn from the logistic model TRUE_W·x + TRUE_B, so a pointwise fit must recover it."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(queries):
        found = rng.random((per_query, 2)) < 0.7
        X = np.zeros((per_query, 4))
        X[:, 0] = rng.random(per_query) * found[:, 0]
        X[:, 1] = found[:, 0]
        X[:, 2] = rng.random(per_query) * found[:, 1]
        X[:, 3] = found[:, 1]
        p = 1 / (1 + np.exp(-(X @ TRUE_W + TRUE_B)))
        gains = (rng.random(per_query) < p).astype(float)
        ideal = np.sort(gains)[::-1][:10]
        idcg = float(np.sum(ideal / np.log2(np.arange(2, len(ideal) + 2))))
        rows.append(lf.QueryRows(f"q{q}", tuple(range(per_query)), X, gains, idcg))
    return rows


def test_pointwise_fit_recovers_a_known_weighting() -> None:
    rows = _synthetic_rows(400, 50, seed=1)
    model = lf.fit(rows, NAMES, lf.Config("pointwise", "all", 1e-6))
    assert list(model.weights) == NAMES
    got = np.array([model.weights[n] for n in NAMES])
    np.testing.assert_allclose(got, TRUE_W, atol=0.25)
    assert model.intercept == pytest.approx(TRUE_B, abs=0.25)


def test_pairwise_fit_orders_like_the_true_model() -> None:
    rows = _synthetic_rows(200, 40, seed=2)
    model = lf.fit(rows, NAMES, lf.Config("pairwise", "all", 1e-4))
    got = np.array([model.weights[n] for n in NAMES])
    cosine = got @ TRUE_W / np.linalg.norm(got) / np.linalg.norm(TRUE_W)
    assert cosine > 0.97  # pairwise fixes the direction (the order), not the scale
    truth = lf.Fitted(dict(zip(NAMES, TRUE_W.tolist(), strict=True)), TRUE_B, model.config)
    assert lf.ndcg_of(rows, NAMES, model, 10).mean() == pytest.approx(
        lf.ndcg_of(rows, NAMES, truth, 10).mean(), abs=0.01
    )


def test_feature_subsets_and_strong_l2() -> None:
    rows = _synthetic_rows(50, 20, seed=3)
    minmax = lf.fit(rows, NAMES, lf.Config("pointwise", "minmax", 1e-3))
    assert list(minmax.weights) == NAMES  # minmax + found of both branches
    with_rrf = [lf.QueryRows(r.qid, r.ordinals, np.c_[r.X, r.X[:, 1] / 61], r.gains, r.idcg) for r in rows]
    ranks = lf.fit(with_rrf, [*NAMES, "a.rrf"], lf.Config("pointwise", "ranks", 1e-3))
    assert set(ranks.weights) == {"a.found", "b.found", "a.rrf"}
    shrunk = lf.fit(rows, NAMES, lf.Config("pointwise", "all", 1e3))
    assert max(abs(w) for w in shrunk.weights.values()) < 0.05


def test_kfold_partitions_queries_reproducibly() -> None:
    folds = lf.kfold(23, 5, seed=7)
    assert len(folds) == 5 and sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert [f.tolist() for f in folds] == [f.tolist() for f in lf.kfold(23, 5, seed=7)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in lf.kfold(23, 5, seed=8)]
    with pytest.raises(ValueError):
        lf.kfold(3, 5, seed=0)


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = np.random.default_rng(0).random(300)
    lo, hi = lf.bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1
    assert lf.bootstrap_ci([0.5] * 10) == (0.5, 0.5)


def _lists(queries: int, seed: int) -> tuple[dict, dict[int, str], dict]:
    """Branch "good" ranks the relevant items high with noise; "noise" is random."""
    rng = np.random.default_rng(seed)
    lists, ids, judgments = {}, {}, {}
    for q in range(queries):
        ords = [q * 100 + i for i in range(30)]
        rel = set(ords[:2])
        good = sorted(ords, key=lambda o: -(rng.normal() + 2.0 * (o in rel)))[:20]
        noise = list(rng.permutation(ords)[:20])
        lists[f"q{q}"] = {
            "good": [Candidate(o, 30.0 - i) for i, o in enumerate(good)],
            "noise": [Candidate(int(o), 1.0 - i / 20) for i, o in enumerate(noise)],
        }
        ids.update({o: f"d{o}" for o in ords})
        judgments[f"q{q}"] = {f"d{o}": 1 for o in rel}
    return lists, ids, judgments


def test_cv_fusion_end_to_end_and_snippet_serves() -> None:
    lists, ids, judgments = _lists(40, seed=4)
    report = cv_fusion(lists, ids, judgments, branches=["good", "noise"], folds=4, inner_folds=3)
    scores = report["ndcg@10"]
    assert set(scores) == {"good", "noise", "rrf", "weighted", "learned"}
    assert scores["learned"]["mean"] > scores["noise"]["mean"] + 0.2
    assert scores["learned"]["mean"] >= scores["rrf"]["mean"] - 0.02
    lo, hi = scores["learned"]["ci95"]
    assert lo <= scores["learned"]["mean"] <= hi
    assert len(report["fold_configs"]) == 4

    model = report["_model"]
    text = lf.toml_snippet("synth", ["good", "noise"], model, rrf_k=60.0, version='v "1"', comments=["x"])
    parsed = tomllib.loads(text)
    branches: dict[str, dict[str, object]] = {"good": {}, "noise": {}}
    parsed["collections"]["synth"]["branches"] = branches
    settings = QuarrySettings(collections=parsed["collections"])
    fs = settings.for_collection("synth").fusion
    assert fs.strategy == "learned" and fs.learned is not None
    assert fs.learned.weights == pytest.approx(model.weights) and fs.learned.version == 'v "1"'
    fused = learned(lists["q0"], weights=fs.learned.weights, intercept=fs.learned.intercept)
    assert {f.ordinal for f in fused} == {c.ordinal for b in lists["q0"].values() for c in b}
