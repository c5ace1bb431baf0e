"""`quarry bench load`: an open-loop load generator over real gRPC, beside the raw-library floor.

Open loop: request i is *scheduled* at t_i (Poisson or constant arrivals at the offered rate) whatever the
answers do, and its latency is measured from t_i, so queueing anywhere (client, network, server) shows in
the percentiles instead of silently lowering the rate (no coordinated omission). A cap on requests in
flight bounds the client; a request that would exceed it is counted as `dropped`, never delayed.

Query mix from real data: GeoNames names (English, and the Chinese alternate names such as 上海) for the
geonames collection, SciFact claims for scifact, real item titles otherwise. Repetition: `zipf` draws
queries with P(rank r) ∝ r^-s (s = 1.0 by default; web query logs are close to it), `none` sends each query
once. The report gives the share of requests whose text appeared earlier in the same run: the hit rate an
unbounded query-embedding cache would see (the 10k-entry LRU sees at most that).

Two clients: this module's own (Python, asyncio; truly open loop, but on a 2-core machine it takes CPU
from the server) and ghz (`--client ghz`: Go, far cheaper per request; it paces at the rate with a fixed
pool of workers, so once every worker waits on an answer it sends late and its latencies understate
queueing — closed-loop behaviour past saturation). Both send the same request sequence; ghz does not
read answers, so its steps count no degraded ones.

The floor: the same Search requests through the raw libraries in this process, one at a time, one thread
(tantivy search, onnxruntime encode, hnswlib/faiss search, cKDTree, i2i expand, RRF in numpy): CPU
milliseconds per request → the 2-core ceiling (2000 / ms req/s). Every figure is printed beside it.

The RPC floor (`quarry.rpc_floor`, after the steps): grpc.aio answering empty responses, sent the same
requests by the same client at the highest rate: what the transport and the load generator cost a call
before any Search work. On one machine the client runs on the server's cores, so the raw-library floor
plus these two bound what any server on this transport can answer here (`LoadReport.bound_rps`; each
step's `ach/bound`), however lean its own code.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quarry.bench import open_collection, percentile, rss_bytes

_HAN = re.compile(r"[\u4e00-\u9fff]")


# ----------------------------------------------------------------------------------------------- mixes


def query_pool(collection: Any, data_dir: Path | None = None, limit: int = 20_000) -> list[str]:
    """Real query texts for a loaded collection (see the module docstring)."""
    rnd = random.Random(3)
    if collection.name == "scifact":
        from indexer.datasets import default_data_dir, scifact

        pool = list(scifact.queries(data_dir or default_data_dir()).values())
    else:
        pool = [t for t in collection.forward.column("title") if t]
        if collection.name == "geonames":
            alts = (
                collection.forward.column("text_alt_names")
                if "alt_names" in collection.forward.text_names
                else []
            )
            han = [w for a in alts if a for w in re.split(r"[;,\s]+", a) if _HAN.search(w)]
            rnd.shuffle(han)
            # About one query in five in Chinese, like the demo's 上海.
            pool = pool[: limit * 4 // 5] + han[: limit // 5]
    rnd.shuffle(pool)
    return pool[:limit]


def zipf_sequence(pool: Sequence[str], n: int, s: float, seed: int) -> list[str]:
    ranks = np.arange(1, len(pool) + 1, dtype=np.float64)
    p = ranks**-s
    p /= p.sum()
    idx = np.random.default_rng(seed).choice(len(pool), size=n, p=p)
    return [pool[i] for i in idx]


def repeat_share(texts: Sequence[str]) -> float:
    seen: set[str] = set()
    repeats = 0
    for t in texts:
        repeats += t in seen
        seen.add(t)
    return repeats / max(1, len(texts))


@dataclass
class Mix:
    """Pre-serialised requests, sent in order and cycled: (method, bytes)."""

    name: str
    requests: list[tuple[str, bytes]]
    repeat_share: float


def build_mix(
    collection: Any,
    kind: str,
    *,
    n: int = 20_000,
    repetition: str = "zipf",
    zipf_s: float = 1.0,
    top_k: int = 10,
    seed: int = 1,
    data_dir: Path | None = None,
) -> Mix:
    from common.v1 import search_pb2 as pb

    pool = query_pool(collection, data_dir)
    if repetition == "zipf":
        texts = zipf_sequence(pool, n, zipf_s, seed)
    elif repetition == "none":
        texts = (pool * (n // max(1, len(pool)) + 1))[:n]
    else:
        raise ValueError(f"repetition must be 'zipf' or 'none', got {repetition!r}")
    users = collection.behavior.sample_users(1000) if collection.behavior is not None else []
    fw = collection.forward
    located = np.flatnonzero(~np.isnan(fw.lat))
    rnd = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for i, text in enumerate(texts):
        k = kind if kind != "mixed" else ("Search", "Search", "Search", "Recommend", "LogEvents")[i % 5]
        user = rnd.choice(users) if users else f"u{rnd.randrange(10_000)}"
        if k in ("search", "Search"):
            req = pb.SearchRequest(
                collection=collection.name, query=text, top_k=top_k, user_id=user if users else ""
            )
            if len(located) and i % 2:
                o = int(located[rnd.randrange(len(located))])
                req.location.lat, req.location.lon = float(fw.lat[o]), float(fw.lon[o])
            out.append(("Search", req.SerializeToString()))
        elif k in ("recommend", "Recommend"):
            r = pb.RecommendRequest(collection=collection.name, user_id=user, top_k=top_k)
            if len(located):
                o = int(located[rnd.randrange(len(located))])
                r.location.lat, r.location.lon = float(fw.lat[o]), float(fw.lon[o])
            out.append(("Recommend", r.SerializeToString()))
        elif k in ("log_events", "LogEvents"):
            item = fw.rows([rnd.randrange(len(fw))])[0]["id"]
            ev = pb.LogEventsRequest(collection=collection.name)
            ev.events.add(event_id=f"load-{seed}-{i}", user_id=user, item_id=item, type="click")
            out.append(("LogEvents", ev.SerializeToString()))
        else:
            raise ValueError(f"unknown mix {kind!r} (search, recommend, log_events, mixed)")
    return Mix(kind, out, repeat_share(texts) if kind in ("search", "mixed") else 0.0)


# ------------------------------------------------------------------------------------------- open loop


@dataclass
class StepResult:
    offered_rps: float
    duration_s: float
    sent: int
    ok: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    #: Answers flagged degraded (a branch or, behind a root, a shard missing).
    degraded: int = 0
    server_cpu_cores: float | None = None
    #: Memory of the server process and its workers after the step: their PSS summed (shared pages
    #: counted once; each process's RSS where /proc/<pid>/smaps_rollup cannot be read), MiB.
    server_rss_mib: float | None = None
    #: Which client sent the step: "python" (this module) or "ghz".
    client: str = "python"
    #: Queries a batched encoder call held on average during the step (the server's
    #: quarry_query_encode_batch_size), when its metrics were readable; None otherwise.
    encode_batch: float | None = None
    #: The client's CPU during the step, in cores: ghz's process, or this process for the Python client.
    #: On one machine it is taken from the server's cores.
    client_cpu_cores: float | None = None
    #: Where in the mix's request list the step began (the warm-up's requests come before the first).
    first_request: int = 0
    #: The client's mean latency of an answered request, ms (beside the server's means below).
    mean_ms: float | None = None
    #: Where the time went, from the server's /metrics over the step (means, ms; None/empty without
    #: them): the RPC handler (`quarry_grpc_request_seconds`), each pipeline stage of an answered
    #: request in order (`quarry_stage_seconds`; they run one after another), each recall branch
    #: (`quarry_branch_latency_seconds`; they run concurrently inside the recall stage), and one query
    #: encoder model call (`quarry_query_encode_batch_seconds`).
    handler_ms: float | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    branch_ms: dict[str, float] = field(default_factory=dict)
    encode_call_ms: float | None = None
    #: Recall branch calls that timed out or failed during the step, by branch (`quarry_branch_results_
    #: total`): answers that came back degraded, which ghz (it reads no answers) cannot count.
    branch_failed: dict[str, int] = field(default_factory=dict)

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        """The server's CPU per answered request over the step, ms (all its processes and threads)."""
        if self.server_cpu_cores is None or self.achieved_rps <= 0:
            return None
        return self.server_cpu_cores * 1000 / self.achieved_rps


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """One reading of a Prometheus text endpoint: every sample by name and labels (sorted pairs)."""

    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        from prometheus_client.parser import text_string_to_metric_families

        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
        return cls(samples)

    @classmethod
    def fetch(cls, metrics_url: str) -> Scrape:
        """The endpoint's samples now.

        Raises:
            OSError: the endpoint could not be read.
        """
        import urllib.request

        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            return cls.parse(resp.read().decode())

    @classmethod
    def read(cls, metrics_url: str | None) -> Scrape | None:
        """`fetch`, or None without a URL or when it cannot be read (a benchmark reads what it can)."""
        if not metrics_url:
            return None
        try:
            return cls.fetch(metrics_url)
        except OSError:
            return None

    def total(self, name: str, **match: str) -> float:
        """`name`'s samples whose labels include `match`, summed over the rest (0 where absent)."""
        want = set(match.items())
        return sum(v for (n, labels), v in self.samples.items() if n == name and want <= set(labels))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """`name`'s samples matching `match`, summed per value of `label`."""
        want = set(match.items())
        out: dict[str, float] = {}
        for (n, labels), v in self.samples.items():
            got = dict(labels)
            if n == name and label in got and want <= set(labels):
                out[got[label]] = out.get(got[label], 0.0) + v
        return out


