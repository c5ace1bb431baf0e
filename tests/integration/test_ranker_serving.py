"""The ranking stage end to end: train on MovieLens through Quarry's own recall, serve the ONNX model,
and check that offline and online feature vectors are identical for the same request."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.settings import QuarrySettings
from common.types import CandidateArrays
from quarry.training import train_movielens
from ranker.features import feature_matrix
from ranker.model import sidecar_path
from ranker.schema import AFFINITY_FEATURES, DEFAULT_SCHEMA
from ranker.serving import ModelRanker
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore, StoreUnavailable, UserEvent
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
    """Our own ranker, recording the feature matrix it scored (to compare with the offline path); the
    server scores through `score_arrays` (and `rank`, for debug answers, through it too)."""

    seen: list[np.ndarray]

    async def score_arrays(
        self,
        query: Any,
        candidates: CandidateArrays,
        collection: Any,
        counters: Any = None,
        item_windows: Any = None,
    ) -> np.ndarray:
        self.seen.append(
            feature_matrix(candidates, collection, query.location, counters, item_windows=item_windows)
        )
        return await super().score_arrays(query, candidates, collection, counters, item_windows)


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
        query = SearchQuery(collection="movielens", user_id="fan", top_k=20)
        # Other users act on three of the candidates now: their item windows are not all zero.
        fused = await svc.candidates(query, recommend=True)
        ids, t = coll.forward.ids, time.time()
        crowd = [
            UserEvent(f"c{i}", f"crowd{i}", ids[f.ordinal], "click", t - 60, 1.0)
            for i, f in enumerate(fused[:3])
        ]
        await store.append("movielens", crowd)
        res = await svc.recommend(query)
        scores = [h.score for h in res.hits]
        assert res.hits and scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        # Offline path (the trainer's): same request → same candidates → same features.
        fused = await svc.candidates(query, recommend=True)
        # The trainers' call: the user through the service's own user_counters (counters + profile), the
        # candidates through its item_windows, then the features.
        offline = await svc.candidate_features(coll, "fan", fused)
        names = list(DEFAULT_SCHEMA.names)
        decaying = [names.index(f"item_events_{w}") for w in ("1h", "1d", "7d")]
        steady = [i for i in range(len(names)) if i not in decaying]
        np.testing.assert_array_equal(offline[:, steady], rec.seen[-1][:, steady])
        # The item counts decay with the clock: the two reads, milliseconds apart, differ by that much.
        np.testing.assert_allclose(offline[:, decaying], rec.seen[-1][:, decaying], rtol=1e-5)
        assert offline[:, 0].max() > 0  # user_events_total came from the real-time counters
        hour = offline[:, names.index("item_events_1h")]
        # One event a minute ago each: exp(-60 / 3600) of an hour-count, then the feature's log1p.
        assert np.count_nonzero(hour) == 3 and hour.max() == pytest.approx(
            np.log1p(np.exp(-1 / 60)), rel=1e-3
        )
        affinity = offline[:, list(DEFAULT_SCHEMA.names).index("user_tag_affinity")]
        assert 0 < affinity.max() <= 1  # the user's genre profile (Star Wars: Action, Sci-Fi, ...)
        # The i2i affinities from the user's two real-time events (no long-term history: a new user),
        # under each table and memory that reads real-time events; the whole-history memory reads the
        # snapshot's history only, which a new user has not; and the items' mean ratings from the snapshot.
        for name in AFFINITY_FEATURES:
            if name.endswith("_all"):
                assert not offline[:, names.index(name)].any(), name
            else:
                assert offline[:, names.index(name)].max() > 0, name
        assert 1.0 < offline[:, names.index("item_avg_weight")].min() <= 5.0
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


class NoItemWindows(MemoryRecentStore):
    """A real embedded store whose item-window reads fail (as Redis's do when it times out)."""

    async def item_windows(self, collection: str, item_ids: Any, now: float | None = None) -> Any:
        raise StoreUnavailable("redis: TimeoutError: item windows")


def test_item_windows_unavailable_ranks_without_them_and_says_degraded(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    coll, rec, _store, _svc = _recording_service(trained[0])
    store = NoItemWindows()
    reg = Registry()
    reg.put(coll)
    svc = SearchService(_settings(trained[0] / "model.onnx"), reg, recent=store)

    async def go() -> None:
        await store.append("movielens", [UserEvent("n1", "nw", "50", "rating", time.time() - 60, 5.0)])
        res = await svc.recommend(SearchQuery(collection="movielens", user_id="nw", top_k=10))
        assert res.hits and res.degraded  # ranked by the model, told that a signal was missing
        X = rec.seen[-1]
        cols = [list(DEFAULT_SCHEMA.names).index(f"item_events_{w}") for w in ("1h", "1d", "7d")]
        assert not X[:, cols].any()  # the features' defaults
        assert X[:, 0].max() > 0  # the user's counters still came
        await svc.aclose()

    asyncio.run(go())


def test_a_model_without_item_windows_never_reads_them(
    tmp_path: Path, trained: tuple[Path, dict[str, Any]]
) -> None:
    """The ranking stage asks the store for the candidates' windows only for a model that reads them."""
    from ranker.model import train_synthetic
    from ranker.schema import ITEM_WINDOW_FEATURES

    fewer = DEFAULT_SCHEMA.without(*ITEM_WINDOW_FEATURES)
    model, metrics, _, _ = train_synthetic(fewer, n=500, max_epochs=2)
    model.to_onnx(tmp_path / "fewer.onnx", schema=fewer, model_version="fewer", metrics=metrics)
    settings = _settings(tmp_path / "fewer.onnx")
    coll = Collection(trained[0] / "train-snapshot", settings.for_collection("movielens"))
    assert isinstance(coll.ranker, ModelRanker) and coll.ranker.schema == fewer
    reg = Registry()
    reg.put(coll)
    store = NoItemWindows()  # would degrade the answer if it were asked
    svc = SearchService(settings, reg, recent=store)

    async def go() -> None:
        await store.append("movielens", [UserEvent("f1", "few", "50", "rating", time.time() - 60, 5.0)])
        res = await svc.recommend(SearchQuery(collection="movielens", user_id="few", top_k=10, debug=True))
        assert res.hits and not res.degraded
        assert res.debug is not None and res.debug.feature_names == fewer.names
        await svc.aclose()

    asyncio.run(go())


def test_plain_answers_rank_exactly_as_debug_answers(trained: tuple[Path, dict[str, Any]]) -> None:
    """Plain answers are scored from fusion's arrays (`Fused` objects for the hits alone), debug answers
    through the list path (`rank`): the same hits, in the same order, with the same scores."""
    from dataclasses import replace

    coll, _rec, store, svc = _recording_service(trained[0])
    ids = coll.forward.ids

    async def go() -> None:
        # Stamped an hour ahead of the clock, the events count at full weight in the item windows until
        # then: two requests a moment apart read the same features (a minute-old one would decay between).
        later = time.time() + 3600
        events = [
            UserEvent(f"p{i}", f"u{i % 5}", ids[(i * 37) % 400], "rating", later - i, 4.0) for i in range(60)
        ]
        await store.append("movielens", events)
        compared = 0
        for user in ("u0", "u1", "u2", "u3", "u4", "nobody"):
            for q in (
                SearchQuery(collection="movielens", user_id=user, top_k=15),
                SearchQuery(collection="movielens", text="star wars", user_id=user, top_k=5),
            ):
                run = svc.search if q.text else svc.recommend
                plain, debug = await run(q), await run(replace(q, debug=True))
                assert plain.hits, q
                assert [(h.id, h.score) for h in plain.hits] == [(h.id, h.score) for h in debug.hits], q
                compared += len(plain.hits)
        assert compared > 60
        await svc.aclose()

    asyncio.run(go())
