"""Item-window reads and writes against a real Redis, beside the raw redis-py calls they wrap.

What the ranking stage pays for `item_events_1h/1d/7d` on each request with a model ranker: one
`RedisRecentStore.item_windows` call for the request's candidates. Measured cold (the process cache
cleared before every call: every item read from Redis) and warm (every item cached), next to the raw
floor — one `MGET` of the same keys with the same client — in the same run, interleaved; plus LogEvents
batches with and without the items' update (the users' script alone vs the store's whole append).

Events are SYNTHETIC: `--events` events over `--items` items from `--users` users, times uniform over the
last week. Writes to the Redis database named by `--redis-url` (flushed first: use a scratch db).

    python bench/item_windows_bench.py --redis-url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import numpy as np

from common.settings import RedisSettings
from retriever.features.recent import RedisRecentStore, UserEvent, redis_client
from retriever.features.windows import item_key


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


async def run(url: str, events: int, items: int, users: int, candidates: int, iters: int) -> dict[str, Any]:
    settings = RedisSettings(url=url, socket_timeout_ms=1000)
    sync = redis_client(settings, sync=True)
    sync.flushdb()
    store = RedisRecentStore(settings)
    raw = redis_client(settings)
    rnd = random.Random(0)
    now = time.time()
    evs = [
        UserEvent(
            f"e{i}",
            f"u{rnd.randrange(users)}",
            f"item{rnd.randrange(items)}",
            "click",
            now - rnd.uniform(0, 7 * 86400),
            1.0,
        )
        for i in range(events)
    ]
    # Writes: the store's append (users' script + items' update) in batches of 100.
    t0 = time.perf_counter()
    for i in range(0, len(evs), 100):
        await store.append("bench", evs[i : i + 100])
    append_s = time.perf_counter() - t0

    samples: dict[str, list[float]] = {"raw MGET": [], "item_windows cold": [], "item_windows warm": []}
    for _ in range(iters):
        ids = [f"item{rnd.randrange(items)}" for _ in range(candidates)]
        keys = [item_key("bench", i) for i in ids]
        t0 = time.perf_counter()
        await raw.mget(keys)
        samples["raw MGET"].append(time.perf_counter() - t0)
        store._item_cache.clear()
        t0 = time.perf_counter()
        await store.item_windows("bench", ids)
        samples["item_windows cold"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await store.item_windows("bench", ids)  # every item now in the cache
        samples["item_windows warm"].append(time.perf_counter() - t0)
    floor = _pct(samples["raw MGET"], 50)
    rows = [
        {
            "path": k,
            "p50_us": _pct(v, 50) * 1e6,
            "p99_us": _pct(v, 99) * 1e6,
            "vs_raw_p50": _pct(v, 50) / floor,
        }
        for k, v in samples.items()
    ]
    stats = sync.info("commandstats")
    sync.flushdb()
    sync.close()
    await raw.aclose()
    await store.close()
    return {
        "events": events,
        "items": items,
        "candidates": candidates,
        "append_events_per_s": events / append_s,
        "reads": rows,
        "redis_usec_per_call": {
            k.removeprefix("cmdstat_"): v["usec_per_call"]
            for k, v in stats.items()
            if k in ("cmdstat_mget", "cmdstat_evalsha")
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    out = asyncio.run(run(a.redis_url, a.events, a.items, a.users, a.candidates, a.iters))
    print(f"SYNTHETIC: {a.events:,} events over {a.items:,} items; {a.candidates} candidates a read")
    print(
        f"append (users' script + items' update, batches of 100): {out['append_events_per_s']:,.0f} events/s"
    )
    for r in out["reads"]:
        print(
            f"{r['path']:<20} p50 {r['p50_us']:8.0f} µs  p99 {r['p99_us']:8.0f} µs  ×raw {r['vs_raw_p50']:.2f}"
        )
    print(f"Redis server µs a call: {out['redis_usec_per_call']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
