"""OnnxRanker loading checks and MicroBatcher coalescing (synthetic model)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranker.model import MLPRanker, sidecar_path, train_synthetic
from ranker.schema import DEFAULT_SCHEMA, Feature, FeatureSchema
from ranker.session import CUDA, MicroBatcher, ModelIntegrityError, ModelMismatch, OnnxRanker


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[MLPRanker, Path]:
    model, metrics, _, _ = train_synthetic(DEFAULT_SCHEMA, n=3000, max_epochs=10)
    path = tmp_path_factory.mktemp("ranker") / "ranker.onnx"
    model.to_onnx(path, schema=DEFAULT_SCHEMA, model_version="m1", metrics=metrics)
    return model, path


@pytest.fixture(scope="module")
def ranker(model_file: tuple[MLPRanker, Path]) -> OnnxRanker:
    return OnnxRanker(model_file[1], schema=DEFAULT_SCHEMA, providers=["CPUExecutionProvider"])


def _features(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DEFAULT_SCHEMA.dim)).astype(np.float32)


def test_score_matches_numpy_and_exposes_metadata(
    model_file: tuple[MLPRanker, Path], ranker: OnnxRanker
) -> None:
    model, _ = model_file
    X = _features(200, 0)
    np.testing.assert_allclose(ranker.score(X), model.predict(X), atol=1e-5, rtol=0)
    assert ranker.score(X[:0]).shape == (0,)
    assert ranker.providers == ["CPUExecutionProvider"]
    assert ranker.model_version == "m1"
    assert ranker.schema_fingerprint == DEFAULT_SCHEMA.fingerprint()
    with pytest.raises(ValueError, match="shape"):
        ranker.score(X[:, :5])


def test_schema_mismatch_refused(model_file: tuple[MLPRanker, Path]) -> None:
    other = FeatureSchema("v2", (*DEFAULT_SCHEMA.features[:-1], Feature("fused_score", "query_item", 0.5)))
    with pytest.raises(ModelMismatch) as info:
        OnnxRanker(model_file[1], schema=other, providers=["CPUExecutionProvider"])
    msg = str(info.value)
    # Named: the feature, both definitions, the server's schema.
    assert "'fused_score'" in msg and "default=0.0" in msg and "default=0.5" in msg and "'v2'" in msg


def test_a_model_reading_a_subset_is_served_with_its_own_schema(tmp_path: Path) -> None:
    from ranker.schema import ITEM_WINDOW_FEATURES, reads_item_windows
    from ranker.serving import ModelRanker

    fewer = DEFAULT_SCHEMA.without(*ITEM_WINDOW_FEATURES)
    model, metrics, X, _ = train_synthetic(fewer, n=500, max_epochs=2)
    path = tmp_path / "fewer.onnx"
    model.to_onnx(path, schema=fewer, model_version="fewer", metrics=metrics)
    served = OnnxRanker(path, schema=DEFAULT_SCHEMA, providers=["CPUExecutionProvider"])
    assert served.schema == fewer and served.dim == DEFAULT_SCHEMA.dim - 3
    np.testing.assert_allclose(served.score(X[:50]), model.predict(X[:50]), atol=1e-5, rtol=0)
    ranker = ModelRanker(served)
    assert ranker.schema == fewer and not reads_item_windows(ranker.schema)
    assert reads_item_windows(DEFAULT_SCHEMA)
    # A server that does not compute a feature the model reads refuses it, naming the feature.
    with pytest.raises(ModelMismatch, match="reads 'user_events_7d', which schema 'small' does not"):
        OnnxRanker(path, schema=FeatureSchema("small", fewer.features[:3]))


def test_an_older_sidecar_without_a_schema_must_name_the_servers(
    model_file: tuple[MLPRanker, Path], tmp_path: Path
) -> None:
    path = tmp_path / "old.onnx"
    shutil.copy(model_file[1], path)
    side = json.loads(sidecar_path(model_file[1]).read_text())
    del side["schema"]
    sidecar_path(path).write_text(json.dumps(side))
    assert OnnxRanker(path, schema=DEFAULT_SCHEMA).schema == DEFAULT_SCHEMA
    other = DEFAULT_SCHEMA.without("fused_score")
    with pytest.raises(ModelMismatch, match="trained on feature schema") as info:
        OnnxRanker(path, schema=other)
    assert DEFAULT_SCHEMA.fingerprint() in str(info.value) and other.fingerprint() in str(info.value)


def test_corrupted_onnx_refused(model_file: tuple[MLPRanker, Path], tmp_path: Path) -> None:
    path = tmp_path / "ranker.onnx"
    shutil.copy(model_file[1], path)
    shutil.copy(sidecar_path(model_file[1]), sidecar_path(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxRanker(path, schema=DEFAULT_SCHEMA, providers=["CPUExecutionProvider"])


def test_sidecar_fingerprint_tamper_caught_by_graph_metadata(
    model_file: tuple[MLPRanker, Path], tmp_path: Path
) -> None:
    other = FeatureSchema("v9", DEFAULT_SCHEMA.features[:-1])
    path = tmp_path / "ranker.onnx"
    shutil.copy(model_file[1], path)
    side = json.loads(sidecar_path(model_file[1]).read_text())
    # A self-consistent sidecar (schema and fingerprint) that the graph it describes contradicts.
    side["schema"], side["schema_fingerprint"] = other.to_dict(), other.fingerprint()
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ModelMismatch, match="graph metadata"):
        OnnxRanker(path, schema=other, providers=["CPUExecutionProvider"])
    side["schema_fingerprint"] = DEFAULT_SCHEMA.fingerprint()  # and one that contradicts itself
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(ModelMismatch, match="the sidecar's schema has fingerprint"):
        OnnxRanker(path, schema=other, providers=["CPUExecutionProvider"])


async def test_microbatch_identical_to_individual_and_fewer_calls(ranker: OnnxRanker) -> None:
    sizes = [1 + (i * 37) % 300 for i in range(50)]
    inputs = [_features(n, 100 + i) for i, n in enumerate(sizes)]
    expected = [ranker.score(x) for x in inputs]
    batcher = MicroBatcher(ranker, window_ms=5.0, max_batch_rows=100_000)
    before = ranker.calls
    results = await asyncio.gather(*(batcher.score(x) for x in inputs))
    calls = ranker.calls - before
    for got, want in zip(results, expected, strict=True):
        assert got.shape == want.shape
        # Same rows through the same graph; only GEMM blocking may differ with the batch height.
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert 1 <= calls < len(inputs)
    assert batcher.batches == calls
    await batcher.aclose()


async def test_window_zero_calls_straight_through(ranker: OnnxRanker) -> None:
    batcher = MicroBatcher(ranker, window_ms=0)
    assert not batcher.enabled
    before = ranker.calls
    await asyncio.gather(*(batcher.score(_features(10, i)) for i in range(8)))
    assert ranker.calls - before == 8


class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batch_rows: list[int] = []
        self.lock = threading.Lock()

    def score(self, X: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_rows.append(X.shape[0])
        if self.fail:
            raise RuntimeError("inference exploded")
        return X[:, 0].copy()


async def test_max_batch_rows_bounds_batches_and_order_preserved() -> None:
    rec = _Recorder()
    batcher = MicroBatcher(rec, window_ms=50.0, max_batch_rows=100)
    inputs = [np.full((30, 2), float(i), dtype=np.float32) for i in range(10)]
    inputs.append(np.full((250, 2), 99.0, dtype=np.float32))  # larger than the cap: runs alone
    results = await asyncio.gather(*(batcher.score(x) for x in inputs))
    for x, r in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(r, x[:, 0])
    assert max(n for n in rec.batch_rows if n != 250) <= 100
    assert 250 in rec.batch_rows
    assert sum(rec.batch_rows) == 550


async def test_errors_propagate_to_every_caller_in_batch() -> None:
    rec = _Recorder(fail=True)
    batcher = MicroBatcher(rec, window_ms=5.0, max_batch_rows=10_000)
    outcomes = await asyncio.gather(
        *(batcher.score(np.ones((3, 2), dtype=np.float32)) for _ in range(12)), return_exceptions=True
    )
    assert len(rec.batch_rows) == 1
    assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in outcomes)
    # The batcher stays usable after a failed batch.
    rec.fail = False
    np.testing.assert_array_equal(await batcher.score(np.ones((2, 2), dtype=np.float32)), [1.0, 1.0])


def test_bad_batcher_config() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(_Recorder(), window_ms=-1)
    with pytest.raises(ValueError):
        MicroBatcher(_Recorder(), window_ms=1, max_batch_rows=0)


@pytest.mark.gpu
def test_cuda_provider_actually_used(model_file: tuple[MLPRanker, Path]) -> None:
    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime build has no CUDAExecutionProvider (install the gpu extra on a GPU host)")
    ranker = OnnxRanker(model_file[1], schema=DEFAULT_SCHEMA)
    # A CPU fallback would only warn; insist the session really runs on CUDA.
    assert ranker.providers[0] == CUDA, ranker.providers
    X = _features(500, 5)
    np.testing.assert_allclose(ranker.score(X), model_file[0].predict(X), atol=1e-4, rtol=0)
