"""Every Ranker passes the RankerContract suite (tests/contracts/ranker.py): fused order (no model) and the
ONNX model ranker, over candidates from the service's own Recommend recall on real MovieLens-100K.
The model is trained on synthetic features (a realistically shaped model, not a useful one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.settings import CollectionSettings, QuarrySettings
from common.types import Fused
from ranker.base import FusedOrder, Ranker, explains, scores_arrays
from ranker.model import train_synthetic
from ranker.schema import DEFAULT_SCHEMA
from ranker.serving import ModelRanker
from ranker.session import OnnxRanker
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from tests.contracts.ranker import RankerContract


@pytest.fixture(scope="module")
def generation(movielens_snapshot: Path) -> Collection:
    return Collection(movielens_snapshot, CollectionSettings())


@pytest.fixture(scope="module")
def fused(generation: Collection) -> list[Fused]:
    reg = Registry()
    reg.put(generation)
    svc = SearchService(QuarrySettings(), reg, recent=MemoryRecentStore())
    assert generation.behavior is not None
    user = generation.behavior.sample_users(1)[0]
    try:
        return asyncio.run(
            svc.candidates(SearchQuery(collection=generation.name, user_id=user, top_k=50), recommend=True)
        )[:50]
    finally:
        svc.close()


class TestFusedOrder(RankerContract):
    @pytest.fixture
    def ranker(self) -> Ranker:
        return FusedOrder()


class TestModelRanker(RankerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def ranker(cls, tmp_path_factory: pytest.TempPathFactory) -> Ranker:
        model, metrics, _, _ = train_synthetic(DEFAULT_SCHEMA, n=3000, max_epochs=5)
        path = tmp_path_factory.mktemp("ranker") / "ranker.onnx"
        model.to_onnx(path, schema=DEFAULT_SCHEMA, model_version="contract", metrics=metrics)
        onnx = OnnxRanker(path, schema=DEFAULT_SCHEMA, providers=["CPUExecutionProvider"])
        return ModelRanker(onnx, window_ms=1.0)

    def test_the_serving_path_sees_what_it_can_do(self, ranker: Ranker) -> None:
        # The ranking stage's per-class checks (common.protocols): arrays scored, features explained.
        assert scores_arrays(ranker) and explains(ranker)
