"""The one place where domain errors become gRPC status codes, plus the per-RPC access log (metrics:
`retriever.api.interceptors`)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

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
            return STATUS_OF[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


Method = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


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
                code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s: internal error", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
            finally:
                elapsed = time.perf_counter() - t0
                log.info("%s %s %.2fms", method, code.name, elapsed * 1000)

        return wrapper

    return deco
