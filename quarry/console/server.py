"""The console's HTTP side: the page, its browser files, and a JSON bridge to the public gRPC API.

The browser never talks gRPC: it POSTs a SearchRequest/RecommendRequest in protobuf's JSON form to
/api/search or /api/recommend; this server parses it with protobuf's own JSON parser, sets `debug`, calls
the retriever (any running Quarry server: it only uses the public API, plus AdminService.Status for the
collection list when it was given the admin token, which never leaves this process) and returns the
answer as protobuf JSON. A gRPC error comes back as {"error": {"code", "message"}} with the server's own
message, so the page shows exactly what a client would see.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from quarry.console.assets import ASSETS

log = logging.getLogger(__name__)

#: Request bodies larger than this are refused before parsing (the gRPC limits apply after).
MAX_BODY = 1 << 20

_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.BAD_GATEWAY,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
}
_VENDOR = frozenset(name for a in ASSETS for _, name in a.files)
_STATIC = frozenset({"index.html", "console.js", "console.css"})


class BadRequest(Exception):
    pass


@dataclass
class Bridge:
    """What the handlers share: one gRPC channel to the retriever (thread-safe), the optional admin
    token, the collections named on the command line, and where the browser files are."""

    channel: grpc.Channel
    target: str
    assets: Path
    collections: tuple[str, ...] = ()
    admin_token: str = ""
    timeout_s: float = 10.0
    _stub: search_pb2_grpc.SearchServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self._stub = search_pb2_grpc.SearchServiceStub(self.channel)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "collections": [], "status_error": ""}
        named: dict[str, dict[str, Any]] = {c: {"name": c} for c in self.collections}
        if self.admin_token:
            from common.v1 import admin_pb2, admin_pb2_grpc

            try:
                st = admin_pb2_grpc.AdminServiceStub(self.channel).Status(
                    admin_pb2.StatusRequest(),
                    metadata=(("authorization", f"Bearer {self.admin_token}"),),
                    timeout=self.timeout_s,
                )
                for c in st.collections:
                    named[c.collection] = {
                        "name": c.collection,
                        "snapshot_version": c.snapshot_version,
                        "items": c.items,
                        "branches": list(c.branches),
                        "ranker": c.ranker,
                    }
            except grpc.RpcError as exc:
                out["status_error"] = f"{exc.code().name}: {exc.details()}"
        out["collections"] = list(named.values())
        return out

    def call(self, method: str, body: bytes) -> Message:
        req: Message
        if method == "search":
            req, rpc = pb.SearchRequest(), self._stub.Search
        elif method == "recommend":
            req, rpc = pb.RecommendRequest(), self._stub.Recommend
        else:
            raise BadRequest(f"no such API method {method!r}: use search or recommend")
        try:
            json_format.Parse(body.decode("utf-8") or "{}", req)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request is not a valid {req.DESCRIPTOR.name} in JSON: {exc}") from None
        req.debug = True
        return rpc(req, timeout=self.timeout_s)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class Handler(BaseHTTPRequestHandler):
    bridge: Bridge  # set on the subclass made by make_server
    server_version = "QuarryConsole"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("console %s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(
            status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8"
        )

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if path.startswith("/static/") and path[8:] in _STATIC:
            return self._file(path[8:])
        if path.startswith("/vendor/") and path[8:] in _VENDOR:
            f = self.bridge.assets / path[8:]
            if f.is_file():
                return self._send(HTTPStatus.OK, f.read_bytes(), _ctype(f.name))
        if path == "/api/info":
            return self._json(HTTPStatus.OK, self.bridge.info())
        self._json(HTTPStatus.NOT_FOUND, _error("NOT_FOUND", f"no such page {path!r}"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if not path.startswith("/api/"):
            return self._json(HTTPStatus.NOT_FOUND, _error("NOT_FOUND", f"no such API {path!r}"))
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_BODY:
            return self._json(
                HTTPStatus.BAD_REQUEST,
                _error("INVALID_ARGUMENT", f"request body must be 0..{MAX_BODY} bytes"),
            )
        body = self.rfile.read(n)
        try:
            res = self.bridge.call(path[5:], body)
        except BadRequest as exc:
            return self._json(HTTPStatus.BAD_REQUEST, _error("INVALID_ARGUMENT", str(exc)))
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            message = exc.details() or code.name
            if code is grpc.StatusCode.UNAVAILABLE:
                message = f"the retriever at {self.bridge.target} is unavailable: {message}"
            return self._json(_HTTP.get(code, HTTPStatus.INTERNAL_SERVER_ERROR), _error(code.name, message))
        self._json(
            HTTPStatus.OK,
            json_format.MessageToDict(res, preserving_proto_field_name=True),
        )

    def _file(self, name: str) -> None:
        data = resources.files("quarry.console").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, _ctype(name))


def _ctype(name: str) -> str:
    t = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"{t}; charset=utf-8" if t.startswith("text/") or t.endswith(("javascript", "json")) else t


class ConsoleServer:
    """The console on host:port (port 0: a free one), serving in a background thread."""

    def __init__(self, bridge: Bridge, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bridge = bridge
        handler = type("BoundHandler", (Handler,), {"bridge": bridge})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="quarry-console", daemon=True)

    def start(self) -> ConsoleServer:
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self.bridge.channel.close()