def metric_sums(metrics_url: str, names: Sequence[str]) -> dict[str, float]:
    """Each named sample summed over its labels, from a Prometheus text endpoint (0 where absent).

    Raises:
        OSError: the endpoint could not be read.
    """
    scrape = Scrape.fetch(metrics_url)
    return {name: scrape.total(name) for name in names}


def hist_mean(before: Scrape, after: Scrape, histogram: str, **match: str) -> float | None:
    """A histogram's mean observation between two scrapes; None when nothing was observed meanwhile."""
    count = after.total(f"{histogram}_count", **match) - before.total(f"{histogram}_count", **match)
    if count <= 0:
        return None
    return (after.total(f"{histogram}_sum", **match) - before.total(f"{histogram}_sum", **match)) / count


def hist_mean_ms(before: Scrape, after: Scrape, histogram: str, **match: str) -> float | None:
    """`hist_mean` of a seconds-valued histogram, in ms."""
    mean = hist_mean(before, after, histogram, **match)
    return None if mean is None else mean * 1000


def hist_mean_ms_by(
    before: Scrape, after: Scrape, histogram: str, label: str, **match: str
) -> dict[str, float]:
    """`hist_mean_ms` per value of `label` (the values observed meanwhile only)."""
    out = {}
    for value in after.by(f"{histogram}_count", label, **match):
        m = hist_mean_ms(before, after, histogram, **{**match, label: value})
        if m is not None:
            out[value] = m
    return out


#: The service pipeline behind each method the load mixes call (`retriever.service`'s Pipeline names).
_PIPELINE = {"Search": "search", "Recommend": "recommend"}


def breakdown(step: StepResult, before: Scrape | None, after: Scrape | None, method: str) -> None:
    """Fill `step`'s server-side means from two scrapes of the server's /metrics taken around it: the
    queries a query-encoder call held, then (for one method's steps) where the time went."""
    if before is None or after is None:
        return
    step.encode_batch = hist_mean(before, after, "quarry_query_encode_batch_size")
    if not method:
        return
    step.handler_ms = hist_mean_ms(before, after, "quarry_grpc_request_seconds", method=method)
    if method in _PIPELINE:
        # In the order the endpoint lists them: the order a worker first ran them, the pipeline's.
        step.stage_ms = hist_mean_ms_by(
            before, after, "quarry_stage_seconds", "stage", pipeline=_PIPELINE[method]
        )
        step.branch_ms = dict(
            sorted(hist_mean_ms_by(before, after, "quarry_branch_latency_seconds", "branch").items())
        )
    step.encode_call_ms = hist_mean_ms(before, after, "quarry_query_encode_batch_seconds")
    failed: dict[str, int] = {}
    for status in ("timeout", "error"):
        now = after.by("quarry_branch_results_total", "branch", status=status)
        was = before.by("quarry_branch_results_total", "branch", status=status)
        for branch, n in now.items():
            if (d := round(n - was.get(branch, 0.0))) > 0:
                failed[branch] = failed.get(branch, 0) + d
    step.branch_failed = dict(sorted(failed.items()))


