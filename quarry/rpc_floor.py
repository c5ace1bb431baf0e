"""The RPC floor: what grpcio alone costs a call, for `quarry bench load` to set beside the raw-library floor.

A grpc.aio server with the service's own methods (quarry.v1.SearchService: Search, Recommend, LogEvents)
whose handlers decode the request and answer an empty response: no retrieval, no interceptors, no
logging. Driven by the same client as a load step at the same rate, its CPU a call and the client's are
what the transport and the load generator take from the cores before any Search work; added to the
raw-library floor they bound the rate any server on this transport can answer on these cores (see
`quarry.load.RpcFloor`).

    python -m quarry.rpc_floor --port 50123     # prints "ready" once it serves; SIGTERM stops it
"""

from __future__ import annotations

import argparse
import asyncio
import signal
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


def server(host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The empty server, bound (not started); port 0 picks a free one, returned."""
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SEARCH_SERVICE, {name: _handler(req, ans) for name, (req, ans) in METHODS.items()}
            ),
        )
    )
    bound = srv.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return srv, bound


async def serve(host: str, port: int) -> None:
    srv, bound = server(host, port)
    await srv.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {bound}", flush=True)
    await stop.wait()
    await srv.stop(grace=None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
