"""`quarry bench`: figures for the speed targets, always beside the raw library measured in the same run.

Never a timed assertion in the test suite: these numbers depend on the machine, so they are printed for
people (and closing notes) to compare, with ratios against the raw calls that make them meaningful.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import SecretStr

from common.settings import AnnSettings, BranchSpec, CollectionSettings, ServerSettings


class _Thunk(Protocol):
    """A call to time, made with no arguments (a lambda may still bind loop variables as defaults, which
    a `Callable[[], Any]` context does not let mypy infer)."""

    def __call__(self) -> object: ...


def percentile(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _fmt(name: str, xs_us: Sequence[float], base: Sequence[float] | None = None) -> str:
    row = f"  {name:<44} p50 {percentile(xs_us, 50):9.1f} µs   p99 {percentile(xs_us, 99):9.1f} µs"
    if base is not None:
        row += f"   ratio(p50) {statistics.median(xs_us) / statistics.median(base):5.2f}×"
    return row


def _queries(collection: Any, n: int, data_dir: Path | None) -> list[str]:
    if collection.name == "scifact":
        from indexer.datasets import default_data_dir, scifact

        qs = list(scifact.queries(data_dir or default_data_dir()).values())
    else:
        # Real item titles as queries (a stand-in for query logs this catalog does not have).
        titles = collection.forward.column("title")
        qs = [t for t in titles if t]
    random.Random(7).shuffle(qs)
    return qs[:n]


def bench_ann(
    snapshot: Path,
    *,
    n: int = 300,
    k: int = 100,
    backend: str = "hnsw",
    data_dir: Path | None = None,
    passages: bool = True,
) -> str:
    """ANN branch inside Quarry vs the raw encoder + raw library call, one query at a time, same run."""
    from retriever.core.types import SearchQuery
    from retriever.generations import Collection
    from retriever.recall.ann import AnnBranch
    from retriever.recall.base import RecallRequest

    settings = CollectionSettings(
        branches={"ann": BranchSpec(quota=k, timeout_ms=60_000)},
        ann=AnnSettings(backend=backend, passages=passages),  # type: ignore[arg-type]
    )
    coll = Collection(snapshot, settings, verify="size")
    branch = coll.branches.get("ann")
    if not isinstance(branch, AnnBranch):
        raise SystemExit(f"no ANN branch for {snapshot}: {coll.unavailable.get('ann')}")
    index, encoder = branch.index, branch.encoder
    queries = _queries(coll, n, data_dir)
    pool = ThreadPoolExecutor(4)
    # A passage index (items scored by their best passage) first asks its inner index for this many rows.
    inner, k_raw = _raw_index(index, k)
    raw = inner.raw

    if inner.kind == "hnsw":
        ef = max(branch.params.ef or inner.ef_search, k_raw)
        raw.set_ef(ef)

        def raw_search(v: np.ndarray) -> Any:
            return raw.knn_query(v[None, :], k=k_raw, num_threads=1)

        setting = f"ef={ef}"
    else:
        import faiss

        nprobe = branch.params.nprobe or inner.nprobe
        # faiss wraps SearchParameters.__init__ to take fields as kwargs; its stub declares no arguments.
        params = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]

        def raw_search(v: np.ndarray) -> Any:
            return raw.search(v[None, :], k_raw, params=params)

        setting = f"nprobe={nprobe}"
    if inner is not index:
        setting += f", {inner.count} passage rows, raw search of the first {k_raw} rows"

    async def via_branch(text: str) -> None:
        req = RecallRequest(
            query=SearchQuery(collection=coll.name, text=text),
            collection=coll,
            pool=pool,
            inline=ServerSettings().inline_recall,  # as the server runs it by default
        )
        await branch.recall(req, k)

    def timed(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e6

    raw_enc: list[float] = []
    raw_srch: list[float] = []
    raw_total: list[float] = []
    cold: list[float] = []
    warm: list[float] = []

    async def run() -> None:
        # One running loop, as in the server: each branch call is timed around its await.
        for q in queries[:5]:  # warm up
            raw_search(encoder.encode([q])[0])
            await via_branch(q)
        for q in queries:
            # Interleaved per query so machine noise hits both sides alike.
            e = timed(lambda q=q: encoder.encode([q]))  # type: ignore[misc]
            v = encoder.encode([q])[0]
            s = timed(lambda v=v: raw_search(v))  # type: ignore[misc]
            raw_enc.append(e)
            raw_srch.append(s)
            raw_total.append(e + s)
            if branch.query.cache is not None:
                branch.query.cache.clear()
            t0 = time.perf_counter()
            await via_branch(q)
            cold.append((time.perf_counter() - t0) * 1e6)
            t0 = time.perf_counter()
            await via_branch(q)
            warm.append((time.perf_counter() - t0) * 1e6)

    asyncio.run(run())
    pool.shutdown()
    lines = [
        f"ANN branch vs raw calls — {coll.name} ({index.count} × {index.dim}, {index.kind} {setting}, {index.device}), "
        f"{len(queries)} real queries, top-{k}, one at a time",
        _fmt(f"raw {encoder.name} encode (onnxruntime)", raw_enc),
        _fmt(
            f"raw {inner.kind} search ({'hnswlib knn_query' if inner.kind == 'hnsw' else 'faiss search'})",
            raw_srch,
        ),
        _fmt("raw encode + search", raw_total),
        _fmt("Quarry ANN branch, query cache miss", cold, raw_total),
        _fmt("Quarry ANN branch, query cache hit (search only)", warm, raw_srch),
    ]
    return "\n".join(lines)


def bench_search(
    snapshot: Path,
    *,
    n: int = 300,
    top_k: int = 10,
    radius_m: float = 50_000.0,
    users: int = 50,
    data_dir: Path | None = None,
    redis_url: str = "",
    redis_cluster: bool = False,
) -> str:
    """End-to-end Search (every branch the snapshot feeds, run concurrently by the executor) vs the sum of
    the raw library calls each branch makes, measured interleaved in the same run.

    Requests take their text from real item titles, their location from that item, and a user id drawn
    from the snapshot's long-term histories (when it has a behavior part).
    """
    from common.settings import QuarrySettings, RedisSettings
    from common.types import GeoPoint
    from retriever.core.types import SearchQuery
    from retriever.features.recent import make_recent_store
    from retriever.generations import Registry
    from retriever.recall.base import analyze_query
    from retriever.service import SearchService

    settings = QuarrySettings(redis=RedisSettings(url=redis_url, cluster=redis_cluster))
    max_terms = settings.limits.max_query_terms  # the service's cap on analysed terms
    coll = open_collection(snapshot, settings)
    reg = Registry()
    reg.put(coll)
    svc = SearchService(settings, reg, recent=make_recent_store(settings.redis))
    rnd = random.Random(11)
    fw = coll.forward
    located = np.flatnonzero(~np.isnan(fw.lat))
    pool_ords = located if len(located) else np.arange(len(fw))
    picks = [int(pool_ords[rnd.randrange(len(pool_ords))]) for _ in range(n)]
    rows = fw.rows(picks)
    beh = coll.branches.get("behavior")
    user_ids = coll.behavior.sample_users(users) if coll.behavior is not None else []
    reqs = []
    for row in rows:
        loc = GeoPoint(row["lat"], row["lon"]) if row["lat"] is not None else None
        user = rnd.choice(user_ids) if user_ids else ""
        reqs.append(
            SearchQuery(
                collection=coll.name,
                text=row["title"],
                user_id=user,
                location=loc,
                radius_m=radius_m if loc else 0.0,
                top_k=top_k,
            )
        )

    # Raw library calls, one per branch, as the branches make them.
    inv = coll.branches.get("inverted")
    ann = coll.branches.get("ann")
    geo = coll.branches.get("geo")
    raw: dict[str, list[float]] = {}

    def t(name: str, fn: _Thunk) -> None:
        t0 = time.perf_counter()
        fn()
        raw.setdefault(name, []).append((time.perf_counter() - t0) * 1e6)

    if ann is not None:
        ann_inner, ann_k = _raw_index(ann.index, 100)
    loop = asyncio.new_event_loop()
    total: list[float] = []
    per_branch: dict[str, list[float]] = {}
    for q in reqs[:5]:
        loop.run_until_complete(svc.search(q))
    knn_name, knn = _raw_knn(ann_inner, ann_k) if ann is not None else ("", None)
    for q in reqs:
        if inv is not None:
            # The query analysed as the service analyses it before the branches run.
            terms = analyze_query(q.text, coll.analyzers, max_terms)
            query = inv.build_query(terms, q.filters)
            t("tantivy search", lambda query=query: inv._searcher.search(query, limit=200, count=False))
            # The same answer from tantivy alone: build the term query, search (hits weighted as the
            # branch asks), read each hit's ordinal from the fast field.
            t("tantivy query+search+ids", lambda terms=terms, q=q: _raw_inverted(inv, terms, q.filters))
        if ann is not None:
            t("onnxruntime encode", lambda q=q: ann.encoder.encode([q.text]))
            v = ann.encoder.encode([q.text])
            t(knn_name, lambda v=v: knn(v))  # type: ignore[misc]
        if beh is not None and q.user_id:
            hist = beh.index.user_history(q.user_id)
            seeds = [(o, 1.0) for o in hist[:20]]
            t("i2i expand (numpy)", lambda seeds=seeds: beh.index.expand(beh.s.method, seeds, 100))
        if geo is not None and q.location is not None:
            t(
                "geo within (cKDTree)",
                lambda q=q: geo.index.within(q.location.lat, q.location.lon, q.radius_m, k=100),
            )
        t0 = time.perf_counter()
        res = loop.run_until_complete(svc.search(q))
        total.append((time.perf_counter() - t0) * 1e6)
        for b in res.branch_stats:
            if b.status.value == "ok":
                per_branch.setdefault(b.branch, []).append(b.latency_ms * 1000)
    alone = _branches_alone(
        loop, svc, coll, reqs, ann_inner if ann is not None else None, ann_k if ann else 0
    )
    loop.run_until_complete(svc.aclose())
    loop.close()
    raw_sum_p50 = sum(statistics.median(v) for k, v in raw.items() if k != "tantivy query+search+ids")
    # Each branch against the raw calls that give the same answer (behavior and preference also read
    # Redis, so they have no single raw counterpart).
    yardsticks: dict[str, list[tuple[str, ...]]] = {
        "inverted": [("tantivy search",), ("tantivy query+search+ids",)],
        "ann": [("onnxruntime encode", "hnswlib knn_query"), ("onnxruntime encode", "faiss search")],
        "geo": [("geo within (cKDTree)",)],
    }
    ratios = []
    for branch, sums in yardsticks.items():
        if branch not in per_branch:
            continue
        mine = statistics.median(per_branch[branch])
        for calls in sums:
            if all(c in raw for c in calls):  # the snapshot's index kind decides which ann call ran
                base = sum(statistics.median(raw[c]) for c in calls)
                name = " + ".join("encode" if c == "onnxruntime encode" else c for c in calls)
                ratios.append(f"    {branch:10s} / {name:34s} {mine / base:5.2f}×")
    lines = [
        f"End-to-end Search (in-process core, no RPC) — {coll.name}: {len(fw)} items, {len(reqs)} requests, "
        f"top_k={top_k}, radius {radius_m / 1000:.0f} km, store={svc.recent.name}, branches {sorted(per_branch)}",
        "  raw library calls (same run, one at a time):",
        *[_fmt("  " + k, v) for k, v in raw.items()],
        f"  sum of raw p50s {raw_sum_p50:9.1f} µs (branches run concurrently in Quarry, so this is a serial bound)",
        "  Quarry branches (inside the executor, concurrent):",
        *[_fmt("  " + k, v) for k, v in sorted(per_branch.items())],
        "  branch p50 / raw p50 (inside a full Search the other branches' native calls run first, so a"
        " branch works with colder caches than its raw call; the next lines compare like with like):",
        *ratios,
        "  each branch alone (a Search asking for that branch only, interleaved with its raw calls):",
        *alone,
        _fmt("Quarry Search total", total),
        f"  total p50 / sum of raw p50s: {statistics.median(total) / raw_sum_p50:.2f}×",
    ]
    return "\n".join(lines)


def _branches_alone(
    loop: asyncio.AbstractEventLoop, svc: Any, coll: Any, reqs: Sequence[Any], ann_inner: Any, ann_k: int
) -> list[str]:
    """Each yardstick branch in a Search of its own (`SearchQuery.branches`), interleaved request by
    request with the raw calls that give the same answer, so the ratio is what Quarry adds around the
    library (executor, deadline, filters, real-time view, canonical order).

    Both sides start from the same CPU cache state. Inside a full Search a branch runs after the others'
    native calls; in a loop of raw calls, each follows the last one's warm data. Measured on `places`:
    the inverted branch's search and id read took 69 µs inside full Searches and 18 µs in a tight loop,
    for the same queries. So: the two sides
    alternate which goes first, and before each one an 8 MiB write evicts L1/L2.

    The ANN branch's query vectors are cached by then where its encoder has a cache; its yardstick is
    then the knn alone. `quarry bench ann` times misses too."""
    import dataclasses

    from retriever.recall.base import analyze_query

    max_terms = svc.settings.limits.max_query_terms
    branches = coll.branches
    inv, ann, geo = branches.get("inverted"), branches.get("ann"), branches.get("geo")
    # Per branch: its raw yardstick's name and a function preparing, outside the timing, the raw call for
    # a request (the branch gets its query analysed and its vector looked up before it starts too).
    raw_calls: dict[str, tuple[str, Callable[[Any], Callable[[], Any] | None]]] = {}
    if inv is not None:

        def inverted(q: Any) -> Callable[[], Any] | None:
            if not q.text:
                return None
            terms = analyze_query(q.text, coll.analyzers, max_terms)
            return lambda: _raw_inverted(inv, terms, q.filters)

        raw_calls["inverted"] = ("tantivy query+search+ids", inverted)
    if ann is not None:
        knn_name, knn = _raw_knn(ann_inner, ann_k)
        cache = getattr(ann, "cache", None)

        def vector(q: Any) -> Callable[[], Any] | None:
            if not q.text:
                return None
            if cache is not None:  # a hit in the branch: the vector is at hand, as here
                v = cache.get(ann.encoder.name, q.text)[None, :]
                return lambda: knn(v)
            return lambda: knn(ann.encoder.encode([q.text]))

        raw_calls["ann"] = (knn_name + (" (cached vector)" if cache else " + encode"), vector)
    if geo is not None:

        def within(q: Any) -> Callable[[], Any] | None:
            if q.location is None:
                return None
            return lambda: geo.index.within(q.location.lat, q.location.lon, q.radius_m, k=100)

        raw_calls["geo"] = ("geo within (cKDTree)", within)
    scrub = np.empty(8 << 20, np.uint8)
    lines = []
    for name, (label, prepare) in raw_calls.items():
        mine: list[float] = []
        base: list[float] = []
        for i, q in enumerate(reqs):
            call = prepare(q)
            if call is None:
                continue
            # Whichever runs second finds the first's data in cache: alternate which goes first.
            for raw_side in (True, False) if i % 2 else (False, True):
                scrub[:] = i % 256  # evict L1/L2: each side starts as cold as the other
                if raw_side:
                    t0 = time.perf_counter()
                    call()
                    base.append((time.perf_counter() - t0) * 1e6)
                    continue
                res = loop.run_until_complete(svc.search(dataclasses.replace(q, branches=(name,))))
                stats = res.branch_stats
                mine += [b.latency_ms * 1e3 for b in stats if b.branch == name and b.status.value == "ok"]
        if mine and base:
            lines += [_fmt(f"  raw {label}", base), _fmt(f"  Quarry {name} branch alone", mine, base)]
    return lines


def _raw_knn(inner: Any, k: int) -> tuple[str, Callable[[np.ndarray], Any]]:
    """The raw library's k-NN call on a vector index (hnswlib or faiss), and its name in the tables."""
    if inner.kind == "hnsw":
        return "hnswlib knn_query", lambda v: inner.raw.knn_query(v, k=k, num_threads=1)
    return "faiss search", lambda v: inner.raw.search(v, k)


