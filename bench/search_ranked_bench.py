"""Serial in-process Search with and without a served ranker model, interleaved: thread CPU ms a Search.

What ranking costs inside the core (no gRPC): the same Searches (the load harness's no-repetition mix:
names of the collection's own items, half with a location, known users) through one `SearchService` per
configuration, in interleaved rounds so every configuration sees the same machine. Configurations: no
model (the fused order), then each `--model NAME=PATH` (an ONNX ranker with its sidecar).

    python bench/search_ranked_bench.py --snapshot var/snapshots/places-static --collection places \\
        --model fewer=var/places-fewer.onnx --model full=var/places-full.onnx

Real Redis (`--redis-url`, read-only here: the users' events and the items' windows as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from common.settings import QuarrySettings
from common.v1 import search_pb2 as pb
from quarry.load import build_mix
from retriever.api.convert import search_query
from retriever.core.types import SearchQuery
from retriever.features.recent import RedisRecentStore
from retriever.generations import Collection, Registry
from retriever.service import SearchService


def _service(snapshot: Path, collection: str, model: str | None, url: str, encoder: str) -> Any:
    cfg: dict[str, Any] = {"ann": {"query_encoder": encoder}} if encoder else {}
    if model:
        cfg["ranker"] = {"model_path": model}
    settings = QuarrySettings(redis={"url": url}, collections={collection: cfg})
    coll = Collection(snapshot, settings.for_collection(collection))
    if model and coll.ranker is None:
        raise SystemExit(f"{model} could not be served for {collection} (see the log line above)")
    reg = Registry()
    reg.put(coll)
    return coll, SearchService(settings, reg, recent=RedisRecentStore(settings.redis))


async def _cpu_ms(svc: SearchService, queries: list[SearchQuery]) -> float:
    t0 = time.thread_time()
    for q in queries:
        await svc.search(q)
    return (time.thread_time() - t0) / len(queries) * 1e3


async def run(a: argparse.Namespace) -> None:
    configs: dict[str, str | None] = {"no model": None}
    for spec in a.model:
        name, _, path = spec.partition("=")
        configs[name] = path
    services = {k: _service(a.snapshot, a.collection, v, a.redis_url, a.encoder) for k, v in configs.items()}
    first = next(iter(services.values()))[0]
    mix = build_mix(first, "search", n=a.warmup + a.rounds * a.per_round, repetition="none")
    queries = [search_query(pb.SearchRequest.FromString(b)) for _m, b in mix.requests]
    for _coll, svc in services.values():
        await _cpu_ms(svc, queries[: a.warmup])
    got: dict[str, list[float]] = {k: [] for k in services}
    for r in range(a.rounds):
        chunk = queries[a.warmup + r * a.per_round : a.warmup + (r + 1) * a.per_round]
        for name, (_coll, svc) in services.items():
            got[name].append(await _cpu_ms(svc, chunk))
    print(
        f"{a.collection}: {a.per_round} Searches a round, {a.rounds} interleaved rounds; thread CPU ms a Search"
    )
    for name, xs in got.items():
        print(f"{name:<12} " + "  ".join(f"{x:.2f}" for x in xs) + f"   min {min(xs):.2f}")
    for _coll, svc in services.values():
        await svc.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--collection", default="places")
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH of an ONNX ranker (repeatable)")
    ap.add_argument("--encoder", default="static", help="ann.query_encoder for every configuration")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=600)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
