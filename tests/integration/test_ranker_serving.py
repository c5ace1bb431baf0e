"""The ranking stage end to end: train on MovieLens through Quarry's own recall, serve the ONNX model,
and check that offline and online feature vectors are identical for the same request."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.settings import QuarrySettings
from common.types import Fused
from quarry.training import train_movielens
from ranker.features import feature_matrix
from ranker.model import sidecar_path
from ranker.schema import DEFAULT_SCHEMA
from ranker.serving import ModelRanker
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore, UserEvent
from retriever.generations import Collection, Registry
from retriever.service import SearchService

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("rank")
    report = train_movielens(out, data_dir=out, candidates=100)
    return out, report


def _settings(model: Path) -> QuarrySettings:
    return QuarrySettings(collections={"movielens": {"ranker": {"model_path": str(model)}}})


class Recording(ModelRanker):
    """Our own ranker, recording the feature matrix it scored (to compare with the offline path)."""

    seen: list[np.ndarray]

    async def rank(
        self, query: Any, candidates: list[Fused], collection: Any, counters: Any = None
    ) -> list[Fused]:
        self.seen.append(feature_matrix(candidates, collection, query.location, counters))
        return await super().rank(query, candidates, collection, counters)


def _recording_service(out: Path) -> tuple[Collection, Recording, MemoryRecentStore, SearchService]:
    """The trained model serving the training snapshot through the real SearchService, recording the
    feature matrices it scores."""
    settings = _settings(out / "model.onnx")
    coll = Collection(out / "train-snapshot", settings.for_collection("movielens"))
    assert isinstance(coll.ranker, ModelRanker)
    rec = Recording(coll.ranker.model)
    rec.seen = []
    coll.ranker = rec
    reg = Registry()
    reg.put(coll)
    store = MemoryRecentStore()
    return coll, rec, store, SearchService(settings, reg, recent=store)


def test_training_report(trained: tuple[Path, dict[str, Any]]) -> None:
    out, report = trained
    side = json.loads(sidecar_path(out / "model.onnx").read_text())
    assert side["collection"] == "movielens" and side["schema_fingerprint"]
    assert report["rows"]["train"] > 1000 and 0 < report["rows"]["positive_share"] < 0.5
    assert report["fit"]["val_auc"] > 0.6  # learns something real from behaviour
    assert set(report["offline_eval@10"]) == {"popularity", "recall order", "ranker order"}


def test_model_serves_and_offline_features_equal_online(trained: tuple[Path, dict[str, Any]]) -> None:
    coll, rec, store, svc = _recording_service(trained[0])

    async def go() -> None:
        await store.append(
            "movielens",
            [
                UserEvent("x1", "fan", "50", "rating", 1.0, 5.0),
                UserEvent("x2", "fan", "181", "rating", 2.0, 4.0),
            ],
        )
        res = await svc.recommend(SearchQuery(collection="movielens", user_id="fan", top_k=20))
        scores = [h.score for h in res.hits]
        assert res.hits and scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        # Offline path (the trainer's): same request → same candidates → same features.
        fused = await svc.candidates(
            SearchQuery(collection="movielens", user_id="fan", top_k=20), recommend=True
        )
        # The trainers read the user through the service's own user_counters (counters + profile).
        offline = feature_matrix(fused, coll, None, await svc.user_counters(coll, "fan"))
        np.testing.assert_array_equal(offline, rec.seen[-1])
        assert offline[:, 0].max() > 0  # user_events_total came from the real-time counters
        affinity = offline[:, list(DEFAULT_SCHEMA.names).index("user_tag_affinity")]
        assert 0 < affinity.max() <= 1  # the user's genre profile (Star Wars: Action, Sci-Fi, ...)
        await svc.aclose()

    asyncio.run(go())


def test_mismatched_or_corrupt_model_is_refused(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = trained
    model = tmp_path / "model.onnx"
    shutil.copy(out / "model.onnx", model)
    side = json.loads(sidecar_path(out / "model.onnx").read_text())
    side["schema_fingerprint"] = "0" * 64
    sidecar_path(model).write_text(json.dumps(side))
    coll = Collection(out / "train-snapshot", _settings(model).for_collection("movielens"))
    assert coll.ranker is None  # fused order, with a log line naming both fingerprints
    side["schema_fingerprint"] = json.loads(sidecar_path(out / "model.onnx").read_text())[
        "schema_fingerprint"
    ]
    side["collection"] = "geonames"
    sidecar_path(model).write_text(json.dumps(side))
    assert Collection(out / "train-snapshot", _settings(model).for_collection("movielens")).ranker is None
    model.write_bytes(model.read_bytes()[:-5])
    side["collection"] = "movielens"
    sidecar_path(model).write_text(json.dumps(side))
    assert Collection(out / "train-snapshot", _settings(model).for_collection("movielens")).ranker is None


def test_debug_answer_shows_the_models_inputs(trained: tuple[Path, dict[str, Any]]) -> None:
    """A debug request names the model and gives each hit the exact feature vector the model scored."""
    _coll, rec, store, svc = _recording_service(trained[0])

    async def go() -> None:
        await store.append("movielens", [UserEvent("d1", "dbg", "50", "rating", 1.0, 5.0)])
        q = SearchQuery(collection="movielens", user_id="dbg", top_k=10, debug=True)
        res = await svc.recommend(q)
        assert res.debug is not None
        assert res.debug.ranker == f"onnx:{rec.version}"
        assert res.debug.feature_names == rec.schema.names
        assert res.debug.user is not None and [e.item_id for e in res.debug.user.recent] == ["50"]
        scored = rec.seen[-1]  # rows in fused order, as the model saw them
        fused_ids = [c.id for c in res.debug.fused]
        for h in res.hits:
            assert h.debug is not None and h.debug.fused_rank >= 1
            assert fused_ids[h.debug.fused_rank - 1] == h.id
            row = scored[h.debug.fused_rank - 1]
            assert [h.debug.features[n] for n in rec.schema.names] == pytest.approx(row.tolist())
        # The model reorders: hit scores are the model's, not the fused ones.
        assert [h.score for h in res.hits] != [h.debug.fused_score for h in res.hits]
        await svc.aclose()

    asyncio.run(go())
