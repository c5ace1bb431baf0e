"""The model-backed ranking stage: features → one ONNX call per request (optionally micro-batched
across concurrent requests) → candidates reordered by the model's score."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from common.types import CandidateArrays, Fused, ItemWindows, UserCounters
from ranker.base import RankingContext, RankQuery
from ranker.features import feature_matrix
from ranker.metrics import RANK_CANDIDATES, RANK_LATENCY, RANKER_INFO
from ranker.model import sidecar_path
from ranker.schema import DEFAULT_SCHEMA, FeatureSchema
from ranker.session import MicroBatcher, ModelLoadError, OnnxRanker

log = logging.getLogger(__name__)


class ModelRanker:
    name = "onnx"

    def __init__(self, model: OnnxRanker, *, window_ms: float = 0.0) -> None:
        self.model = model
        #: The features the model reads (its own schema, checked against the server's when it loaded).
        self.schema: FeatureSchema = model.schema
        self.batcher = MicroBatcher(model, window_ms=window_ms)

    @property
    def version(self) -> str:
        return self.model.model_version

    def explain(
        self,
        query: RankQuery,
        candidates: list[Fused],
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> tuple[tuple[str, ...], np.ndarray]:
        return self.schema.names, feature_matrix(
            candidates, collection, query.location, counters, self.schema, item_windows=item_windows
        )

    async def rank(
        self,
        query: RankQuery,
        candidates: list[Fused],
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> list[Fused]:
        if not candidates:
            return candidates
        scores = await self.score_arrays(
            query, CandidateArrays.of(candidates), collection, counters, item_windows
        )
        for f, s in zip(candidates, scores.tolist(), strict=True):
            f.score = s
        # Stable sort: equal model scores keep the fused order (as `score_arrays`' callers sort).
        return sorted(candidates, key=lambda f: -f.score)

    async def score_arrays(
        self,
        query: RankQuery,
        candidates: CandidateArrays,
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> np.ndarray:
        if not len(candidates):
            return np.zeros(0, dtype=np.float32)
        t0 = time.perf_counter()
        X = feature_matrix(
            candidates, collection, query.location, counters, self.schema, item_windows=item_windows
        )
        scores = await self.batcher.score(X)
        RANK_LATENCY.labels(collection.name).observe(time.perf_counter() - t0)
        RANK_CANDIDATES.labels(collection.name).observe(len(candidates))
        return scores


def load_model_ranker(
    path: Path,
    collection_name: str,
    *,
    window_ms: float,
    providers: list[str] | None,
    strict: bool = False,
) -> ModelRanker | None:
    """The collection's model, or None (fused order) with a clear log line when it cannot be served;
    with `strict`, a model that cannot be served raises ModelLoadError instead (hot reloads refuse it)."""
    import json

    try:
        sidecar = json.loads(sidecar_path(path).read_text())
        trained_for = sidecar.get("collection")
        if trained_for is not None and trained_for != collection_name:
            raise ModelLoadError(
                f"{path} was trained for collection {trained_for!r}, not {collection_name!r}"
            )
        model = OnnxRanker(path, schema=DEFAULT_SCHEMA, providers=providers)
    except (OSError, ValueError, ModelLoadError) as exc:
        if strict:
            raise ModelLoadError(f"ranker model {path}: {exc}") from exc
        log.error(
            "collection %s: refusing ranker model %s (%s); ranking stays in fused order",
            collection_name,
            path,
            exc,
        )
        return None
    log.info(
        "collection %s: ranker model %s (providers %s)", collection_name, model.model_version, model.providers
    )
    RANKER_INFO.labels(collection_name, model.model_version, ",".join(model.providers)).set(1)
    return ModelRanker(model, window_ms=window_ms)
