"""The open-loop harness (quarry/load.py) against a real server: it sends at the offered rate, answers are
counted by status code, the mixes are real requests, and the repetition model behaves as documented."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from common.settings import AnnSettings, CollectionSettings
from common.v1 import search_pb2 as pb
from quarry.load import (
    LoadReport,
    Mix,
    Scrape,
    StepResult,
    batched_total,
    breakdown,
    build_mix,
    floor_cpu_ms,
    ghz_binary,
    hist_mean,
    repeat_share,
    run_ghz_step,
    run_step,
    zipf_sequence,
)
from retriever.generations import Collection
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration


def test_zipf_repetition_and_repeat_share() -> None:
    pool = [f"q{i}" for i in range(1000)]
    seq = zipf_sequence(pool, 5000, 1.0, seed=1)
    assert seq.count("q0") > seq.count("q10") > seq.count("q500")  # rank 1 most frequent
    assert 0.5 < repeat_share(seq) < 1.0
    assert repeat_share(pool) == 0.0 and repeat_share(["a", "a", "b", "a"]) == 0.5


def test_mixes_are_valid_requests(tiny_snapshot: Path) -> None:
    coll = Collection(tiny_snapshot, CollectionSettings())
    for kind, cls in (
        ("search", pb.SearchRequest),
        ("recommend", pb.RecommendRequest),
        ("log_events", pb.LogEventsRequest),
    ):
        mix = build_mix(coll, kind, n=50)
        assert len(mix.requests) == 50
        for _method, body in mix.requests:
            assert cls.FromString(body).collection == "tiny"
    mixed = build_mix(coll, "mixed", n=10)
    assert {m for m, _ in mixed.requests} == {"Search", "Recommend", "LogEvents"}
    # 7 titles (Paris twice): 6 distinct sends repeat at most once; 200 Zipf draws repeat nearly always.
    assert build_mix(coll, "search", n=6, repetition="none").repeat_share <= 1 / 6
    assert build_mix(coll, "search", n=200).repeat_share > 0.9
    with pytest.raises(ValueError, match="repetition"):
        build_mix(coll, "search", repetition="sometimes")
    walls: list[float] = []
    floor = floor_cpu_ms(coll, ["paris", "上海", "zurich"], walls_out=walls)
    assert floor["total"] > 0 and floor["wall_p99"] >= floor["wall_p50"] > 0
    assert len(walls) == 3 and max(walls) >= floor["wall_p99"] >= min(walls) > 0


def test_a_paced_floor_waits_between_its_requests(tiny_snapshot: Path) -> None:
    """`pace_rps`: the floor's requests start at constant arrivals (idle between them, as a server below
    saturation receives them), so the run lasts at least (n - 1) / rate; the batched-encode pass is left
    out; a non-positive pace is refused."""
    import time

    coll = Collection(tiny_snapshot, CollectionSettings())
    texts = ["paris", "上海", "zurich", "lyon", "berlin"]
    floor_cpu_ms(coll, texts)  # warm: lazy loading is not what this times
    walls: list[float] = []
    t0 = time.perf_counter()
    paced = floor_cpu_ms(coll, texts, pace_rps=20.0, walls_out=walls)
    assert time.perf_counter() - t0 >= (len(texts) - 1) / 20.0
    assert len(walls) == len(texts) and paced["total"] > 0 and paced["wall_p99"] >= paced["wall_p50"] > 0
    assert "encode" in paced and not any(k.startswith("batched") for k in paced)
    # A request's wall time is its own work, not the wait before it (the waits alone add up to ~200 ms).
    assert sum(walls) < 1000 * (len(texts) - 1) / 20.0
    with pytest.raises(ValueError, match="pace_rps"):
        floor_cpu_ms(coll, texts, pace_rps=0)


def test_open_loop_step_against_a_real_server(server: str, tiny_snapshot: Path) -> None:
    coll = Collection(tiny_snapshot, CollectionSettings())
    good = build_mix(coll, "search", n=100)
    step = asyncio.run(run_step(server, good, rate=100, duration_s=1.0, arrival="constant"))
    assert step.sent == 100 and step.ok == 100 and step.errors == {} and step.dropped == 0
    assert 60 < step.achieved_rps < 140 and 0 < step.p50_ms <= step.p99_ms <= step.p999_ms
    missing = Mix(
        "search", [("Search", pb.SearchRequest(collection="nope", query="x").SerializeToString())], 0.0
    )
    step = asyncio.run(run_step(server, missing, rate=50, duration_s=0.5))
    assert step.ok == 0 and step.errors == {"NOT_FOUND": step.sent}


def test_floor_pays_what_a_known_user_costs(movielens_snapshot: Path, redis_url: str) -> None:
    """With behavior data the floor's requests name users, as the load mix's do: Redis reads, i2i
    expansion and the preference profile join the raw stages (and ONNX ranking, with a model)."""
    from quarry.bench import open_collection

    coll = open_collection(movielens_snapshot)
    floor = floor_cpu_ms(coll, ["star wars", "toy story", "alien"], redis_url=redis_url)
    for stage in ("redis reads", "i2i expand", "preference (numpy)", "encode", "tantivy"):
        assert floor[stage] > 0, stage
    assert floor["total"] >= sum(floor[s] for s in ("redis reads", "i2i expand", "tantivy")) * 0.99
    # The server batches concurrent queries' encodings (ann.query_batch, 8 by default): the floor says
    # what the same texts cost the encoder in such batches, and the request total with it.
    assert floor["batched encode/8"] > 0
    assert batched_total(floor) == pytest.approx(floor["total"] - floor["encode"] + floor["batched encode/8"])
    alone = Collection(movielens_snapshot, CollectionSettings(ann=AnnSettings(query_batch=1)))
    unbatched = floor_cpu_ms(alone, ["star wars"])
    assert batched_total(unbatched) is None and not any(k.startswith("batched") for k in unbatched)


@pytest.mark.skipif(ghz_binary() is None, reason="no ghz binary (../shared/tools/ghz or on PATH)")
def test_ghz_step_against_a_real_server(server: str, tiny_snapshot: Path) -> None:
    """`--client ghz`: ghz sends the mix's own requests (as protobuf JSON through the .proto) at the rate;
    every answer is counted, errors by gRPC code name, percentiles from its per-request details; a mix of
    several methods is refused (ghz calls one per run)."""
    coll = Collection(tiny_snapshot, CollectionSettings())
    good = build_mix(coll, "search", n=100)
    ghz = ghz_binary()
    assert ghz is not None
    step = run_ghz_step(server, good, rate=80, duration_s=1.0, ghz=ghz, concurrency=8, connections=2)
    assert step.client == "ghz" and step.errors == {}
    assert 70 <= step.sent <= 90 and step.ok == step.sent
    assert 40 < step.achieved_rps < 120 and 0 < step.p50_ms <= step.p99_ms <= step.p999_ms
    recommend = run_ghz_step(server, build_mix(coll, "recommend", n=20), rate=20, duration_s=1.0, ghz=ghz)
    assert recommend.ok == recommend.sent > 0
    missing = Mix(
        "search", [("Search", pb.SearchRequest(collection="nope", query="x").SerializeToString())], 0.0
    )
    step = run_ghz_step(server, missing, rate=20, duration_s=1.0, ghz=ghz)
    assert step.ok == 0 and step.errors == {"NOT_FOUND": step.sent}
    with pytest.raises(ValueError, match="one method"):
        run_ghz_step(server, build_mix(coll, "mixed", n=10), rate=10, duration_s=1.0, ghz=ghz)


def test_bench_search_sets_each_branch_beside_its_raw_calls(movielens_snapshot: Path, redis_url: str) -> None:
    """`quarry bench search` times the raw calls that give each branch's answer (for inverted: the query
    built with tantivy's API, the search and the ordinals read back) and prints branch / raw ratios."""
    from quarry.bench import bench_search

    out = bench_search(movielens_snapshot, n=20, redis_url=redis_url)
    for line in (
        "tantivy query+search+ids",
        "inverted   / tantivy search",
        "inverted   / tantivy query+search+ids",
    ):
        assert line in out, out
    assert "ann        / encode + " in out, out
    ratio = float(out.split("inverted   / tantivy query+search+ids")[1].split("×")[0])
    assert ratio > 0
    # Each branch alone, beside its raw calls timed in the same cache state.
    alone = out.split("each branch alone")[1]
    for line in ("raw tantivy query+search+ids", "Quarry inverted branch alone", "Quarry ann branch alone"):
        assert line in alone, out
    assert float(alone.split("Quarry inverted branch alone")[1].split("ratio(p50)")[1].split("×")[0]) > 0