def _raw_index(index: Any, k: int) -> tuple[Any, int]:
    """The library index a branch's vector index searches, and how many rows it first asks of it for k
    items: the same index and k, or a passage index's inner one and its first fetch for k items."""
    from common.index.vectors.passages import PassageIndex

    if isinstance(index, PassageIndex):
        return index.inner, index.first_fetch(k)
    return index, k


def _raw_inverted(inv: Any, terms: Any, filters: Any) -> Any:
    from common.index.text import ORD_FIELD

    searcher = inv._searcher
    hits = searcher.search(
        inv.build_query(terms, filters), limit=200, count=False, weight_by_field=inv._weight_by
    ).hits
    return searcher.fast_field_values(ORD_FIELD, [a for _s, a in hits])


def open_collection(snapshot: Path, settings: Any = None) -> Any:
    """The snapshot as its own collection (named by its manifest), sizes checked: what benchmarks load."""
    from common.settings import QuarrySettings
    from common.snapshot import read_manifest
    from retriever.generations import Collection

    settings = settings or QuarrySettings()
    return Collection(snapshot, settings.for_collection(read_manifest(snapshot).collection), verify="size")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_reload(
    root: Path, collection: str, *, swaps: int = 6, seconds: float = 10.0, threads: int = 4
) -> str:
    """Hot swap over real gRPC: Search latency under closed-loop load, steady vs while Reload alternates
    between the collection's two newest generations; reload time; process RSS with one generation
    loaded and at its peak during the swaps."""
    import threading

    import grpc

    from common.snapshot_root import SnapshotRoot, generation_name
    from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
    from retriever.api.server import QuarryServer, load_collections
    from retriever.settings import load_settings

    store = SnapshotRoot(root)
    numbers = store.numbers(collection)
    if len(numbers) < 2:
        raise ValueError(f"{root}/{collection} needs two generations (build it twice with --root)")
    gens = [generation_name(n) for n in numbers[-2:]]
    store.activate(collection, gens[0])
    token = "bench-token"
    settings = load_settings()
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"port": 0}),
            "admin": settings.admin.model_copy(update={"token": SecretStr(token)}),
        }
    )
    rss_empty = rss_bytes()
    registry = load_collections(settings, [], store)
    rss_one = rss_bytes()
    server = QuarryServer(settings, registry, store)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=120)
    target = f"127.0.0.1:{port}"
    queries = _queries(registry.get(collection), 2000, None)

    phase = ["steady"]
    lat: dict[str, list[float]] = {"steady": [], "swapping": []}
    errors: list[str] = []
    stop = threading.Event()
    peak = [rss_one]

    def client(i: int) -> None:
        with grpc.insecure_channel(target) as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            k = i
            while not stop.is_set():
                req = search_pb2.SearchRequest(
                    collection=collection, query=queries[k % len(queries)], top_k=10
                )
                t0 = time.perf_counter()
                try:
                    stub.Search(req, timeout=10)
                    lat[phase[0]].append((time.perf_counter() - t0) * 1e6)
                except grpc.RpcError as exc:
                    errors.append(exc.code().name)
                k += threads

    def sampler() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.02)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)] + [
        threading.Thread(target=sampler)
    ]
    for w in workers:
        w.start()
    reloads: list[float] = []
    walls: list[float] = []
    try:
        time.sleep(seconds)
        rss_steady = rss_bytes()  # one generation + the server, clients and buffers under load
        peak[0] = rss_steady
        phase[0] = "swapping"
        with grpc.insecure_channel(target) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            meta = (("authorization", f"Bearer {token}"),)
            for s in range(swaps):
                t0 = time.perf_counter()
                reply = admin.Reload(
                    admin_pb2.ReloadRequest(collection=collection, generation=gens[(s + 1) % 2]),
                    metadata=meta,
                    timeout=600,
                )
                walls.append((time.perf_counter() - t0) * 1000)
                reloads.append(reply.load_ms)
                time.sleep(max(0.5, seconds / swaps))
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        store.activate(collection, gens[-1])
    one_gen = max(1, rss_one - rss_empty)
    lines = [
        f"hot swap, {collection} ({len(registry.get(collection).forward)} items), generations {gens[0]} ↔ {gens[1]},",
        f"  {threads} closed-loop gRPC Search clients on this machine; {swaps} Reloads",
        _fmt("Search, steady", lat["steady"]),
        _fmt("Search, during swaps", lat["swapping"], lat["steady"]),
        f"  p99 during swaps / steady p99: {percentile(lat['swapping'], 99) / percentile(lat['steady'], 99):.2f}×",
        f"  Reload: load+validate p50 {statistics.median(reloads):.0f} ms (max {max(reloads):.0f}), "
        f"RPC wall p50 {statistics.median(walls):.0f} ms",
        f"  failed RPCs: {len(errors)} {sorted(set(errors)) if errors else ''}",
        f"  RSS: one generation adds {one_gen / 2**20:.0f} MiB; steady under load {rss_steady / 2**20:.0f} MiB; "
        f"peak during swaps {peak[0] / 2**20:.0f} MiB (+{(peak[0] - rss_steady) / 2**20:.0f} MiB)",
        f"  generation memory at the peak: {(one_gen + peak[0] - rss_steady) / one_gen:.2f}× one generation "
        "(target ≤ 2×; freed generations' heap is kept by the allocator for the next load)",
    ]
    return "\n".join(lines)


