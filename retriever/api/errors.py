"""The one place where domain errors become gRPC status codes, plus the per-RPC access log (metrics:
`retriever.api.interceptors`)."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from retriever.core.errors import (
    BranchFailed,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuarryError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("quarry.access")

STATUS_OF: dict[type[QuarryError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    BranchFailed: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: QuarryError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


class AccessLog:
    """One line per RPC on the `quarry.access` logger (INFO), for a random `sample` share of RPCs."""

    def __init__(self) -> None:
        self.enabled = True
        self.sample = 1.0

    def configure(self, *, enabled: bool, sample: float) -> None:
        self.enabled, self.sample = enabled, sample

    def write(self, method: str, code: grpc.StatusCode, elapsed_s: float, request: Any) -> None:
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        ms = elapsed_s * 1000
        span = trace.get_current_span().get_span_context()
        log.info(
            "%s %s %.2fms",
            method,
            code.name,
            ms,
            extra={
                "method": method,
                "code": code.name,
                "latency_ms": round(ms, 3),
                "collection": getattr(request, "collection", ""),
                "request_id": getattr(request, "request_id", ""),
                "trace_id": format(span.trace_id, "032x") if span.is_valid else "",
            },
        )


access_log = AccessLog()


def rpc(method: str, request_type: Any, *, auth: bool = False) -> Callable[[Method], Method]:
    """Wrap a unary handler: parse the raw request (so malformed bytes, e.g. invalid UTF-8 in a string
    field, become INVALID_ARGUMENT instead of grpc's generic deserialisation failure), map domain errors
    to status codes, and write one access-log line per call. The server never dies on a bad request.
    With `auth`, the servicer's `authorize(context)` runs first (before anything of the request is read)."""

    def deco(fn: Method) -> Method:
        @functools.wraps(fn)
        async def wrapper(self: Any, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            request: Any = None
            try:
                if auth:
                    self.authorize(context)
                try:
                    request = request_type.FromString(raw)
                except DecodeError as exc:
                    raise InvalidArgument(
                        f"request is not a valid {request_type.DESCRIPTOR.full_name} ({exc}); "
                        "string fields must be valid UTF-8"
                    ) from None
                return await fn(self, request, context)
            except QuarryError as exc:
                code = status_for(exc)
                await context.abort(code, str(exc))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s: internal error", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
            finally:
                access_log.write(method, code, time.perf_counter() - t0, request)

        return wrapper

    return deco