def test_a_step_reads_the_servers_query_encode_batches(movielens_snapshot: Path) -> None:
    """Each step's mean query-encode batch comes from the server's own Prometheus endpoint: every Search
    of the step encoded its text (cache off) through the batcher, and the reading says so."""
    from prometheus_client import REGISTRY, start_http_server

    from quarry.bench import open_collection

    httpd, _thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    url = f"http://127.0.0.1:{httpd.server_port}/metrics"
    srv = ServerThread([movielens_snapshot], collections={"movielens": {"ann": {"query_cache_size": 0}}})
    try:
        mix = build_mix(open_collection(movielens_snapshot), "search", n=40, repetition="none")
        before = Scrape.read(url)
        step = asyncio.run(run_step(srv.target, mix, rate=40, duration_s=1.0, arrival="constant"))
        after = Scrape.read(url)
    finally:
        srv.close()
        httpd.shutdown()
        httpd.server_close()
    assert step.ok == step.sent == 40
    assert before is not None and after is not None
    name = "quarry_query_encode_batch_size"
    calls = after.total(f"{name}_count") - before.total(f"{name}_count")
    queries = after.total(f"{name}_sum") - before.total(f"{name}_sum")
    assert queries == 40 and 1 <= calls <= 40, (calls, queries)
    breakdown(step, before, after, "Search")
    assert step.encode_batch == hist_mean(before, after, name) == queries / calls >= 1.0
    assert hist_mean(before, before, name) is None
    unread = StepResult(40, 1.0, 40, 40, 40.0, 1.0, 1.0, 1.0, 1.0)
    breakdown(unread, None, after, "Search")
    assert unread.encode_batch is None
    assert Scrape.read(None) is None
    assert Scrape.read(f"http://127.0.0.1:{httpd.server_port}/metrics") is None  # no longer served