def _family(pid: int) -> list[int]:
    """A process and its direct children (a `serve --workers N` supervisor's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().rsplit(")", 1)[1].split()[1]
        except OSError:  # the process ended meanwhile
            continue
        if stat.parent.name == str(pid) or parent == str(pid):
            out.append(int(stat.parent.name))
    return out


def _proc_memory_bytes(pid: int) -> int:
    """Memory of a process and its direct children: the sum of their proportional set sizes (PSS: a page
    the workers share, such as the memory-mapped snapshot, counts once in all), or of their RSS where
    /proc/<pid>/smaps_rollup cannot be read."""
    total = 0
    for p in _family(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += next(
                int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("Pss:")
            )
        except (OSError, StopIteration):
            try:
                total += rss_bytes(p)
            except OSError:  # ended meanwhile
                continue
    return total


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its direct children (a `serve --workers N` supervisor's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended and been waited for (ghz, once
    subprocess.run returns); a running child (the server under test) counts only once it is waited."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _step_result(
    rate: float,
    duration_s: float,
    sent: int,
    lat: Sequence[float],
    window: float,
    errors: Counter[str],
    *,
    server_pid: int | None,
    cpu_cores: float | None,
    client_cpu_cores: float | None,
    **more: Any,
) -> StepResult:
    """A step's figures from its answered latencies (ms) and the time from first send to last answer
    (`window`), the same way for every client."""
    return StepResult(
        offered_rps=rate,
        duration_s=round(duration_s, 3),
        sent=sent,
        ok=len(lat),
        achieved_rps=len(lat) / window if window > 0 else 0.0,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        p999_ms=percentile(lat, 99.9),
        mean_ms=statistics.fmean(lat) if lat else None,
        errors=dict(errors),
        server_cpu_cores=None if cpu_cores is None else round(cpu_cores, 3),
        server_rss_mib=_proc_memory_bytes(server_pid) / 2**20 if server_pid else None,
        client_cpu_cores=None if client_cpu_cores is None else round(client_cpu_cores, 3),
        **more,
    )


async def run_step(
    target: str,
    mix: Mix,
    rate: float,
    duration_s: float,
    *,
    arrival: str = "poisson",
    max_in_flight: int = 512,
    timeout_s: float = 5.0,
    server_pid: int | None = None,
    offset: int = 0,
    seed: int = 0,
) -> StepResult:
    import grpc

    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration_s))
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate, n) if arrival == "poisson" else np.full(n, 1 / rate)
    async with grpc.aio.insecure_channel(target) as channel:
        calls = {
            m: channel.unary_unary(f"/quarry.v1.SearchService/{m}")  # bytes in, bytes out
            for m in ("Search", "Recommend", "LogEvents")
        }
        await channel.channel_ready()
        from common.v1 import search_pb2 as pb

        lat: list[float] = []
        errors: Counter[str] = Counter()
        in_flight = 0
        dropped = 0
        degraded = 0
        tasks: set[asyncio.Task[None]] = set()

        last_done = 0.0

        async def one(method: str, body: bytes, scheduled: float) -> None:
            nonlocal in_flight, last_done, degraded
            try:
                answer = await calls[method](body, timeout=timeout_s)
                last_done = loop.time()
                lat.append((last_done - scheduled) * 1000)
                if method != "LogEvents":
                    degraded += pb.SearchResponse.FromString(answer).degraded
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
            finally:
                in_flight -= 1

        cpu0 = _proc_cpu_s(server_pid) if server_pid else None
        client0 = time.process_time()
        start = loop.time() + 0.05
        scheduled = start
        for i in range(n):
            scheduled += float(gaps[i])
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                dropped += 1
                continue
            method, body = mix.requests[(offset + i) % len(mix.requests)]
            in_flight += 1
            task = asyncio.create_task(one(method, body, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=timeout_s + 1)
        elapsed = loop.time() - start
        window = max(last_done, scheduled) - start  # from the first send to the last answer
        cpu = (_proc_cpu_s(server_pid) - cpu0) / elapsed if server_pid and cpu0 is not None else None
        client_cpu = (time.process_time() - client0) / elapsed
    return _step_result(
        rate,
        elapsed,
        n - dropped,
        lat,
        window,
        errors,
        server_pid=server_pid,
        cpu_cores=cpu,
        client_cpu_cores=client_cpu,
        dropped=dropped,
        degraded=degraded,
        first_request=offset,
    )


#: The service's .proto, for ghz (so it needs no server reflection); absent outside a source checkout,
#: where ghz asks the server by reflection instead.
_PROTO = Path(__file__).resolve().parents[1] / "proto"


def ghz_binary(explicit: str | None = None) -> str | None:
    """ghz: `explicit`, else ../shared/tools/ghz beside the repository, else on PATH; None without one."""
    import shutil

    if explicit:
        return explicit
    local = Path(__file__).resolve().parents[2] / "shared" / "tools" / "ghz"
    return str(local) if local.is_file() else shutil.which("ghz")


def _code_name(status: str) -> str:
    """ghz's Go status names ("DeadlineExceeded") as gRPC's ("DEADLINE_EXCEEDED")."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()


def run_ghz_step(
    target: str,
    mix: Mix,
    rate: float,
    duration_s: float,
    *,
    ghz: str,
    concurrency: int = 100,
    connections: int = 8,
    timeout_s: float = 5.0,
    server_pid: int | None = None,
    offset: int = 0,
) -> StepResult:
    """One step sent by ghz at `rate` for `duration_s` (its data: the mix's requests from `offset` on,
    as protobuf JSON); percentiles from ghz's per-request details, so they match this module's."""
    import tempfile

    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import Message

    from common.v1 import search_pb2 as pb

    methods = {m for m, _ in mix.requests}
    if len(methods) != 1:
        raise ValueError("ghz calls one method per run: use the search, recommend or log_events mix")
    method = methods.pop()
    cls: type[Message] = {
        "Search": pb.SearchRequest,
        "Recommend": pb.RecommendRequest,
        "LogEvents": pb.LogEventsRequest,
    }[method]
    n = max(1, round(rate * duration_s))
    bodies = [mix.requests[(offset + i) % len(mix.requests)][1] for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="quarry-ghz-") as tmp:
        data, out = Path(tmp) / "data.json", Path(tmp) / "out.json"
        data.write_text(json.dumps([MessageToDict(cls.FromString(b)) for b in bodies], ensure_ascii=False))
        cmd = [ghz, "--insecure", "--call", f"quarry.v1.SearchService.{method}"]
        if (_PROTO / "quarry" / "v1" / "search.proto").is_file():
            cmd += ["--proto", str(_PROTO / "quarry" / "v1" / "search.proto"), "--import-paths", str(_PROTO)]
        cmd += [
            "--data-file", str(data),
            "--rps", str(max(1, round(rate))),
            "--duration", f"{duration_s}s",
            "--duration-stop", "wait",
            "-c", str(concurrency),
            "--connections", str(connections),
            "--timeout", f"{timeout_s}s",
            "--format", "json",
            "--output", str(out),
            target,
        ]  # fmt: skip
        cpu0 = _proc_cpu_s(server_pid) if server_pid else None
        client0 = _children_cpu_s()
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 120)
        elapsed = time.monotonic() - t0
        cpu = (_proc_cpu_s(server_pid) - cpu0) / elapsed if server_pid and cpu0 is not None else None
        client_cpu = (_children_cpu_s() - client0) / elapsed  # ghz's (waited for: now in the children's)
        if not out.is_file():
            raise RuntimeError(f"ghz failed (exit {done.returncode}): {(done.stderr or done.stdout)[-500:]}")
        report = json.loads(out.read_text())
    details = report.get("details") or []
    lat = [d["latency"] / 1e6 for d in details if d.get("status") == "OK"]
    errors = Counter(_code_name(d.get("status") or "Unknown") for d in details if d.get("status") != "OK")
    window = report["total"] / 1e9
    return _step_result(
        rate,
        window,  # ghz's own span of the step (its process start-up excluded)
        int(report["count"]),
        lat,
        window,
        errors,
        server_pid=server_pid,
        cpu_cores=cpu,
        client_cpu_cores=client_cpu,
        client="ghz",
        first_request=offset,
    )


# ---------------------------------------------------------------------------------------------- floor


