"""Serial in-process Recommend with a served ONNX ranker and real Redis: CPU ms a request.

What a Recommend with a model costs end to end inside the core (recall, fusion, the user's counters and
profile, the candidates' item windows when the model reads them, features, onnxruntime, hydration), no
gRPC. The model folder is what `quarry rank train --out DIR` writes (DIR/model.onnx and
DIR/train-snapshot, ML-100K). SYNTHETIC real-time events (`--events` from `--users` users over the last
three days, on the snapshot's items) are appended first, through LogEvents' store path.

    quarry rank train --out var/rank
    python bench/recommend_ranked_bench.py var/rank --redis-url redis://127.0.0.1:6379/14   # flushes that db
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from common.settings import QuarrySettings
from retriever.core.types import SearchQuery
from retriever.features.recent import RedisRecentStore, UserEvent, redis_client
from retriever.generations import Collection, Registry
from retriever.service import SearchService


async def run(model_dir: Path, url: str, events: int, users: int, requests: int, warmup: int) -> None:
    settings = QuarrySettings(
        redis={"url": url},
        collections={"movielens": {"ranker": {"model_path": str(model_dir / "model.onnx")}}},
    )
    sync = redis_client(settings.redis, sync=True)
    sync.flushdb()
    coll = Collection(model_dir / "train-snapshot", settings.for_collection("movielens"))
    if coll.ranker is None:
        raise SystemExit(f"{model_dir / 'model.onnx'} could not be served (see the log line above)")
    reg = Registry()
    reg.put(coll)
    store = RedisRecentStore(settings.redis)
    svc = SearchService(settings, reg, recent=store)
    rnd = random.Random(0)
    ids = coll.forward.ids
    names = [str(u) for u in range(1, users + 1)]
    now = time.time()
    evs = [
        UserEvent(f"e{i}", rnd.choice(names), rnd.choice(ids), "rating", now - rnd.uniform(0, 3 * 86400), 4.0)
        for i in range(events)
    ]
    for i in range(0, len(evs), 100):
        await store.append("movielens", evs[i : i + 100])
    queries = [
        SearchQuery(collection="movielens", user_id=rnd.choice(names), top_k=10) for _ in range(requests)
    ]
    for q in queries[:warmup]:
        await svc.recommend(q)
    c0, t0 = time.process_time(), time.perf_counter()
    for q in queries[warmup:]:
        await svc.recommend(q)
    n = len(queries) - warmup
    print(
        f"model {coll.ranker.name}:{getattr(coll.ranker, 'version', '')}: "
        f"CPU {1e3 * (time.process_time() - c0) / n:.2f} ms, wall {1e3 * (time.perf_counter() - t0) / n:.2f} ms "
        f"a Recommend over {n} requests (SYNTHETIC events: {events} from {users} users)"
    )
    await svc.aclose()
    sync.flushdb()
    sync.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--users", type=int, default=399)
    ap.add_argument("--requests", type=int, default=1200)
    ap.add_argument("--warmup", type=int, default=200)
    a = ap.parse_args()
    asyncio.run(run(a.model_dir, a.redis_url, a.events, a.users, a.requests, a.warmup))


if __name__ == "__main__":
    main()