def test_server_memory_counts_the_workers_once(tmp_path: Path) -> None:
    """A supervisor's figure includes its children; pages they share (a file mapped by both) count once."""
    import os
    import subprocess
    import sys

    from quarry.load import _family, _proc_memory_bytes

    blob = "import mmap, sys, time; f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)"
    blob += "; _ = sum(m[i] for i in range(0, len(m), 4096)); print('ready', flush=True); time.sleep(30)"
    path = tmp_path / "mapped.bin"
    path.write_bytes(os.urandom(64 * 2**20))  # 64 MiB, touched page by page by both children
    alone = _proc_memory_bytes(os.getpid())
    kids = [
        subprocess.Popen([sys.executable, "-c", blob, str(path)], stdout=subprocess.PIPE) for _ in range(2)
    ]
    try:
        for k in kids:
            assert k.stdout is not None and k.stdout.readline().startswith(b"ready")
        assert set(_family(os.getpid())) >= {os.getpid(), *(k.pid for k in kids)}
        both = _proc_memory_bytes(os.getpid()) - alone
        # Each child maps the 64 MiB: summed RSS would say >= 128 MiB, PSS says it once (plus two
        # interpreters, ~10 MiB each).
        assert 64 * 2**20 <= both < 110 * 2**20, both / 2**20
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_rpc_floor_server_answers_every_method_empty() -> None:
    """quarry.rpc_floor serves the service's own methods (decoding each request) with empty answers, in
    its own process, until SIGTERM."""
    import grpc

    from quarry.load import start_rpc_floor

    proc, target = start_rpc_floor()
    try:
        with grpc.insecure_channel(target) as ch:
            for method, request, answer in (
                ("Search", pb.SearchRequest(collection="x", query="paris"), pb.SearchResponse),
                ("Recommend", pb.RecommendRequest(collection="x", user_id="u"), pb.SearchResponse),
                ("LogEvents", pb.LogEventsRequest(collection="x"), pb.LogEventsResponse),
            ):
                call = ch.unary_unary(f"/quarry.v1.SearchService/{method}")
                assert answer.FromString(call(request.SerializeToString(), timeout=5)) == answer()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_rpc_floor_bounds_the_rate(tiny_snapshot: Path) -> None:
    """The RPC floor: the mix's requests at the rate against the empty server; its server and client CPU a
    call, both paid on the same cores as the raw libraries' work, bound the rate (`bound_rps`), and the
    report prints that bound and each step's share of it."""
    from quarry.load import CORES, LoadReport, StepResult, measure_rpc_floor

    coll = Collection(tiny_snapshot, CollectionSettings())
    rf = measure_rpc_floor(build_mix(coll, "search", n=50), rate=100, duration_s=1.0)
    assert rf.errors == {} and rf.client == "python" and 60 < rf.achieved_rps < 140
    # An empty answer still costs each side real CPU: tens of µs at the least, far under 50 ms.
    assert 0.01 < rf.server_ms < 50 and 0.01 < rf.client_ms < 50
    assert rf.bound_rps(5.0) == pytest.approx(CORES * 1000 / (5.0 + rf.server_ms + rf.client_ms))
    assert rf.bound_rps(5.0) < CORES * 1000 / 5.0

    floor = {"total": 5.0, "encode": 3.0, "batched encode/8": 2.0, "batched total/8": 4.0}
    floor |= {"wall_p50": 5.0, "wall_p99": 7.0}
    step = StepResult(100, 1.0, 100, 100, 99.0, 5.0, 6.0, 8.0, 9.0, client_cpu_cores=0.05)
    report = LoadReport("m", "tiny", "search", "none", 0.0, floor, 400.0, [step], 500.0, rf)
    assert report.bound_rps == pytest.approx(rf.bound_rps(4.0))  # against the batched floor
    text = report.table()
    assert "RPC floor" in text and f"bound {report.bound_rps:.0f} req/s" in text
    assert f"{rf.bound_rps(5.0):.0f} = {rf.bound_rps(5.0) / 400.0:.2f} with encodes one at a time" in text
    assert f"{99.0 / report.bound_rps:9.2f}" in text.splitlines()[-1]  # the step's ach/bound
    assert '"bound_rps"' in report.to_json()
    assert LoadReport("m", "tiny", "search", "none", 0.0, floor, 400.0, [step]).bound_rps is None


