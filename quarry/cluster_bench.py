"""`quarry bench cluster`: a shard set on loopback (N shards × R replicas + a root, separate processes,
quarry.localcluster) beside the same collection on one node (`quarry serve`), in one run:

1. **equality** — real requests (Search: text, text + location, text + user; Recommend: user, user +
   location) to both; how many answers are identical (ids, order, per-branch sources) and the largest
   relative score difference;
2. **fan-out cost** — one client, one request at a time: p50/p99 on one node and through the root, the
   shards' own latency as the root sees it (AdminService Status), each process's RSS;
3. **failures under steady open-loop load** — a baseline step; one replica of every shard SIGKILLed during
   a step (failed RPCs, degraded answers, p99); both replicas of one shard down (every answer degraded,
   no error);
4. **hedging** — one replica stalled (SIGSTOP/SIGCONT: `stall_ms` out of every `stall_every_ms`) under the
   same load, with hedging on and then off (the root restarted with cluster.hedge=false): p50/p99.

Everything runs on this machine's cores, the load generator included: figures are for comparing the
configurations measured in the same run, not for capacity planning (docs/scaling.md turns them into one).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from quarry.bench import percentile, rss_bytes
from quarry.load import Mix, StepResult, machine, run_step, start_server
from quarry.localcluster import LocalCluster

TOKEN = "bench-cluster"


@dataclass
class ClusterReport:
    machine: str
    collection: str
    items: int
    shards: int
    replicas: int
    equality: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    memory_mib: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    disk_mib: dict[str, float] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    build_s: dict[str, float] = field(default_factory=dict)


def _ensure(
    dataset: str, variant: str, work: Path, shards: int, encoder: str | None, users: int
) -> tuple[Path, Path, str, dict[str, float]]:
    """The single-node snapshot and a snapshot root holding the shard set, built once and reused."""
    from common.snapshot_root import SnapshotRoot
    from indexer.build import build_snapshot
    from indexer.datasets import geonames, load_dataset
    from indexer.sharded import build_sharded

    if dataset == "geonames":
        ds = geonames.load(work, variant=variant)

        def events() -> Any:
            return geonames.synthetic_events(variant, users=users) if users else None

        name = f"geonames-{variant}"
    else:
        ds = load_dataset(dataset, None if dataset == "scifact" else work)
        name = ds.name

        def events() -> Any:
            return ds.events() if ds.events is not None else None

    opts = ds.build_options(collection=name, encoder=encoder, progress=False, overwrite=True)
    single, root = work / f"single-{name}-{encoder or 'text'}", work / f"root-{shards}-{encoder or 'text'}"
    times: dict[str, float] = {}
    if not (single / "manifest.json").is_file():
        t0 = time.perf_counter()
        build_snapshot(ds.items(), single, opts, ds.source, events())
        times["single"] = round(time.perf_counter() - t0, 1)
    store = SnapshotRoot(root)
    if name not in store.collections():
        t0 = time.perf_counter()
        with store.publish(name) as out:
            build_sharded(ds.items(), out, opts, ds.source, events(), shards=shards)
        times["sharded"] = round(time.perf_counter() - t0, 1)
    return single, root, name, times


def _requests(coll: Any, n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """Real requests over the collection: texts from its own titles, locations of its items, users
    from its histories (see quarry.load.query_pool)."""
    import numpy as np

    from common.v1 import search_pb2 as pb
    from quarry.load import query_pool

    rnd = random.Random(seed)
    texts = query_pool(coll)
    users = coll.behavior.sample_users(2000) if coll.behavior is not None else []
    fw = coll.forward
    located = np.flatnonzero(~np.isnan(fw.lat))
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        kind = i % 5
        loc = int(located[rnd.randrange(len(located))]) if len(located) else None
        user = rnd.choice(users) if users else ""
        if kind < 3:
            req = pb.SearchRequest(collection=coll.name, query=texts[i % len(texts)], top_k=10)
            if kind == 1 and loc is not None:
                req.location.lat, req.location.lon = float(fw.lat[loc]), float(fw.lon[loc])
            if kind == 2:
                req.user_id = user
            out.append(("Search", req.SerializeToString()))
        elif users:
            rec = pb.RecommendRequest(collection=coll.name, user_id=user, top_k=10)
            if kind == 4 and loc is not None:
                rec.location.lat, rec.location.lon = float(fw.lat[loc]), float(fw.lon[loc])
            out.append(("Recommend", rec.SerializeToString()))
        else:
            out.append(
                (
                    "Search",
                    pb.SearchRequest(
                        collection=coll.name, query=texts[(i * 7) % len(texts)]
                    ).SerializeToString(),
                )
            )
    return out


def _same(a: Any, b: Any) -> tuple[bool, float]:
    if [h.id for h in a.hits] != [h.id for h in b.hits] or a.degraded or b.degraded:
        return False, math.inf
    worst = 0.0
    for x, y in zip(a.hits, b.hits, strict=True):
        if [(s.branch, s.rank) for s in x.sources] != [(s.branch, s.rank) for s in y.sources]:
            return False, math.inf
        for u, v in [(x.score, y.score)] + [
            (s.score, t.score) for s, t in zip(x.sources, y.sources, strict=True)
        ]:
            if v:
                worst = max(worst, abs(u - v) / abs(v))
    return True, worst


def _equality(root: str, single: str, reqs: list[tuple[str, bytes]]) -> dict[str, Any]:
    from common.v1 import search_pb2 as pb

    same, worst = 0, 0.0
    branches: set[str] = set()
    first_diff: list[str] = []
    with grpc.insecure_channel(root) as rc, grpc.insecure_channel(single) as sc:
        for method, body in reqs:
            r = pb.SearchResponse.FromString(
                rc.unary_unary(f"/quarry.v1.SearchService/{method}")(body, timeout=30)
            )
            s = pb.SearchResponse.FromString(
                sc.unary_unary(f"/quarry.v1.SearchService/{method}")(body, timeout=30)
            )
            ok, rel = _same(r, s)
            branches.update(src.branch for h in s.hits for src in h.sources)
            if ok:
                same += 1
                worst = max(worst, rel)
            elif len(first_diff) < 3:
                first_diff.append(f"{method}: {[h.id for h in r.hits][:5]} vs {[h.id for h in s.hits][:5]}")
    return {
        "requests": len(reqs),
        "identical": same,
        "max_rel_score_diff": worst,
        "branches_seen": sorted(branches),
        "first_differences": first_diff,
    }


def _sequential(target: str, reqs: list[tuple[str, bytes]]) -> dict[str, float]:
    lat = []
    with grpc.insecure_channel(target) as ch:
        calls = {m: ch.unary_unary(f"/quarry.v1.SearchService/{m}") for m in ("Search", "Recommend")}
        for method, body in reqs[:20]:
            calls[method](body, timeout=30)  # warm
        for method, body in reqs:
            t0 = time.perf_counter()
            calls[method](body, timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2), "n": len(lat)}


def _shard_latency(target: str) -> list[dict[str, Any]]:
    from common.v1 import admin_pb2 as apb
    from common.v1 import admin_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        st = admin_pb2_grpc.AdminServiceStub(ch).Status(
            apb.StatusRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10
        )
    return [
        {
            "shard": s.shard,
            "replicas": [
                {"address": r.address, "p50_ms": round(r.p50_ms, 2), "p95_ms": round(r.p95_ms, 2)}
                for r in s.replicas
            ],
        }
        for s in st.collections[0].shards
    ]


def _mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _cpu(pids: dict[str, int]) -> dict[str, tuple[int, float]]:
    from quarry.load import _proc_cpu_s

    return {k: (pid, _proc_cpu_s(pid)) for k, pid in pids.items()}


def _per_request(before: dict[str, tuple[int, float]], requests: int) -> dict[str, float]:
    """CPU milliseconds per answered request of each process since `before` (summed over shards too)."""
    from quarry.load import _proc_cpu_s

    out = {k: round((_proc_cpu_s(pid) - t0) * 1000 / max(requests, 1), 2) for k, (pid, t0) in before.items()}
    shards = [v for k, v in out.items() if k.startswith("shard")]
    if shards:
        out["all_shards"] = round(sum(shards), 2)
        out["per_shard_replica_mean"] = round(sum(shards) / len(shards), 2)
    return out


def _hedges(port: int) -> tuple[int, int]:
    """The root's hedges sent and won so far, summed over shards (its Prometheus endpoint)."""
    from quarry.load import metric_sums

    names = ("quarry_cluster_hedges_total", "quarry_cluster_hedges_won_total")
    total = metric_sums(f"http://127.0.0.1:{port}/metrics", names)
    return int(total[names[0]]), int(total[names[1]])


