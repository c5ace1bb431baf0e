"""ANN recall of a shard set against one node, both against exact search (GeoNames cities15000 names as
queries, MiniLM vectors, HNSW at the collection's settings).

A shard set searches N smaller HNSW graphs and merges their top lists; one node searches one big graph.
Each is approximate in its own way, so their lists are compared with the exact top-k (brute force over all
vectors), not with each other only.

    .venv/bin/python bench/shard_ann_bench.py [--work var/bench-cluster] [--shards 4] [--queries 500]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.settings import QuarrySettings
from common.snapshot_root import SnapshotRoot
from indexer.build import build_snapshot
from indexer.datasets import geonames
from indexer.sharded import build_sharded
from retriever.core.types import SearchQuery
from retriever.generations import Collection
from retriever.recall.base import RecallRequest, RootInputs


def _ensure(work: Path, shards: int) -> tuple[Path, Path]:
    ds = geonames.load(work, variant="cities15000")
    opts = ds.build_options(collection="places", encoder="minilm", progress=False, overwrite=True)
    single = work / "places-minilm-single"
    if not (single / "manifest.json").is_file():
        build_snapshot(ds.items(), single, opts, ds.source)
    root = SnapshotRoot(work / f"places-minilm-root-{shards}")
    if "places" not in root.collections():
        with root.publish("places") as out:
            build_sharded(ds.items(), out, opts, ds.source, shards=shards)
    return single, root.live("places")


async def _ann(
    coll: Collection, pool: ThreadPoolExecutor, vec: np.ndarray, k: int
) -> list[tuple[int, float]]:
    req = RecallRequest(
        query=SearchQuery(collection=coll.name, text="q"),
        collection=coll,
        pool=pool,
        root=RootInputs(vector=vec),
    )
    return [(c.ordinal, c.score) for c in await coll.branches["ann"].recall(req, k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("var/bench-cluster"))
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=100)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    single_dir, set_dir = _ensure(args.work, args.shards)
    cs = QuarrySettings().for_collection("places")
    single = Collection(single_dir, cs)
    shards = [Collection(set_dir / f"shard-{s:04d}", cs) for s in range(args.shards)]
    ann = single.branches["ann"]
    vectors = np.load(single_dir / "vectors" / "vectors.f32.npy", mmap_mode="r")
    titles = [t for t in single.forward.column("title") if t]
    texts = random.Random(5).sample(titles, args.queries)
    pool = ThreadPoolExecutor(2)
    k = args.k
    rec_single = {10: [], k: []}
    rec_set = {10: [], k: []}
    t_single = t_set = 0.0

    async def run() -> None:
        nonlocal t_single, t_set
        for text in texts:
            vec = ann.embed(text)  # type: ignore[attr-defined]
            exact = np.argsort(-(vectors @ vec), kind="stable")[:k]
            t0 = time.perf_counter()
            one = [o for o, _ in await _ann(single, pool, vec, k)]
            t_single += time.perf_counter() - t0
            merged: list[tuple[int, float]] = []
            t0 = time.perf_counter()
            for sh in shards:
                assert sh.shard is not None
                merged += [(int(sh.shard.gord[o]), s) for o, s in await _ann(sh, pool, vec, k)]
            t_set += time.perf_counter() - t0
            many = [o for o, _ in sorted(merged, key=lambda x: (-x[1], x[0]))[:k]]
            for at in (10, k):
                truth = set(exact[:at].tolist())
                rec_single[at].append(len(truth & set(one[:at])) / at)
                rec_set[at].append(len(truth & set(many[:at])) / at)

    asyncio.run(run())
    n = len(texts)
    print(
        f"places (GeoNames cities15000, {len(single.base_forward)} items, MiniLM), {n} queries, HNSW ef={cs.ann.ef}"
    )
    for at in (10, k):
        print(f"recall@{at} against exact: one node {np.mean(rec_single[at]):.4f}, "
              f"{args.shards} shards merged {np.mean(rec_set[at]):.4f}")  # fmt: skip
    print(f"search time per query (in process, sequential): one node {t_single / n * 1000:.2f} ms, "
          f"{args.shards} shards one after another {t_set / n * 1000:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