def test_the_raw_server_does_the_floors_work_behind_grpc(movielens_snapshot: Path, redis_url: str) -> None:
    """quarry.rpc_floor --snapshot (the raw server): Search does the floor's raw calls for the request's text
    in every worker process on one port and answers empty. Its Redis reads show in the Redis server's
    command counts, its encoding in its CPU; Recommend stays empty; SIGTERM stops the workers too."""
    import grpc
    import redis

    from quarry.load import _family, _proc_cpu_s, start_rpc_floor

    store = redis.Redis.from_url(redis_url)

    def lranges() -> int:
        return int(store.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))

    proc, target = start_rpc_floor(movielens_snapshot, redis_url=redis_url, workers=2)
    try:
        family = _family(proc.pid)
        assert len(family) == 2  # the first process serves too, beside the one it started
        before = lranges()
        cpu0 = {pid: _proc_cpu_s(pid) for pid in family}
        texts = ["star wars", "toy story", "alien", "heat"] * 5
        # A channel each (no shared subchannel): the kernel deals the connections out to both workers.
        for i, text in enumerate(texts):
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                call = ch.unary_unary("/quarry.v1.SearchService/Search")
                body = call(
                    pb.SearchRequest(collection="movielens", query=text).SerializeToString(), timeout=30
                )
                assert pb.SearchResponse.FromString(body) == pb.SearchResponse()
                if i == 0:
                    rec = ch.unary_unary("/quarry.v1.SearchService/Recommend")
                    answer = rec(
                        pb.RecommendRequest(collection="x", user_id="u").SerializeToString(), timeout=5
                    )
                    assert pb.SearchResponse.FromString(answer) == pb.SearchResponse()
        assert lranges() - before >= len(texts)  # each Search read its user's recent events
        child = next(pid for pid in family if pid != proc.pid)
        own = {pid: _proc_cpu_s(pid) - cpu0[pid] for pid in family}
        own[proc.pid] -= own[child]  # the first process's figure includes its child's
        assert all(v > 0.01 for v in own.values()), own  # both workers did Search work
        # A MiniLM encoding alone takes milliseconds; an empty answer, tens of µs.
        assert sum(own.values()) * 1000 / len(texts) > 1.0
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert not [pid for pid in family if Path(f"/proc/{pid}").exists()]


def _short_load(snapshot: Path, rates: list[float], **options: Any) -> LoadReport:
    """run_load with a server it starts, 1-s Search steps of a no-repetition mix at constant arrivals, a
    3-request floor and no RPC floor; `options` for the rest."""
    from quarry.load import run_load

    return run_load(
        snapshot,
        target=None,
        server_pid=None,
        rates=rates,
        duration_s=1.0,
        kind="search",
        repetition="none",
        zipf_s=1.0,
        arrival="constant",
        max_in_flight=64,
        floor_n=3,
        rpc_floor=False,
        **options,
    )


