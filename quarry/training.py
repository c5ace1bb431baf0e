"""`quarry rank train`: behaviour logs → training rows from Quarry's own recall → MLP → ONNX.

MovieLens-100K is the real example. Time is split at a quantile of event timestamps:
- the snapshot (i2i tables, popularity, histories) is built from the training period only;
- the training-period events are replayed into the embedded RecentStore through the same code path as
  LogEvents, so the user counters the ranker sees offline are computed exactly as online;
- candidates come from the service's own Recommend recall (behavior + geo + popularity, fused), so the
  negatives are the items recall really proposes, not random items;
- a candidate is positive when the user rated it ≥ `min_rating` in the held-out period.
Users are split (seeded) into model-training and evaluation users; the evaluation compares recall order,
ranker order and plain popularity with NDCG@10 / Recall@10 on the evaluation users.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.catalog import Event
from common.settings import CollectionSettings, QuarrySettings
from common.types import Fused
from indexer.build import build_snapshot
from indexer.datasets import load_dataset
from quarry.evaluate import ndcg_at_k, recall_at_k
from ranker.model import MLPRanker
from ranker.schema import DEFAULT_SCHEMA
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore, UserEvent
from retriever.generations import Collection, Registry
from retriever.service import SearchService

log = logging.getLogger(__name__)


def replayed_service(
    snapshot: Path, settings: CollectionSettings, events: Sequence[Event]
) -> tuple[Collection, SearchService]:
    """The serving core over `snapshot` with `events` replayed into an embedded real-time store through
    LogEvents' own path, so user counters, recent events and profiles are what serving would have had
    (what `rank train` and `eval movielens` both train and judge on)."""
    qs = QuarrySettings()
    coll = Collection(snapshot, settings)
    reg = Registry()
    reg.put(coll)
    store = MemoryRecentStore(max_len=qs.redis.recent_max_len, dedup_window=len(events) + 1, max_users=10**7)
    replay = [UserEvent(f"r{i}", e.user, e.item, e.type, e.ts, e.weight) for i, e in enumerate(events)]
    asyncio.run(store.append(coll.name, replay))
    return coll, SearchService(qs, reg, recent=store)


async def _collect(
    svc: SearchService, collection: Collection, users: list[str], candidates: int, now: float
) -> dict[str, tuple[list[Fused], np.ndarray]]:
    """Each user's Recommend candidates and their features, as if requested at `now` (the split time:
    the replayed events are the ones before it, so user and item windows and ages are what serving
    would have read then)."""
    out: dict[str, tuple[list[Fused], np.ndarray]] = {}
    for u in users:
        fused = (
            await svc.candidates(
                SearchQuery(collection=collection.name, user_id=u, top_k=candidates), recommend=True
            )
        )[:candidates]
        out[u] = (fused, await svc.candidate_features(collection, u, fused, now=now))
    return out


def _metrics(order: list[int], positives: set[int], k: int) -> tuple[float, float]:
    ids = [str(o) for o in order]
    qrels = {str(o): 1 for o in positives}
    return ndcg_at_k(ids, qrels, k), recall_at_k(ids, qrels, k)


def train_movielens(
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    fraction: float = 0.8,
    min_rating: float = 4.0,
    candidates: int = 200,
    eval_share: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = load_dataset("movielens", data_dir)
    assert ds.events is not None
    events = sorted(ds.events(), key=lambda e: e.ts)
    cut = float(np.quantile([e.ts for e in events], fraction))
    train_ev = [e for e in events if e.ts < cut]
    test_ev = [e for e in events if e.ts >= cut]
    out_dir.mkdir(parents=True, exist_ok=True)
    snap = out_dir / "train-snapshot"
    manifest = build_snapshot(
        ds.items(), snap, ds.build_options(encoder=None, overwrite=True, progress=False), ds.source, train_ev
    )

    coll, svc = replayed_service(snap, QuarrySettings().for_collection(ds.name), train_ev)

    ord_of = coll.forward.ord_of
    positives: dict[str, set[int]] = {}
    for e in test_ev:
        if e.weight >= min_rating and e.item in ord_of:
            positives.setdefault(e.user, set()).add(ord_of[e.item])
    seen: dict[str, set[int]] = {}
    for e in train_ev:
        if e.item in ord_of:
            seen.setdefault(e.user, set()).add(ord_of[e.item])
    users = sorted(u for u in positives if u in seen)
    rnd = random.Random(seed)
    rnd.shuffle(users)
    n_eval = max(1, round(eval_share * len(users)))
    eval_users, fit_users = users[:n_eval], users[n_eval:]

    async def run() -> dict[str, tuple[list[Fused], np.ndarray]]:
        try:
            return await _collect(svc, coll, users, candidates, now=cut)
        finally:
            await svc.aclose()

    rows = asyncio.run(run())
    X = np.concatenate([rows[u][1] for u in fit_users])
    y = np.concatenate(
        [np.array([f.ordinal in positives[u] for f in rows[u][0]], dtype=np.float64) for u in fit_users]
    )
    model = MLPRanker(seed=seed)
    fit = model.fit(X, y)

    k = 10
    assert coll.behavior is not None
    popular_order = [o for o, _s in coll.behavior.popular(len(coll.forward))]
    table: dict[str, list[tuple[float, float]]] = {"popularity": [], "recall order": [], "ranker order": []}
    for u in eval_users:
        fused, Xu = rows[u]
        pos = positives[u]
        pop = [o for o in popular_order if o not in seen[u]][:k]
        table["popularity"].append(_metrics(pop, pos, k))
        table["recall order"].append(_metrics([f.ordinal for f in fused], pos, k))
        scores = model.predict(Xu) if len(fused) else np.zeros(0)
        ranked = [fused[i].ordinal for i in np.argsort(-scores, kind="stable")]
        table["ranker order"].append(_metrics(ranked, pos, k))
    offline = {
        name: {
            "ndcg@10": round(float(np.mean([m[0] for m in v])), 4),
            "recall@10": round(float(np.mean([m[1] for m in v])), 4),
        }
        for name, v in table.items()
    }
    version = f"movielens-mlp-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    metrics = {**{k2: float(v) for k2, v in fit.items()}, "offline": offline}
    path = model.to_onnx(
        out_dir / "model.onnx",
        schema=DEFAULT_SCHEMA,
        model_version=version,
        metrics=metrics,
        extra={"collection": ds.name, "trained_on_snapshot": manifest.snapshot_version, "split_ts": cut},
    )
    report = {
        "model": str(path),
        "model_version": version,
        "split": {
            "ts": cut,
            "utc": datetime.fromtimestamp(cut, UTC).isoformat(),
            "train_events": len(train_ev),
            "test_events": len(test_ev),
        },
        "users": {"fit": len(fit_users), "eval": len(eval_users)},
        "rows": {"train": len(y), "positive_share": round(float(y.mean()), 4)},
        "fit": {k2: round(float(v), 4) for k2, v in fit.items()},
        "offline_eval@10": offline,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    log.info("trained %s in %.1fs", version, report["seconds"])
    return report
