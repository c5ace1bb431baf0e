"""The gradient-boosted ranker: LightGBM LambdaMART trained on synthetic (not real) ranking data, exported
by our own converter to one ONNX-ML TreeEnsembleRegressor, served by onnxruntime through the same loader
as the MLP (sidecar, sha256, schema fingerprint) with the same scores as LightGBM itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ranker.gbdt import GBDTRanker, _float32_floor
from ranker.schema import DEFAULT_SCHEMA
from ranker.session import OnnxRanker


def _data(users: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Queries of `per` candidates; relevance from a fixed rule over a few features, with ties and
    integer-valued columns so many values sit exactly on split thresholds."""
    rng = np.random.default_rng(seed)
    n, d = users * per, DEFAULT_SCHEMA.dim
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 1] = rng.integers(0, 5, size=n)  # integer-valued: thresholds land between integers
    X[:, 2] = np.round(X[:, 2], 1)
    logit = 1.5 * X[:, 0] + 0.8 * X[:, 1] - 1.2 * np.abs(X[:, 2]) + rng.normal(scale=0.5, size=n)
    y = (logit > np.quantile(logit, 0.85)).astype(np.float64)
    return X, y, [per] * users


@pytest.fixture(scope="module")
def trained() -> tuple[GBDTRanker, np.ndarray]:
    X, y, g = _data(200, 30, 0)
    Xv, yv, gv = _data(60, 30, 1)
    model = GBDTRanker(n_estimators=80, num_leaves=15, min_child_samples=20)
    fit = model.fit(X, y, g, valid=(Xv, yv, gv))
    assert fit["valid_ndcg@10"] > 0.6 and 1 <= fit["trees"] <= 80
    return model, Xv


def test_onnx_export_scores_exactly_like_lightgbm(
    trained: tuple[GBDTRanker, np.ndarray], tmp_path: Path
) -> None:
    model, Xv = trained
    path = model.to_onnx(tmp_path / "gbdt.onnx", schema=DEFAULT_SCHEMA, model_version="gbdt-test", metrics={})
    served = OnnxRanker(path, schema=DEFAULT_SCHEMA)  # the serving loader: sidecar, sha256, fingerprint
    onnx_scores = served.score(Xv)
    ref = model.predict(Xv)
    # Equal up to float32 summation order over the trees (a few ulps), never a different leaf.
    np.testing.assert_allclose(onnx_scores, ref, rtol=0, atol=2e-6)
    # Inputs exactly on the float32 image of every threshold decide as LightGBM decides.
    dump = model.booster_.dump_model()
    edge = np.repeat(Xv[:1], 64, axis=0)
    thresholds: list[tuple[int, float]] = []

    def walk(n: dict) -> None:
        if "threshold" in n:
            thresholds.append((int(n["split_feature"]), float(n["threshold"])))
            walk(n["left_child"])
            walk(n["right_child"])

    for t in dump["tree_info"][:8]:
        walk(t["tree_structure"])
    for row, (f, t) in zip(edge, thresholds, strict=False):
        row[f] = np.float32(t)
    np.testing.assert_allclose(served.score(edge), model.predict(edge), rtol=0, atol=2e-6)


def test_bagged_boosters_export_as_one_averaged_ensemble(tmp_path: Path) -> None:
    """Bags: each booster on its own share of the queries (different trees), their raw scores averaged;
    the ONNX graph (one ensemble, leaves weighted 1/bags) scores as the average does."""
    X, y, g = _data(200, 30, 0)
    Xv, yv, gv = _data(60, 30, 1)
    model = GBDTRanker(n_estimators=40, num_leaves=15, min_child_samples=20, bags=3, bag_fraction=0.7)
    fit = model.fit(X, y, g, valid=(Xv, yv, gv))
    assert len(model.boosters_) == 3 and fit["bags"] == 3
    raws = [b.predict(Xv, num_iteration=model._iterations(b)) for b in model.boosters_]
    assert not np.allclose(raws[0], raws[1])  # different queries and seeds: different models
    mean = 1.0 / (1.0 + np.exp(-np.mean(raws, axis=0)))
    np.testing.assert_allclose(model.predict(Xv), mean, rtol=0, atol=1e-6)
    path = model.to_onnx(tmp_path / "bag.onnx", schema=DEFAULT_SCHEMA, model_version="bag-test", metrics={})
    served = OnnxRanker(path, schema=DEFAULT_SCHEMA)
    np.testing.assert_allclose(served.score(Xv), model.predict(Xv), rtol=0, atol=2e-6)
    # Two queries, a small fraction: a bag that would draw none still fits on one.
    tiny = GBDTRanker(n_estimators=5, min_child_samples=1, bags=4, bag_fraction=0.01)
    tiny.fit(X[:60], y[:60], [30, 30])
    assert len(tiny.boosters_) == 4 and tiny.predict(Xv[:5]).shape == (5,)
    with pytest.raises(ValueError, match="bags"):
        GBDTRanker(bags=0)
    with pytest.raises(ValueError, match="bag_fraction"):
        GBDTRanker(bag_fraction=0.0)


def test_float32_floor() -> None:
    for t in (0.1, 1.5, -2.3, 1e-35, 3.0):
        f = _float32_floor(t)
        assert f <= t and np.float32(f) == f
        assert float(np.nextafter(np.float32(f), np.float32(np.inf))) > t


def test_schema_mismatch_is_refused(trained: tuple[GBDTRanker, np.ndarray]) -> None:
    model, _ = trained
    from ranker.schema import Feature, FeatureSchema

    small = FeatureSchema(version="x", features=(Feature(name="a", source="user", default=0.0),))
    with pytest.raises(ValueError, match="features but the model was trained on"):
        model.to_onnx_model(schema=small, model_version="v")
