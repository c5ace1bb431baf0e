"""Feature schema, numpy MLP training and ONNX export parity (synthetic data throughout)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ranker.model import MLPRanker, loss_and_grads, roc_auc, sidecar_path, train_synthetic
from ranker.schema import DEFAULT_SCHEMA, Feature, FeatureSchema

# ---- schema -------------------------------------------------------------------------------------


def test_default_schema_shape() -> None:
    assert DEFAULT_SCHEMA.dim == len(DEFAULT_SCHEMA.names) == 43
    assert {f.source for f in DEFAULT_SCHEMA.features} == {"user", "item", "query_item"}
    assert len(DEFAULT_SCHEMA.fingerprint()) == 64


def test_vectorize_defaults_transforms_and_unknown_keys() -> None:
    schema = FeatureSchema(
        "t",
        (
            Feature("a", "user", 2.0, "none"),
            Feature("b", "item", 0.0, "log1p"),
            Feature("c", "query_item", 0.0, "clip01"),
        ),
    )
    unknown: Counter[str] = Counter()
    rows = [
        {"a": 1.0, "b": math.e - 1, "c": 3.0, "typo": 1.0},
        {"b": -5.0, "c": -1.0, "typo": 2.0, "other": 0.0},
        {"a": float("nan")},
    ]
    X = schema.vectorize(rows, unknown=unknown)
    assert X.dtype == np.float32 and X.shape == (3, 3)
    np.testing.assert_allclose(X, [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], rtol=1e-6)
    assert unknown == Counter({"typo": 2, "other": 1})
    assert schema.vectorize([]).shape == (0, 3)


def test_fingerprint_roundtrip_and_sensitivity() -> None:
    again = FeatureSchema.from_json(DEFAULT_SCHEMA.to_json())
    assert again == DEFAULT_SCHEMA
    assert again.fingerprint() == DEFAULT_SCHEMA.fingerprint()
    feats = list(DEFAULT_SCHEMA.features)
    feats[0] = Feature(feats[0].name, feats[0].source, 1.0, feats[0].transform)
    assert FeatureSchema("v1", tuple(feats)).fingerprint() != DEFAULT_SCHEMA.fingerprint()
    swapped = (feats[1], feats[0], *feats[2:])
    assert FeatureSchema("v1", swapped).fingerprint() != FeatureSchema("v1", tuple(feats)).fingerprint()


def test_schema_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        FeatureSchema("x", (Feature("a", "user", 0.0), Feature("a", "item", 0.0)))
    with pytest.raises(ValueError, match="transform"):
        Feature("a", "user", 0.0, "sqrt")  # type: ignore[arg-type]


# ---- training -----------------------------------------------------------------------------------


def test_gradient_check_tiny_net() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(9, 4))
    y = (rng.random(9) > 0.5).astype(np.float64)
    params = [(rng.normal(size=(4, 3)), rng.normal(size=3)), (rng.normal(size=(3, 2)), rng.normal(size=2))]
    params.append((rng.normal(size=(2, 1)), rng.normal(size=1)))
    l2 = 0.01
    _, grads = loss_and_grads(params, X, y, l2)
    eps = 1e-6
    for k, (W, b) in enumerate(params):
        for arr, g in ((W, grads[k][0]), (b, grads[k][1])):
            num = np.zeros_like(arr)
            for idx in np.ndindex(arr.shape):
                orig = arr[idx]
                arr[idx] = orig + eps
                up, _ = loss_and_grads(params, X, y, l2)
                arr[idx] = orig - eps
                down, _ = loss_and_grads(params, X, y, l2)
                arr[idx] = orig
                num[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(2)
    y = rng.random(60) > 0.4
    s = np.round(rng.random(60), 1)  # ties on purpose
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs)


def test_learns_separable_function_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4000, 6)).astype(np.float32)
    y = ((X[:, 0] + 2 * X[:, 1] - X[:, 2] * X[:, 3]) > 0).astype(np.float64)
    Xt = rng.normal(size=(2000, 6)).astype(np.float32)
    yt = ((Xt[:, 0] + 2 * Xt[:, 1] - Xt[:, 2] * Xt[:, 3]) > 0).astype(np.float64)
    model = MLPRanker(seed=7, max_epochs=60)
    metrics = model.fit(X, y)
    assert roc_auc(yt, model.predict(Xt)) > 0.95
    assert metrics["val_auc"] > 0.95
    assert metrics["best_epoch"] <= metrics["epochs"]
    again = MLPRanker(seed=7, max_epochs=60)
    again.fit(X, y)
    np.testing.assert_array_equal(model.predict(Xt), again.predict(Xt))


def test_explicit_validation_set_and_constant_feature() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    X[:, 2] = 5.0  # constant: std 0 must not produce NaN
    y = (X[:, 0] > 0).astype(np.float64)
    model = MLPRanker(hidden=(8,), max_epochs=20)
    metrics = model.fit(X[:400], y[:400], X_val=X[400:], y_val=y[400:])
    assert metrics["n_val"] == 100
    assert np.all(np.isfinite(model.predict(X)))


# ---- ONNX export --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MLPRanker, Path, np.ndarray]:
    model, metrics, X, _ = train_synthetic(DEFAULT_SCHEMA, n=3000, max_epochs=10)
    path = model.to_onnx(
        tmp_path_factory.mktemp("ranker") / "ranker.onnx",
        schema=DEFAULT_SCHEMA,
        model_version="test-1",
        metrics=metrics,
    )
    return model, path, X


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_onnx_matches_numpy_predict(exported: tuple[MLPRanker, Path, np.ndarray], batch: int) -> None:
    model, path, X = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["score"], {"features": X[:batch]})[0]
    assert out.dtype == np.float32 and out.shape == (batch,)
    np.testing.assert_allclose(out, model.predict(X[:batch]), atol=1e-5, rtol=0)


def test_onnx_graph_and_sidecar(exported: tuple[MLPRanker, Path, np.ndarray]) -> None:
    _, path, _ = exported
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    ops = {n.op_type for n in proto.graph.node}
    assert {"Sub", "Div", "MatMul", "Add", "Relu", "Sigmoid"} <= ops
    (inp,) = proto.graph.input
    assert inp.name == "features"
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_version"] == "test-1"
    assert meta["schema_fingerprint"] == DEFAULT_SCHEMA.fingerprint()

    side = json.loads(sidecar_path(path).read_text())
    assert side["model_version"] == "test-1"
    assert side["schema_fingerprint"] == DEFAULT_SCHEMA.fingerprint()
    assert side["feature_names"] == list(DEFAULT_SCHEMA.names)
    assert "val_auc" in side["metrics"]
    assert side["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(path.parent.glob("*.tmp"))


def test_export_rejects_schema_of_wrong_width() -> None:
    model = MLPRanker(hidden=(4,), max_epochs=2)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(50, 3)), (rng.random(50) > 0.5).astype(float))
    with pytest.raises(ValueError, match=f"{DEFAULT_SCHEMA.dim} features"):
        model.to_onnx_model(schema=DEFAULT_SCHEMA, model_version="x")


def test_vectorize_matches_scalar_feature_apply() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(50):
        row = {n: float(rng.normal() * 100) for n in DEFAULT_SCHEMA.names if rng.random() > 0.3}
        rows.append(row)
    X = DEFAULT_SCHEMA.vectorize(rows)
    for i, row in enumerate(rows):
        want = [f.apply(row.get(f.name, f.default)) for f in DEFAULT_SCHEMA.features]
        np.testing.assert_allclose(X[i], np.asarray(want, dtype=np.float32), rtol=1e-6)