class RawSearch:
    """One Search's work through the raw libraries the branches call, nothing else: the floor's unit.

    Request `i` with `text`: tantivy (the query analysed as the service does), onnxruntime encode + hnswlib
    knn, cKDTree on every other request, and with behavior data one of the collection's users (the i-th of
    a sample, as the load mix names users): the Redis reads (recent events + counters, one pipelined round
    trip, redis-py; with `redis_url`, which names a Redis Cluster node when `redis_cluster`), the i2i
    expansion of the user's history, the preference profile and its per-tag lists (NumPy over the
    generation's tag table), RRF over the lists, and — when the collection serves a ranker model — one
    onnxruntime call over `candidates` feature rows. `timed(stage, fn)` runs each stage (`fn()`) and may
    time it. quarry.rpc_floor's raw server answers Search with it, floor_cpu_ms times it."""

    def __init__(
        self,
        collection: Any,
        *,
        k: int = 100,
        redis_url: str = "",
        redis_cluster: bool = False,
        candidates: int = 200,
    ) -> None:
        from common.settings import RedisSettings
        from retriever.features.recent import redis_client

        self.collection = collection
        self.k, self.candidates = k, candidates
        self.inv = collection.branches.get("inverted")
        self.ann = collection.branches.get("ann")
        self.geo = collection.branches.get("geo")
        self.behavior = collection.behavior if "behavior" in collection.branches else None
        self.table = collection.tag_table if "preference" in collection.branches else None
        self.users = self.behavior.sample_users(200) if self.behavior is not None else []
        self.ranker = getattr(collection.ranker, "model", None)  # the OnnxRanker of a ModelRanker
        self.store = None
        if redis_url and self.users:
            # Generous timeouts: a benchmark measures slow reads rather than failing on them.
            rs = RedisSettings(
                url=redis_url, cluster=redis_cluster, socket_timeout_ms=5000, connect_timeout_ms=5000
            )
            self.store = redis_client(rs, sync=True)
        cs = collection.settings
        self.recent_n = max(cs.behavior.recent_n, cs.preference.recent_n, 1)
        self.located = np.flatnonzero(~np.isnan(collection.forward.lat))
        self.rnd = random.Random(5)

    def warm(self) -> None:
        """Untimed first use: jieba loads its dictionary and onnxruntime its session lazily (~1 s), which
        would otherwise be one request's "latency"."""
        from common.index.text import analyze

        for a in self.collection.analyzers:
            analyze("warm up 上海", a)  # Han text: jieba loads at the first one
        if self.ann is not None:
            self.ann.encoder.encode(["warm up"])

    def __call__(
        self, i: int, text: str, timed: Callable[[str, Callable[[], Any]], Any] | None = None
    ) -> np.ndarray:
        """Request `i`'s work; the fused ordinals."""
        from common.index.text import analyze
        from retriever.features.recent import redis_keys
        from retriever.recall.base import decayed_seeds

        timed = timed or _untimed

        coll, k, cs, fw = self.collection, self.k, self.collection.settings, self.collection.forward
        inv, ann, geo, behavior, table = self.inv, self.ann, self.geo, self.behavior, self.table
        lists: list[np.ndarray] = []
        if inv is not None:
            terms = {a: list(dict.fromkeys(analyze(text, a))) for a in coll.analyzers}
            q = inv.build_query(terms, _no_filters())
            res = timed("tantivy", lambda: inv._searcher.search(q, limit=200, count=False))
            lists.append(np.arange(len(res.hits)))
        if ann is not None:
            v = timed("encode", lambda: ann.encoder.encode([text]))
            ids, _ = timed("ann search", lambda: ann.index.search(v, k))
            lists.append(ids[0])
        if geo is not None and len(self.located) and i % 2:
            o = int(self.located[self.rnd.randrange(len(self.located))])
            ids, _ = timed(
                "cKDTree", lambda: geo.index.within(float(fw.lat[o]), float(fw.lon[o]), 50_000.0, k=k)
            )
            lists.append(np.asarray(ids))
        if self.users:
            assert behavior is not None  # users are sampled from it
            user = self.users[i % len(self.users)]
            if self.store is not None:
                recent_key, _seen, counters_key, _items = redis_keys(coll.name, user)
                pipe = self.store.pipeline(transaction=False)
                # As many events as the service's one read per request takes (its most demanding branch).
                pipe.lrange(recent_key, 0, self.recent_n - 1)
                pipe.hgetall(counters_key)
                timed("redis reads", pipe.execute)
            history = behavior.user_history(user)
            # The serving seed recipe over the long-term history (the floor's users have no events).
            seeds = list(decayed_seeds([], history, {}, cs.behavior).items())
            got = timed("i2i expand", lambda: behavior.expand(cs.behavior.method, seeds, k))
            lists.append(np.fromiter((o for o, _ in got), dtype=np.int64))
            if table is not None:
                pseeds = list(decayed_seeds([], history, {}, cs.preference).items())
                lists.append(
                    timed("preference (numpy)", lambda: _preference(table, pseeds, cs.preference.top_tags, k))
                )
        fused = timed("rrf (numpy)", lambda: _rrf(lists))
        ranker = self.ranker
        if ranker is not None and len(fused):
            X = np.zeros((min(len(fused), self.candidates), ranker.dim), dtype=np.float32)
            timed(f"onnx rank {self.candidates}", lambda: ranker.session.run(None, {"features": X}))
        return np.asarray(fused)


def _untimed(_stage: str, fn: Callable[[], Any]) -> Any:
    return fn()


def floor_cpu_ms(
    collection: Any,
    texts: Sequence[str],
    *,
    k: int = 100,
    redis_url: str = "",
    redis_cluster: bool = False,
    candidates: int = 200,
    walls_out: list[float] | None = None,
    pace_rps: float | None = None,
) -> dict[str, float]:
    """CPU ms per Search through the raw libraries the branches call (RawSearch: one thread, this process),
    per stage and in total, plus the per-request wall-clock p50/p99 of the whole raw sequence.

    Back to back by default: the least the work costs. With `pace_rps`, request i starts no earlier than
    i / `pace_rps` s after the first (constant arrivals; a late request starts at once), idle in between,
    as a server below saturation receives them: on a host whose idle cores halt (a VM without guest halt
    polling, deep C-states), the same work then costs more CPU. The batched-encode pass is skipped then.

    With behavior data, each request names a user as the load mix does, so the floor also pays what a
    known user costs (RawSearch says what). CPU time is this process's: Redis's own is not in it.
    `walls_out` receives each request's wall-clock ms."""
    from threadpoolctl import threadpool_limits

    if pace_rps is not None and pace_rps <= 0:
        raise ValueError(f"pace_rps must be > 0, got {pace_rps}")
    raw = RawSearch(collection, k=k, redis_url=redis_url, redis_cluster=redis_cluster, candidates=candidates)
    ann = raw.ann
    per: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        c0 = time.process_time()
        out = fn()
        per.setdefault(name, []).append((time.process_time() - c0) * 1000)
        return out

    walls: list[float] = []
    with threadpool_limits(1):
        raw.warm()
        began = time.perf_counter()
        for i, text in enumerate(texts):
            if pace_rps is not None:
                time.sleep(max(0.0, began + i / pace_rps - time.perf_counter()))
            w0 = time.perf_counter()
            raw(i, text, timed)
            walls.append((time.perf_counter() - w0) * 1000)
        # What the same texts cost the encoder when the server batches them (ann.query_batch), in
        # arrival order as its batches form: CPU per text, outside the per-request sequence.
        batch = ann.query.batcher.max_batch if ann is not None and ann.query.batcher is not None else 1
        batched = 0.0
        if batch > 1 and "encode" in per and pace_rps is None:
            c0 = time.process_time()
            for start in range(0, len(texts), batch):
                chunk = list(texts[start : start + batch])
                ann.encoder.encode(chunk, batch_size=len(chunk))
            batched = (time.process_time() - c0) * 1000 / len(texts)
    out = {name: statistics.mean(v) for name, v in per.items()}
    if walls_out is not None:
        walls_out.extend(walls)
    out["wall_p50"] = percentile(walls, 50)
    out["wall_p99"] = percentile(walls, 99)
    # Every request pays each stage it ran; a stage run on half the requests counts half.
    out["total"] = sum(statistics.mean(v) * len(v) / len(texts) for v in per.values())
    if batched:
        out[f"batched encode/{batch}"] = batched
        out[f"batched total/{batch}"] = out["total"] - out["encode"] + batched
    return out


def batched_total(floor: dict[str, float]) -> float | None:
    """The floor's CPU ms a request with query encodings batched as the server batches them, if it does."""
    return next((v for k, v in floor.items() if k.startswith("batched total/")), None)


def _preference(table: Any, seeds: Sequence[tuple[int, float]], top_tags: int, k: int) -> np.ndarray:
    """The preference branch's raw work: profile → strongest tags → their popular items → match."""
    aff = table.profile(seeds)
    if not aff.any():
        return np.zeros(0, dtype=np.int64)
    top = np.argsort(-aff)[:top_tags]
    pool = table.items_union(top.tolist())
    return pool[np.argsort(-table.match(pool, aff))[:k]]