def test_run_load_sends_the_same_steps_to_the_raw_server(tiny_snapshot: Path) -> None:
    """`run_load(raw_server=True)`: after Quarry's steps, the raw server gets each step's rate and requests
    (from the same place in the mix), in the processes asked for, and the report carries both."""
    report = _short_load(tiny_snapshot, [20, 40], paced_floor=False, raw_server=True, raw_workers=2)
    assert report.raw_workers == 2 and len(report.raw_steps) == len(report.steps) == 2
    for ours, raw in zip(report.steps, report.raw_steps, strict=True):
        assert raw.offered_rps == ours.offered_rps and raw.first_request == ours.first_request
        assert raw.ok == raw.sent > 0 and raw.errors == {}
        assert raw.server_cpu_cores is not None and raw.server_cpu_cores > 0
    assert "raw server (quarry.rpc_floor --snapshot, 2 process(es)" in report.table()


@pytest.mark.skipif(ghz_binary() is None, reason="no ghz binary (../shared/tools/ghz or on PATH)")
def test_ghz_steps_report_the_clients_cpu(server: str, tiny_snapshot: Path) -> None:
    """ghz runs on the server's machine: a step reports its CPU (the child's, once it ended), and the RPC
    floor measured with ghz charges it per call."""
    from quarry.load import measure_rpc_floor

    coll = Collection(tiny_snapshot, CollectionSettings())
    mix = build_mix(coll, "search", n=50)
    ghz = ghz_binary()
    assert ghz is not None
    step = run_ghz_step(server, mix, rate=50, duration_s=1.0, ghz=ghz, concurrency=8, connections=2)
    assert step.ok == step.sent and step.client_cpu_cores is not None and step.client_cpu_cores > 0
    rf = measure_rpc_floor(mix, rate=50, duration_s=1.0, client="ghz", ghz=ghz, ghz_concurrency=8)
    assert rf.client == "ghz" and rf.errors == {} and rf.server_ms > 0 and rf.client_ms > 0


def test_steps_never_resend_the_warm_ups_requests(tiny_snapshot: Path) -> None:
    """`run_load` warms the server it starts up with the mix's first requests; the steps go on after them,
    so a no-repetition mix stays one (sent again, they would be query-cache hits), and each step says
    where in the mix it began."""
    report = _short_load(tiny_snapshot, [20, 20])
    first, second = report.steps
    assert first.first_request >= 30  # the warm-up: 2 s at the first rate (20/s), less what it dropped
    assert second.first_request == first.first_request + first.sent + first.dropped
    assert first.ok == first.sent > 0 and report.rpc_floor is None
    # The ideal server over the floor's own request times, with the steps' (constant) arrivals: never
    # faster than the floor's median request, and printed beside it.
    assert report.ideal_arrival == "constant" and report.ideal_p99_ms is not None
    assert report.ideal_p99_ms >= report.floor["wall_p50"] * 0.99
    ratio = report.ideal_p99_ms / report.floor["wall_p99"]
    assert f"p99 {report.ideal_p99_ms:.2f} ms = {ratio:.1f}x the floor's p99" in report.table()
    # Where the time went, from the /metrics of the server it started: the handler inside the client's
    # latency, the pipeline's stages in their order inside the handler, the branches inside recall.
    from retriever.service import SEARCH

    for step in report.steps:
        assert step.mean_ms is not None and step.handler_ms is not None
        assert 0 < step.handler_ms < step.mean_ms
        assert list(step.stage_ms) == list(SEARCH.stage_names)
        assert sum(step.stage_ms.values()) < step.handler_ms
        assert "inverted" in step.branch_ms and max(step.branch_ms.values()) < step.stage_ms["recall"]
    assert "where the time went" in report.table()
    # The floor paced at the first step's rate (constant arrivals), and the server's CPU a request.
    assert report.floor_paced is not None and report.floor_paced_rps == 20
    assert report.floor_paced["total"] > 0 and "floor paced at 20 req/s" in report.table()
    for step in report.steps:
        per_req = step.server_cpu_ms_per_request
        assert per_req is not None and per_req > 0