def _step(target: str, mix: Mix, rate: float, seconds: float, offset: int) -> StepResult:
    return asyncio.run(run_step(target, mix, rate, seconds, offset=offset, timeout_s=5.0))


def _during(
    target: str, mix: Mix, rate: float, seconds: float, offset: int, action: Any, at_s: float
) -> StepResult:
    """A load step with `action()` run `at_s` seconds into it (in a thread, so sending goes on)."""

    async def go() -> StepResult:
        async def act() -> None:
            await asyncio.sleep(at_s)
            await asyncio.to_thread(action)

        task = asyncio.create_task(act())
        res = await run_step(target, mix, rate, seconds, offset=offset, timeout_s=5.0)
        await task
        return res

    return asyncio.run(go())


def bench_cluster(
    *,
    dataset: str,
    variant: str = "cities500",
    work: Path,
    shards: int = 4,
    replicas: int = 2,
    encoder: str | None = None,
    users: int = 20_000,
    n_equal: int = 500,
    n_latency: int = 400,
    rate: float = 40.0,
    step_s: float = 12.0,
    stall_ms: float = 250.0,
    stall_every_ms: float = 4000.0,
    out_json: Path | None = None,
    cost_only: bool = False,
) -> ClusterReport:
    from quarry.bench import open_collection
    from quarry.localcluster import free_port

    metrics_port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    single_dir, root_dir, name, built = _ensure(dataset, variant, work, shards, encoder, users)
    coll = open_collection(single_dir)
    reqs = _requests(coll, max(n_equal, n_latency))
    mix = Mix("cluster", [r for r in reqs if r[0] in ("Search", "Recommend")], 0.0)
    report = ClusterReport(machine(), name, len(coll.base_forward), shards, replicas, build_s=built)
    gen = sorted((root_dir / name).glob("gen-*"))[-1]
    report.disk_mib = {"one_node": _mib(single_dir), "global": _mib(gen / "global")}
    report.disk_mib.update({d.name: _mib(d) for d in sorted(gen.glob("shard-*"))})
    del coll
    env = {"QUARRY_ADMIN__TOKEN": TOKEN}
    proc, single = start_server([single_dir], env=env)
    cluster = LocalCluster(root_dir, shards, replicas, env=env, log_level="ERROR")
    try:
        cluster.start()
        print(f"{name}: {report.items} items; one node at {single}, root at {cluster.target} "
              f"({shards} shards × {replicas} replicas)", flush=True)  # fmt: skip
        report.equality = _equality(cluster.target, single, reqs[:n_equal])
        e = report.equality
        print(f"equality: {e['identical']}/{e['requests']} identical, max relative score difference "
              f"{e['max_rel_score_diff']:.1e}, branches {e['branches_seen']}", flush=True)  # fmt: skip
        one, via_root = _sequential(single, reqs[:n_latency]), _sequential(cluster.target, reqs[:n_latency])
        report.latency = {
            "one_node": one,
            "root": via_root,
            "shards_seen_by_root": _shard_latency(cluster.target),
        }
        shard_p50 = [
            r["p50_ms"] for s in report.latency["shards_seen_by_root"] for r in s["replicas"] if r["p50_ms"]
        ]
        print(f"one client: one node p50 {one['p50_ms']} / p99 {one['p99_ms']} ms; root p50 {via_root['p50_ms']} / "
              f"p99 {via_root['p99_ms']} ms; a shard's own answer p50 {percentile(shard_p50, 50):.2f} ms", flush=True)  # fmt: skip
        report.memory_mib = {k: round(rss_bytes(pid) / 2**20, 1) for k, pid in cluster.pids().items()}
        report.memory_mib["one_node"] = round(rss_bytes(proc.pid) / 2**20, 1)
        print(f"RSS MiB: {report.memory_mib}", flush=True)
        offset = 0

        def record(label: str, res: StepResult) -> None:
            nonlocal offset
            offset += res.sent
            report.steps[label] = asdict(res)
            print(f"{label:<34} {res.achieved_rps:7.1f}/s  p50 {res.p50_ms:7.2f}  p99 {res.p99_ms:8.2f} ms  "
                  f"errors {res.errors or 0}  degraded {res.degraded}/{res.ok}", flush=True)  # fmt: skip

        cpu0 = _cpu({"one_node": proc.pid})
        record("one node, steady", _step(single, mix, rate, step_s, offset))
        report.cpu_ms_per_request.update(_per_request(cpu0, report.steps["one node, steady"]["ok"]))
        cpu0 = _cpu(cluster.pids())
        record("root, steady", _step(cluster.target, mix, rate, step_s, offset))
        report.cpu_ms_per_request.update(_per_request(cpu0, report.steps["root, steady"]["ok"]))
        print(f"CPU ms per request: {report.cpu_ms_per_request}", flush=True)
        if cost_only:
            return report

        def kill_one_each() -> None:
            for s in range(shards):
                cluster.kill(s, 0)

        record(
            "root, one replica per shard killed",
            _during(cluster.target, mix, rate, step_s, offset, kill_one_each, step_s / 3),
        )
        for s in range(shards):
            cluster.restart(s, 0)

        def kill_shard() -> None:
            for r in range(replicas):
                cluster.kill(1, r)

        record(
            "root, both replicas of shard 1 down",
            _during(cluster.target, mix, rate, step_s, offset, kill_shard, 0.0),
        )
        for r in range(replicas):
            cluster.restart(1, r)
        # Hedging: a replica that now and then stalls (like a long GC pause), the case hedging is for —
        # a rare slow call; measured twice with a fresh root each, after an unmeasured warm-up step.
        for hedge in ("true", "false"):
            cluster.restart_root(
                {"QUARRY_CLUSTER__HEDGE": hedge, "QUARRY_SERVER__METRICS_PORT": str(metrics_port)}
            )
            _step(cluster.target, mix, rate, 4.0, offset)
            before = _hedges(metrics_port)
            cluster.pause(0, 0, stall_ms, stall_every_ms)
            try:
                res = _step(cluster.target, mix, rate, 2 * step_s, offset)
            finally:
                cluster.resume(0, 0)
            label = f"root, a replica stalling, hedging {'on' if hedge == 'true' else 'off'}"
            record(label, res)
            sent, won = (a - b for a, b in zip(_hedges(metrics_port), before, strict=True))
            report.steps[label]["hedges"] = {"sent": sent, "won": won}
            print(f"{'':34} hedges sent {sent}, answered first {won}", flush=True)
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(10)
        if out_json is not None:
            out_json.write_text(json.dumps(asdict(report), indent=1))
    return report


__all__ = ["ClusterReport", "bench_cluster"]
