"""Structured logs: JSON lines with the documented fields, and the sampled access log, over real RPCs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.logs import configure_logging, formatter
from common.settings import ServerSettings
from common.v1 import search_pb2, search_pb2_grpc
from retriever.api.errors import access_log
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(formatter("json"))
    logger = logging.getLogger("quarry.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        access_log.configure(enabled=True, sample=1.0)


def _run(srv: ServerThread, n: int) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        stub = search_pb2_grpc.SearchServiceStub(ch)
        for i in range(n):
            stub.Search(search_pb2.SearchRequest(collection="tiny", query="paris", request_id=f"r{i}"))
        with pytest.raises(grpc.RpcError):
            stub.Search(
                search_pb2.SearchRequest(collection="tiny", query="paris", top_k=-5, request_id="bad")
            )


def test_json_access_log_lines(tiny_snapshot: Path, captured: io.StringIO) -> None:
    srv = ServerThread([tiny_snapshot])
    try:
        _run(srv, 3)
    finally:
        srv.close()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == 4
    first, bad = lines[0], lines[-1]
    assert {
        "time",
        "level",
        "name",
        "event",
        "pid",
        "method",
        "code",
        "latency_ms",
        "collection",
        "request_id",
    } <= set(first)
    assert (first["level"], first["name"], first["method"], first["code"]) == (
        "INFO",
        "quarry.access",
        "Search",
        "OK",
    )
    assert first["collection"] == "tiny" and first["request_id"] == "r0" and first["latency_ms"] > 0
    assert (bad["code"], bad["request_id"]) == ("INVALID_ARGUMENT", "bad")


def test_access_log_sampling_and_switch(tiny_snapshot: Path, captured: io.StringIO) -> None:
    srv = ServerThread([tiny_snapshot], server=ServerSettings(port=0, access_log_sample=0.0))
    try:
        _run(srv, 20)
        assert captured.getvalue() == ""
        access_log.configure(enabled=True, sample=0.5)
        _run(srv, 200)
        n = len(captured.getvalue().splitlines())
        assert 60 < n < 150, n  # ~100 of 201
        access_log.configure(enabled=False, sample=1.0)
        before = captured.getvalue()
        _run(srv, 5)
        assert captured.getvalue() == before
    finally:
        srv.close()


def test_configure_logging_json_root(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json", force=True)
        logging.getLogger("quarry.test").info("hello %s", "world", extra={"collection": "c1"})
        record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert record["event"] == "hello world" and record["collection"] == "c1" and record["level"] == "INFO"
        with pytest.raises(ValueError, match="log format"):
            configure_logging("INFO", "xml", force=True)  # type: ignore[arg-type]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
