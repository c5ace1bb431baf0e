"""Server interceptors: what is per RPC lives here, not in each handler (requests and latency by service,
method and status code, for every unary method the server has: Search, Admin, health)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from retriever.core import metrics


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (reflection, health Watch) and unknown methods pass through
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        inner = handler.unary_unary
        requests, latency = metrics.GRPC_REQUESTS, metrics.GRPC_LATENCY.labels(service, method)

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                latency.observe(time.perf_counter() - t0)
                requests.labels(service, method, code).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