def bench_upsert(
    root: Path, collection: str, *, batches: int = 20, batch: int = 100, probes: int = 20
) -> str:
    """Real-time Upsert over real gRPC, on a private hard-linked copy of `root` (the real root's change
    log is never touched): throughput in batches, the lag from an Upsert's return to a Search (another
    connection) finding the item, and Search latency before vs after the changes. Items are SYNTHETIC
    (made-up names at random coordinates); whether the server encodes them depends on the collection
    (with a vectors part it embeds each item's text with its encoder; text-only collections embed none)."""
    import shutil
    import tempfile
    import threading

    import grpc

    from common.snapshot_root import CHANGES, WORK, SnapshotRoot
    from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
    from retriever.api.server import QuarryServer, load_collections
    from retriever.settings import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="quarry-bench-upsert-"))
    copy = tmp / "root"

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(root, copy, copy_function=link, ignore=shutil.ignore_patterns(CHANGES, WORK))
    store = SnapshotRoot(copy)
    token = "bench-token"
    settings = load_settings()
    settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"port": 0}),
            "admin": settings.admin.model_copy(update={"token": SecretStr(token)}),
        }
    )
    registry = load_collections(settings, [], store)
    coll = registry.get(collection)
    attrs = coll.attr_names
    server = QuarryServer(settings, registry, store)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=120)
    target = f"127.0.0.1:{port}"
    meta = (("authorization", f"Bearer {token}"),)
    rng = random.Random(7)
    queries = _queries(coll, 500, None)
    field = coll.text_fields[0].name

    def item(tag: str) -> admin_pb2.Item:
        it = admin_pb2.Item(id=f"bench-{tag}", text={field: f"Benchplace {tag} zq{tag}x"})
        it.lat, it.lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
        for a in attrs:
            it.attrs[a] = float(rng.randint(0, 10**6))
        return it

    def search_lat(stub: Any, n: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            stub.Search(
                search_pb2.SearchRequest(collection=collection, query=queries[i % len(queries)]), timeout=10
            )
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    try:
        with grpc.insecure_channel(target) as ch, grpc.insecure_channel(target) as ch2:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            search = search_pb2_grpc.SearchServiceStub(ch2)
            before = search_lat(search, 300)
            walls = []
            for b in range(batches):
                req = admin_pb2.UpsertRequest(
                    collection=collection, items=[item(f"{b}-{i}") for i in range(batch)]
                )
                t0 = time.perf_counter()
                reply = admin.Upsert(req, metadata=meta, timeout=600)
                walls.append(time.perf_counter() - t0)
                if reply.rejected:
                    raise RuntimeError(f"bench items rejected: {reply.rejected[0].reason}")
            after = search_lat(search, 300)
            lags, single = [], []
            for p in range(probes):
                tag = f"probe{p}"
                t0 = time.perf_counter()
                admin.Upsert(admin_pb2.UpsertRequest(collection=collection, items=[item(tag)]), metadata=meta)
                t1 = time.perf_counter()
                single.append((t1 - t0) * 1e6)
                while True:
                    res = search.Search(
                        search_pb2.SearchRequest(collection=collection, query=f"zq{tag}x", top_k=1),
                        timeout=10,
                    )
                    if res.hits and res.hits[0].id == f"bench-{tag}":
                        break
                    if time.perf_counter() - t1 > 10:
                        raise RuntimeError(f"{tag} not visible after 10 s")
                lags.append((time.perf_counter() - t1) * 1e6)
            t0 = time.perf_counter()
            ids = [f"bench-0-{i}" for i in range(batch)]
            admin.Delete(admin_pb2.DeleteRequest(collection=collection, ids=ids), metadata=meta)
            delete_s = time.perf_counter() - t0
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        shutil.rmtree(tmp, ignore_errors=True)
    n = batches * batch
    lines = [
        f"real-time Upsert, {collection} ({len(coll.base_forward)} items in the generation), SYNTHETIC items, "
        f"{'embedded by the server with ' + coll.live.vectorizer.encoder if coll.live.vectorizer else 'no vectors'}",
        f"  {batches} batches × {batch} items: {n / sum(walls):.0f} items/s "
        f"(batch p50 {statistics.median(walls) * 1000:.0f} ms, max {max(walls) * 1000:.0f} ms; "
        "durable (fsynced) and visible on return)",
        _fmt("Upsert of one item", single),
        _fmt("visibility lag (Upsert return → a Search on another connection finds it)", lags),
        f"  Delete of {batch} ids: {delete_s * 1000:.0f} ms",
        _fmt("Search, before the changes", before),
        _fmt(f"Search, after {n + probes} upserts", after, before),
    ]
    return "\n".join(lines)
