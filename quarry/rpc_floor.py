"""The RPC floor: what grpcio alone costs a call, for `quarry bench load` to set beside the raw-library floor.

A grpc.aio server with the service's own methods (quarry.v1.SearchService: Search, Recommend, LogEvents)
whose handlers decode the request and answer an empty response: no retrieval, no interceptors, no
logging. Driven by the same client as a load step at the same rate, its CPU a call and the client's are
what the transport and the load generator take from the cores before any Search work; added to the
raw-library floor they bound the rate any server on this transport can answer on these cores (see
`quarry.load.RpcFloor`).

    python -m quarry.rpc_floor --port 50123     # prints "ready" once it serves; SIGTERM stops it

With `--snapshot`, the **raw server**: Search does the floor's work (quarry.load.RawSearch: the raw
tantivy, onnxruntime, hnswlib, cKDTree, Redis and NumPy calls of one request, for the request's text)
inline on the event loop, one request at a time a process, and answers the same empty response; nothing
else of Quarry's runs. Its CPU a call is the floor's plus the RPC floor's, its latency what queueing and
these cores add to the floor's own, so under the load steps' client and rates it is what the best server
on these libraries and this transport could do here (`quarry bench load --raw-server`). `--workers N`
serves from N processes on one port (SO_REUSEPORT), as `quarry serve --workers N` does; Recommend and
LogEvents still answer empty.

    python -m quarry.rpc_floor --snapshot var/snapshots/places --redis-url redis://127.0.0.1:6379/0 \
        --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from common.v1 import search_pb2 as pb

SEARCH_SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
#: Each method's request type (decoded, as the real server decodes it) and its empty answer.
METHODS: dict[str, tuple[Any, Any]] = {
    "Search": (pb.SearchRequest, pb.SearchResponse()),
    "Recommend": (pb.RecommendRequest, pb.SearchResponse()),
    "LogEvents": (pb.LogEventsRequest, pb.LogEventsResponse()),
}


def _handler(request_type: Any, answer: Any) -> grpc.RpcMethodHandler:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        request_type.FromString(request)
        return answer

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=None, response_serializer=type(answer).SerializeToString
    )


def _raw_search_handler(raw: Callable[[int, str], Any]) -> grpc.RpcMethodHandler:
    """Search doing `raw(i, text)` (the i-th call, the request's query) inline, then answering empty."""
    answer = pb.SearchResponse()
    calls = 0

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> Any:
        nonlocal calls
        raw(calls, pb.SearchRequest.FromString(request).query)
        calls += 1
        return answer

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=None, response_serializer=pb.SearchResponse.SerializeToString
    )


def server(host: str, port: int, raw: Callable[[int, str], Any] | None = None) -> tuple[grpc.aio.Server, int]:
    """The empty server, bound (not started); port 0 picks a free one, returned. With `raw`, Search does
    `raw(i, query)` first (the raw server)."""
    # Port sharing on, so `--workers N` processes serve one port (the kernel deals connections out).
    srv = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handlers = {name: _handler(req, ans) for name, (req, ans) in METHODS.items()}
    if raw is not None:
        handlers["Search"] = _raw_search_handler(raw)
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SEARCH_SERVICE, handlers),))
    bound = srv.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return srv, bound


def _raw_search(snapshot: str, redis_url: str, redis_cluster: bool) -> Callable[[int, str], Any]:
    """The floor's per-request work over the snapshot, warmed; BLAS and friends held to one thread as the
    floor holds them."""
    from threadpoolctl import threadpool_limits

    from quarry.bench import open_collection
    from quarry.load import RawSearch

    threadpool_limits(1)
    raw = RawSearch(open_collection(Path(snapshot)), redis_url=redis_url, redis_cluster=redis_cluster)
    raw.warm()
    return raw


def _spawn_workers(
    host: str, port: int, n: int, snapshot: str | None, redis_url: str, redis_cluster: bool
) -> list[subprocess.Popen[str]]:
    """n more processes of this server (the raw one with `snapshot`) on `host`:`port`, each once it serves
    (or an error, none left running)."""
    from quarry.load import start_rpc_floor

    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(n):
            proc, _target = start_rpc_floor(
                Path(snapshot) if snapshot else None,
                redis_url=redis_url,
                redis_cluster=redis_cluster,
                host=host,
                port=port,
            )
            procs.append(proc)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    return procs


async def serve(
    host: str,
    port: int,
    *,
    snapshot: str | None = None,
    redis_url: str = "",
    redis_cluster: bool = False,
    workers: int = 1,
) -> None:
    raw = _raw_search(snapshot, redis_url, redis_cluster) if snapshot else None
    srv, bound = server(host, port, raw)
    await srv.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    others = []
    if workers > 1:
        others = _spawn_workers(host, bound, workers - 1, snapshot, redis_url, redis_cluster)
    print(f"ready {bound}", flush=True)
    try:
        await stop.wait()
    finally:
        for proc in others:
            proc.terminate()
        for proc in others:
            proc.wait()
        await srv.stop(grace=None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--snapshot", help="serve Search as the raw server over this snapshot")
    ap.add_argument("--redis-url", default="", help="with --snapshot: the Redis the floor's reads go to")
    ap.add_argument("--redis-cluster", action="store_true", help="--redis-url names a Redis Cluster node")
    ap.add_argument("--workers", type=int, default=1, help="processes serving the port (SO_REUSEPORT)")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error(f"--workers must be >= 1, got {a.workers}")
    if a.redis_url and not a.snapshot:
        ap.error("--redis-url needs --snapshot")
    asyncio.run(
        serve(
            a.host,
            a.port,
            snapshot=a.snapshot,
            redis_url=a.redis_url,
            redis_cluster=a.redis_cluster,
            workers=a.workers,
        )
    )


if __name__ == "__main__":
    main()