def _no_filters() -> Any:
    from retriever.core.types import Filters

    return Filters()


def _rrf(lists: Sequence[np.ndarray], k: float = 60.0) -> np.ndarray:
    if not lists:
        return np.zeros(0)
    ids = np.concatenate(lists)
    scores = np.concatenate([1.0 / (k + np.arange(1, len(x) + 1)) for x in lists])
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq[np.argsort(-np.bincount(inv, weights=scores))]


def send_step(
    client: str,
    target: str,
    mix: Mix,
    rate: float,
    duration_s: float,
    *,
    ghz: str | None = None,
    ghz_concurrency: int = 100,
    ghz_connections: int = 8,
    max_in_flight: int = 512,
    arrival: str = "poisson",
    server_pid: int | None = None,
    offset: int = 0,
    seed: int = 0,
) -> StepResult:
    """One step sent by `client`: "ghz" (`ghz`: its path) or "python" (`run_step`)."""
    if client == "ghz":
        if ghz is None:
            raise ValueError("client ghz: no ghz binary given")
        return run_ghz_step(
            target,
            mix,
            rate,
            duration_s,
            ghz=ghz,
            concurrency=ghz_concurrency,
            connections=ghz_connections,
            server_pid=server_pid,
            offset=offset,
        )
    return asyncio.run(
        run_step(
            target,
            mix,
            rate,
            duration_s,
            arrival=arrival,
            max_in_flight=max_in_flight,
            server_pid=server_pid,
            offset=offset,
            seed=seed,
        )
    )


# ------------------------------------------------------------------------------------------ RPC floor

#: The ceilings and the bound are per two cores: this development machine's, shared by the server, the
#: client and Redis.
CORES = 2


@dataclass
class RpcFloor:
    """What the transport and the client cost a call before any Search work: grpc.aio answering empty
    responses (quarry.rpc_floor), driven by the load steps' client at `rate`, CPU ms an answered call.

    On one machine both are paid from the cores the Search work needs, so with the raw-library floor
    they bound what any server on this transport can answer there: `bound_rps`. The cost a call falls
    as the rate rises (more calls share each wake-up), so measured at the run's highest rate the bound
    is an optimistic one for every step."""

    rate: float
    achieved_rps: float
    p99_ms: float
    server_ms: float
    client_ms: float
    client: str
    errors: dict[str, int] = field(default_factory=dict)

    def bound_rps(self, floor_ms: float) -> float:
        """Req/s on CORES cores if a request cost the raw libraries' `floor_ms` and nothing else but
        this transport and client."""
        return CORES * 1000 / (floor_ms + self.server_ms + self.client_ms)


def start_rpc_floor(
    snapshot: Path | None = None,
    *,
    redis_url: str = "",
    redis_cluster: bool = False,
    workers: int = 1,
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[subprocess.Popen[str], str]:
    """quarry.rpc_floor in its own process on `host`:`port` (0: a free one), once it serves; with
    `snapshot`, its raw server (the floor's work behind grpc.aio) in `workers` processes."""
    cmd = [sys.executable, "-m", "quarry.rpc_floor", "--host", host, "--port", str(port)]
    if snapshot is not None:
        cmd += ["--snapshot", str(snapshot), "--redis-url", redis_url, "--workers", str(workers)]
        if redis_cluster:
            cmd.append("--redis-cluster")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready <port>", or "" if it died
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"the RPC floor server did not start (exit {proc.wait()})")
    return proc, f"{host}:{int(line.split()[1])}"


def measure_rpc_floor(
    mix: Mix, rate: float, duration_s: float, *, client: str = "python", **send: Any
) -> RpcFloor:
    """One step of the mix's requests against the empty server (after a discarded second of warm-up),
    sent as the load steps send them: `client` and `send` as `send_step` takes them."""
    proc, target = start_rpc_floor()
    try:
        asyncio.run(run_step(target, mix, min(rate, 200.0), 1.0, seed=98))
        client_cpu_s = _children_cpu_s if client == "ghz" else time.process_time
        server0, client0 = _proc_cpu_s(proc.pid), client_cpu_s()
        step = send_step(client, target, mix, rate, duration_s, **send)
        server_s, client_s = _proc_cpu_s(proc.pid) - server0, client_cpu_s() - client0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if not step.ok:
        raise RuntimeError(f"the RPC floor step answered nothing: {step.errors}")
    return RpcFloor(
        rate=rate,
        achieved_rps=step.achieved_rps,
        p99_ms=step.p99_ms,
        server_ms=1000 * server_s / step.ok,
        client_ms=1000 * client_s / step.ok,
        client=step.client,
        errors=step.errors,
    )


def measure_raw_server(
    mix: Mix,
    steps: Sequence[StepResult],
    duration_s: float,
    snapshot: Path,
    *,
    redis_url: str = "",
    redis_cluster: bool = False,
    workers: int = 1,
    client: str = "python",
    **send: Any,
) -> list[StepResult]:
    """The load steps again, each at its rate with the same requests (from its `first_request` on), sent
    the same way (`client`, `send` as `send_step` takes them) to quarry.rpc_floor's raw server over
    `snapshot` in `workers` processes: the floor's work and the transport, nothing else of Quarry's.
    Before them, a discarded second at the first rate warms its connections (it has no cache to warm)."""
    proc, target = start_rpc_floor(
        snapshot, redis_url=redis_url, redis_cluster=redis_cluster, workers=workers
    )
    out = []
    try:
        if steps:
            asyncio.run(run_step(target, mix, min(steps[0].offered_rps, 200.0), 1.0, seed=97))
        for i, step in enumerate(steps):
            raw = send_step(
                client,
                target,
                mix,
                step.offered_rps,
                duration_s,
                server_pid=proc.pid,
                offset=step.first_request,
                seed=i,
                **send,
            )
            out.append(raw)
            print(
                f"  raw server: {step.offered_rps:.0f} req/s offered → {raw.achieved_rps:.1f} ok/s, "
                f"p99 {raw.p99_ms:.2f} ms",
                file=sys.stderr,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


# --------------------------------------------------------------------------------------------- driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    snapshots: Sequence[Path], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`quarry serve` in its own process (its own cores' worth of GIL), on a free loopback port."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    cmd = [sys.executable, "-m", "quarry.cli", "--log-level", "WARNING", "serve", "--port", str(port)]
    for s in snapshots:
        cmd += ["--snapshot", str(s)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with grpc.insecure_channel(target) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc, target
        except grpc.RpcError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not become SERVING within 300 s")


#: The load at which the issue's latency target is set: 70% of the saturated rate.
IDEAL_UTILIZATION = 0.7


def p99_at_share_of_saturation(
    steps: Sequence[StepResult], share: float = IDEAL_UTILIZATION
) -> tuple[float, float, float] | None:
    """(saturated rate, share of it, p99 there): the saturated rate is the most any step answered a second;
    p99 at `share` of it is interpolated linearly between the two steps whose offered rates bracket it
    (None when no step was offered that little, or no step answered)."""
    ok = [s for s in steps if s.ok]
    if not ok:
        return None
    saturated = max(s.achieved_rps for s in ok)
    at = share * saturated
    pts = sorted((s.offered_rps, s.p99_ms) for s in ok)
    if at < pts[0][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= at <= x1:
            p99 = y0 if x1 == x0 else y0 + (y1 - y0) * (at - x0) / (x1 - x0)
            return saturated, at, p99
    return None


def ideal_queue_p99(
    service_ms: Sequence[float],
    *,
    servers: int = CORES,
    utilization: float = IDEAL_UTILIZATION,
    arrival: str = "poisson",
    n: int = 100_000,
    seed: int = 7,
) -> float:
    """p99 response time (ms) of an ideal server: `servers` requests served at once, first come first
    served, each request taking a time drawn from `service_ms` and nothing else (no transport, no
    scheduling, no contention), with arrivals (Poisson or constant) at `utilization` of its capacity
    (`servers` / mean service time). Given the floor's per-request times, it is the latency a server doing
    exactly the raw libraries' work would show at that load: queueing alone, which no code removes."""
    s = np.asarray(service_ms, dtype=np.float64)
    if not len(s) or not np.all(np.isfinite(s)) or s.min() < 0 or s.mean() <= 0:
        raise ValueError("service_ms must be finite, non-negative times with a positive mean")
    if servers < 1 or not 0 < utilization < 1:
        raise ValueError(f"servers must be >= 1 and 0 < utilization < 1, got {servers}, {utilization}")
    if arrival not in ("poisson", "constant"):
        raise ValueError(f"arrival must be 'poisson' or 'constant', got {arrival!r}")
    rng = np.random.default_rng(seed)
    gap = s.mean() / (utilization * servers)
    gaps = rng.exponential(gap, n) if arrival == "poisson" else np.full(n, gap)
    arrivals = np.cumsum(gaps).tolist()
    service = rng.choice(s, n).tolist()
    free = [0.0] * servers  # when each server is next free (a heap: FCFS takes the earliest)
    response = np.empty(n)
    for i in range(n):
        start = max(arrivals[i], heapq.heappop(free))
        heapq.heappush(free, start + service[i])
        response[i] = start + service[i] - arrivals[i]
    return float(np.percentile(response[n // 100 :], 99))  # the first 1%: the queue filling from empty


@dataclass
class LoadReport:
    machine: str
    collection: str
    mix: str
    repetition: str
    repeat_share: float
    floor: dict[str, float]
    ceiling_rps: float
    steps: list[StepResult]
    #: The ceiling with the floor's query encodings batched as the server batches them (ann.query_batch);
    #: None when it does not batch. A batching server can pass `ceiling_rps`, never this one's encoder cost.
    ceiling_batched_rps: float | None = None
    #: The transport and the client alone (None when not measured), and with it `bound_rps`.
    rpc_floor: RpcFloor | None = None
    #: `ideal_queue_p99` over the floor's request times at IDEAL_UTILIZATION, with the steps' arrivals
    #: (None when not computed).
    ideal_p99_ms: float | None = None
    ideal_arrival: str = ""
    #: The floor again, its requests paced at `floor_paced_rps` (constant arrivals, idle between them) as
    #: a server below saturation receives them: what idle cores cost this host (None when not measured).
    floor_paced: dict[str, float] | None = None
    floor_paced_rps: float | None = None
    #: The same steps sent to quarry.rpc_floor's raw server (the floor's work behind grpc.aio, nothing
    #: else of Quarry's) in `raw_workers` processes: what the best server here could do (empty: not run).
    raw_steps: list[StepResult] = field(default_factory=list)
    raw_workers: int = 0

    @property
    def bound_rps(self) -> float | None:
        """The most any server on this transport could answer on CORES cores beside this client, if its
        own work cost what the raw libraries cost (query encodings batched where the server batches)."""
        if self.rpc_floor is None:
            return None
        return self.rpc_floor.bound_rps(batched_total(self.floor) or self.floor["total"])

    def to_json(self) -> str:
        out = asdict(self)
        targets = {}
        for key in ("steps", "raw_steps"):
            for step, row in zip(getattr(self, key), out[key], strict=True):
                row["server_cpu_ms_per_request"] = step.server_cpu_ms_per_request
            at = p99_at_share_of_saturation(getattr(self, key))
            if at is not None:
                targets[key] = {"saturated_rps": at[0], "rate": at[1], "p99_ms": at[2]}
        return json.dumps({**out, "bound_rps": self.bound_rps, "p99_at_70pct": targets}, indent=2)

    def target_line(self, steps: Sequence[StepResult], who: str) -> str | None:
        """The latency target's reading for `steps`: p99 at IDEAL_UTILIZATION of their saturated rate
        against the floor's p99."""
        at = p99_at_share_of_saturation(steps)
        if at is None:
            return None
        saturated, rate, p99 = at
        return (
            f"{who}: saturated at {saturated:.0f}/s ({saturated / self.ceiling_rps:.2f} of the ceiling); at "
            f"{IDEAL_UTILIZATION:.0%} of that ({rate:.0f}/s, between the steps) p99 {p99:.2f} ms = "
            f"{p99 / self.floor['wall_p99']:.1f}x the floor's p99"
        )

    def table(self) -> str:
        lines = [
            f"{self.mix} on {self.collection} ({self.machine}); repetition {self.repetition}: "
            f"{self.repeat_share:.0%} of requests repeat an earlier query (an unbounded cache's hit rate); "
            f"client {self.steps[0].client if self.steps else '-'}",
            "floor (raw libraries, one thread, CPU ms/request): "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.floor.items() if not k.startswith("wall")),
            f"floor per request: p50 {self.floor['wall_p50']:.3f} ms, p99 {self.floor['wall_p99']:.3f} ms; "
            f"{CORES}-core ceiling {self.ceiling_rps:.0f} req/s"
            + (
                f" ({self.ceiling_batched_rps:.0f} with the queries' encodings batched as the server does)"
                if self.ceiling_batched_rps
                else ""
            ),
        ]
        paced = self.floor_paced
        if paced is not None and self.floor_paced_rps is not None:
            enc = ""
            if "encode" in paced and self.floor.get("encode"):
                enc = f" (encode {paced['encode']:.3f} = {paced['encode'] / self.floor['encode']:.2f}x)"
            lines.append(
                f"floor paced at {self.floor_paced_rps:.0f} req/s (one thread, constant arrivals, idle "
                f"between requests): {paced['total']:.3f} CPU ms/request = "
                f"{paced['total'] / self.floor['total']:.2f}x back to back{enc}; p50 "
                f"{paced['wall_p50']:.3f} ms, p99 {paced['wall_p99']:.3f} ms"
            )
        if self.ideal_p99_ms is not None:
            lines.append(
                f"ideal server ({CORES} requests at once, each costing what the floor's did, nothing else; "
                f"{self.ideal_arrival} arrivals at {IDEAL_UTILIZATION:.0%} of its capacity): "
                f"p99 {self.ideal_p99_ms:.2f} ms = {self.ideal_p99_ms / self.floor['wall_p99']:.1f}x the "
                "floor's p99, from queueing alone"
            )
        bound = self.bound_rps
        if self.rpc_floor is not None and bound is not None:
            r = self.rpc_floor
            alone = ""
            if batched_total(self.floor) is not None:
                single = r.bound_rps(self.floor["total"])
                alone = f"; {single:.0f} = {single / self.ceiling_rps:.2f} with encodes one at a time"
            lines.append(
                f"RPC floor (grpc.aio answering empty responses; {r.client} at {r.rate:.0f}/s, "
                f"{r.achieved_rps:.0f} answered/s, p99 {r.p99_ms:.2f} ms): server {r.server_ms:.3f} + client "
                f"{r.client_ms:.3f} CPU ms a call -> bound {bound:.0f} req/s on {CORES} cores with the "
                f"raw libraries' work ({bound / self.ceiling_rps:.2f} of the ceiling{alone})"
            )
        lines += self._step_lines(self.steps)
        if self.raw_steps:
            lines.append(
                f"raw server (quarry.rpc_floor --snapshot, {self.raw_workers} process(es): the floor's calls "
                "inline on grpc.aio answering empty, nothing else of Quarry's), the same steps and requests:"
            )
            lines += self._step_lines(self.raw_steps)
        for steps, who in ((self.steps, "quarry"), (self.raw_steps, "raw server")):
            target = self.target_line(steps, who)
            if target is not None:
                lines.append(target)
        lines += self.breakdown_table()
        return "\n".join(lines)

    def _step_lines(self, steps: Sequence[StepResult]) -> list[str]:
        """The steps' table: a header line and one line a step."""
        bound = self.bound_rps
        lines = [
            f"{'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
            f"{'ach/ceil':>8} {'ach/bound':>9} {'p99/floor':>9} {'srv cpu':>7} {'ms/req':>6} {'xfloor':>6} "
            f"{'cli cpu':>7} {'srv MiB':>8} {'enc batch':>9}  errors / dropped"
        ]
        for s in steps:
            errs = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
            cpu = f"{s.server_cpu_cores:.2f}" if s.server_cpu_cores is not None else "-"
            rss = f"{s.server_rss_mib:.0f}" if s.server_rss_mib is not None else "-"
            batch = f"{s.encode_batch:.2f}" if s.encode_batch is not None else "-"
            cli = f"{s.client_cpu_cores:.2f}" if s.client_cpu_cores is not None else "-"
            of_bound = f"{s.achieved_rps / bound:.2f}" if bound else "-"
            per_req = s.server_cpu_ms_per_request
            ms = f"{per_req:.2f}" if per_req is not None else "-"
            x = f"{per_req / self.floor['total']:.2f}" if per_req is not None else "-"
            lines.append(
                f"{s.offered_rps:8.0f} {s.achieved_rps:9.1f} {s.p50_ms:8.2f} {s.p90_ms:8.2f} {s.p99_ms:8.2f} "
                f"{s.p999_ms:9.2f} {s.achieved_rps / self.ceiling_rps:8.2f} {of_bound:>9} "
                f"{s.p99_ms / self.floor['wall_p99']:9.1f} {cpu:>7} {ms:>6} {x:>6} {cli:>7} {rss:>8} "
                f"{batch:>9}  {errs} / {s.dropped}"
            )
        return lines

    def breakdown_table(self) -> list[str]:
        """Where a request's time went at each step (means, ms): the client's; the server's RPC handler
        and its pipeline stages (sequential: they add up to the handler's time less decoding and the
        answer's conversion); its recall branches (concurrent, inside `recall`) and one encoder call.
        Client minus handler is the transport and the wait before the handler ran (the queue). Last, the
        branch calls that timed out or failed: degraded answers, which ghz's counts do not show."""
        steps = [s for s in self.steps if s.handler_ms is not None]
        if not steps:
            return []
        stages = list(dict.fromkeys(k for s in steps for k in s.stage_ms))
        branches = list(dict.fromkeys(k for s in steps for k in s.branch_ms))

        def cell(v: float | None, width: int) -> str:
            return f"{v:>{width}.2f}" if v is not None else f"{'-':>{width}}"

        def w(name: str) -> int:
            return max(len(name), 6)

        out = [
            "where the time went (means, ms; server side from its /metrics): client = handler + transport and "
            "queue; stages run in turn inside the handler, branches at once inside recall",
            f"{'offered':>8} {'client':>7} {'queue+net':>9} {'handler':>7} | "
            + " ".join(f"{n:>{w(n)}}" for n in stages)
            + " | "
            + " ".join(f"{n:>{w(n)}}" for n in branches)
            + f" | {'encode call':>11}  failed branch calls",
        ]
        for s in steps:
            queue = s.mean_ms - s.handler_ms if s.mean_ms is not None and s.handler_ms is not None else None
            out.append(
                f"{s.offered_rps:8.0f} {cell(s.mean_ms, 7)} {cell(queue, 9)} {cell(s.handler_ms, 7)} | "
                + " ".join(cell(s.stage_ms.get(n), w(n)) for n in stages)
                + " | "
                + " ".join(cell(s.branch_ms.get(n), w(n)) for n in branches)
                + f" | {cell(s.encode_call_ms, 11)}  "
                + (", ".join(f"{k} {v}" for k, v in s.branch_failed.items()) or "0")
            )
        return out

    def plot(self, path: Path) -> None:
        """PNG: latency percentiles vs offered load; with the server's /metrics read, two more panels:
        each step's mean time split into the wait before the handler and the pipeline's stages
        (stacked: they run in turn), and each recall branch's mean time (they run at once)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [s.offered_rps for s in self.steps]
        split = [s for s in self.steps if s.handler_ms is not None and s.mean_ms is not None]
        fig, axes = plt.subplots(1, 3 if split else 1, figsize=(19 if split else 7, 4.8), squeeze=False)
        ax = axes[0][0]
        for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            ax.plot(xs, [getattr(s, key) for s in self.steps], marker="o", label=label)
        ax.axvline(self.ceiling_rps, color="grey", linestyle="--", label=f"floor's {CORES}-core ceiling")
        if self.bound_rps is not None:
            ax.axvline(self.bound_rps, color="grey", linestyle=":", label="bound with the RPC floor")
        ax.set_xlabel("offered load (req/s, open loop)")
        ax.set_ylabel("latency (ms, from scheduled send)")
        ax.set_yscale("log")
        ax.set_title(f"{self.mix} on {self.collection}: latency vs offered load")
        ax.legend()
        if split:
            self._plot_stages(axes[0][1], split)
            self._plot_branches(axes[0][2], split)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    @staticmethod
    def _plot_stages(ax: Any, steps: list[StepResult]) -> None:
        import matplotlib

        at = np.arange(len(steps))  # one bar a step, labelled with its rate
        stages = list(dict.fromkeys(k for s in steps for k in s.stage_ms))
        # Stages under 0.05 ms at every step would be invisible slivers: one bar part for them all.
        shown = [n for n in stages if max(s.stage_ms.get(n, 0.0) for s in steps) >= 0.05]
        parts: list[tuple[str, list[float]]] = [
            (
                "queue + transport (client − handler)",
                [max(0.0, (s.mean_ms or 0) - (s.handler_ms or 0)) for s in steps],
            ),
            *((f"stage {n}", [s.stage_ms.get(n, 0.0) for s in steps]) for n in shown),
            ("other stages", [sum(v for n, v in s.stage_ms.items() if n not in shown) for s in steps]),
            (
                "handler, outside the stages",
                [max(0.0, (s.handler_ms or 0) - sum(s.stage_ms.values())) for s in steps],
            ),
        ]
        colors = iter(matplotlib.color_sequences["tab20"])
        bottom = np.zeros(len(steps))
        for name, values in parts:
            color = next(colors)
            if max(values) <= 0.0:
                continue
            ax.bar(at, values, bottom=bottom, label=name, color=color)
            bottom += np.asarray(values)
        ax.set_xticks(at, [f"{s.offered_rps:.0f}" for s in steps])
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel("mean ms a request")
        ax.set_title("where a request's time went (means)")
        ax.legend(fontsize="small")

    @staticmethod
    def _plot_branches(ax: Any, steps: list[StepResult]) -> None:
        xs = [s.offered_rps for s in steps]
        for name in dict.fromkeys(k for s in steps for k in s.branch_ms):
            ax.plot(xs, [s.branch_ms.get(name, np.nan) for s in steps], marker="o", label=f"branch {name}")
        if any(s.encode_call_ms is not None for s in steps):
            ax.plot(
                xs,
                [s.encode_call_ms if s.encode_call_ms is not None else np.nan for s in steps],
                marker="s",
                linestyle="--",
                color="black",
                label="one query-encoder call",
            )
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel("mean ms")
        ax.set_yscale("log")
        ax.set_title("recall branches (concurrent, inside recall)")
        ax.legend(fontsize="small")


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}"


def run_load(
    snapshot: Path,
    *,
    target: str | None,
    server_pid: int | None,
    rates: Sequence[float],
    duration_s: float,
    kind: str,
    repetition: str,
    zipf_s: float,
    arrival: str,
    max_in_flight: int,
    floor_n: int,
    redis_url: str = "",
    redis_cluster: bool = False,
    client: str = "python",
    ghz: str | None = None,
    ghz_concurrency: int = 100,
    metrics_url: str | None = None,
    ghz_connections: int = 8,
    rpc_floor: bool = True,
    paced_floor: bool = True,
    raw_server: bool = False,
    raw_workers: int | None = None,
) -> LoadReport:
    """`client` "python" (this module's open-loop sender) or "ghz" (`ghz`: its path; see ghz_binary).

    Each step also reports the server's mean query-encode batch, read from its Prometheus endpoint:
    `metrics_url` for a `target`; a server this function starts gets a metrics port of its own (with
    `server.workers > 1`, its supervisor's, every worker's batches added up).

    With `rpc_floor`, once the steps are done (and a server this function started has stopped), the same
    client sends the same requests at the highest rate to quarry.rpc_floor: the RPC floor, and with it
    the report's bound. With `paced_floor`, the floor's requests are timed again at the first step's rate
    (floor_cpu_ms's `pace_rps`), so the report shows what idle cores cost this host beside what the
    server spends a request at each step. With `raw_server`, last, the same steps go to quarry.rpc_floor's
    raw server (measure_raw_server) in `raw_workers` processes (default: as many as `server.workers`)."""
    if client == "ghz":
        if ghz is None:
            raise ValueError("--client ghz: no ghz binary (../shared/tools/ghz, PATH or --ghz)")
        if kind == "mixed":
            raise ValueError("ghz calls one method per run: use the search, recommend or log_events mix")
    elif client != "python":
        raise ValueError(f"client must be 'python' or 'ghz', got {client!r}")
    # How every step (and the RPC floor's) is sent.
    sender: dict[str, Any] = {
        "ghz": ghz,
        "ghz_concurrency": ghz_concurrency,
        "ghz_connections": ghz_connections,
        "max_in_flight": max_in_flight,
        "arrival": arrival,
    }
    coll = open_collection(snapshot)
    name = coll.name
    mix = build_mix(coll, kind, repetition=repetition, zipf_s=zipf_s)
    methods = {m for m, _ in mix.requests}
    method = methods.pop() if len(methods) == 1 else ""  # a mixed step's means would mix methods
    texts = query_pool(coll)[:floor_n]
    walls: list[float] = []
    floor = floor_cpu_ms(coll, texts, redis_url=redis_url, redis_cluster=redis_cluster, walls_out=walls)
    paced = None
    if paced_floor:
        paced = floor_cpu_ms(coll, texts, redis_url=redis_url, redis_cluster=redis_cluster, pace_rps=rates[0])
    ceiling = CORES * 1000 / floor["total"]
    # ghz paces at a constant rate; this module's client sends as `arrival` says.
    ideal_arrival = "constant" if client == "ghz" else arrival
    ideal = ideal_queue_p99(walls, arrival=ideal_arrival) if walls else None
    batched = batched_total(floor)
    ceiling_batched = CORES * 1000 / batched if batched else None
    proc = None
    if target is None:
        env: dict[str, str] = {}
        if redis_url:
            env = {"QUARRY_REDIS__URL": redis_url, "QUARRY_REDIS__CLUSTER": str(redis_cluster).lower()}
        port = _free_port()
        env["QUARRY_SERVER__METRICS_PORT"] = str(port)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        proc, target = start_server([snapshot], env)
        server_pid = proc.pid
    try:
        # Warm-up (discarded): first requests pay lazy loading and connection set-up. The steps go on
        # after its requests: sent again, they would be query-cache hits in a no-repetition mix.
        warm = asyncio.run(
            run_step(target, mix, rates[0], 2.0, arrival=arrival, max_in_flight=max_in_flight, seed=99)
        )
        steps = []
        offset = warm.sent + warm.dropped
        # Nothing is sent between steps: a step's closing scrape is the next one's opening scrape (read
        # again only where it could not be read).
        scrape = None
        for i, rate in enumerate(rates):
            if scrape is None:
                scrape = Scrape.read(metrics_url)
            step = send_step(
                client, target, mix, rate, duration_s, server_pid=server_pid, offset=offset, seed=i, **sender
            )
            after = Scrape.read(metrics_url)
            breakdown(step, scrape, after, method)
            scrape = after
            offset += step.sent + step.dropped
            steps.append(step)
            print(
                f"  {rate:.0f} req/s offered → {step.achieved_rps:.1f} ok/s, p99 {step.p99_ms:.2f} ms",
                file=sys.stderr,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    rpc = measure_rpc_floor(mix, max(rates), duration_s, client=client, **sender) if rpc_floor else None
    raw_steps: list[StepResult] = []
    if not raw_server:
        raw_workers = 0
    else:
        from common.settings import QuarrySettings

        raw_workers = raw_workers or QuarrySettings().server.workers
        raw_steps = measure_raw_server(
            mix,
            steps,
            duration_s,
            snapshot,
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            workers=raw_workers,
            client=client,
            **sender,
        )
    return LoadReport(
        machine(),
        name,
        kind,
        repetition,
        mix.repeat_share,
        floor,
        ceiling,
        steps,
        ceiling_batched,
        rpc,
        ideal,
        ideal_arrival,
        paced,
        rates[0] if paced is not None else None,
        raw_steps,
        raw_workers,
    )


def write_ghz_data(collection: Any, out_dir: Path, *, n: int = 500, seed: int = 1) -> list[Path]:
    """ghz data files (JSON arrays ghz cycles through) from the collection's real data: Search requests
    (the query pool above, Zipf-repeated, every other one with a location), Recommend requests (users from
    the behavior part, or synthetic ids), and one LogEvents template (unique event ids via ghz's
    {{.RequestNumber}} / {{.TimestampUnixNano}})."""
    from google.protobuf.json_format import MessageToDict

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("search", "recommend"):
        mix = build_mix(collection, kind, n=n, seed=seed)
        from common.v1 import search_pb2 as pb

        cls = pb.SearchRequest if kind == "search" else pb.RecommendRequest
        rows = [MessageToDict(cls.FromString(body)) for _m, body in mix.requests]
        path = out_dir / f"{kind}-{collection.name}.json"
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        written.append(path)
    item = collection.forward.rows([0])[0]["id"]
    template = {
        "collection": collection.name,
        "events": [
            {
                "event_id": "ghz-{{.RequestNumber}}-{{.TimestampUnixNano}}",
                "user_id": "ghz-user-{{.RequestNumber}}",
                "item_id": item,
                "type": "click",
            }
        ],
    }
    path = out_dir / f"log_events-{collection.name}.json"
    path.write_text(json.dumps(template, indent=2) + "\n")
    written.append(path)
    return written
