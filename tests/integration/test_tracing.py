"""OpenTelemetry over a real gRPC server: one span per RPC, with recall (one child per branch), fusion and
rank beneath it, checked with the SDK's in-memory exporter; the access log carries the trace id."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.logs import formatter
from common.settings import TracingSettings
from common.v1 import search_pb2, search_pb2_grpc
from retriever.tracing import make_tracer_provider
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration


def test_span_tree_of_a_search(tiny_snapshot: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(formatter("json"))
    access = logging.getLogger("quarry.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    srv = ServerThread([tiny_snapshot], tracer_provider=provider)
    try:
        with grpc.insecure_channel(srv.target) as ch:
            req = search_pb2.SearchRequest(collection="tiny", query="paris", top_k=3)
            req.location.lat, req.location.lon = 48.85, 2.35
            search_pb2_grpc.SearchServiceStub(ch).Search(req, timeout=10)
    finally:
        srv.close()
        access.removeHandler(handler)
        access.setLevel(level)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    rpc = next(s for s in spans if s.name.endswith("SearchService/Search"))
    assert rpc.parent is None
    trace_id = rpc.context.trace_id
    assert all(s.context.trace_id == trace_id for s in spans), "one trace per request"
    for name in ("recall", "fusion", "rank"):
        assert by_name[name].parent is not None and by_name[name].parent.span_id == rpc.context.span_id
    recall = by_name["recall"]
    branches = {s.name: s for s in spans if s.name.startswith("branch ")}
    assert {"branch inverted", "branch geo", "branch ann"} <= set(branches)
    assert all(b.parent is not None and b.parent.span_id == recall.context.span_id for b in branches.values())
    # every candidate the ranking stage received, not only the three hits it had to build
    assert by_name["rank"].attributes["quarry.candidates"] > 3
    inv = branches["branch inverted"].attributes
    assert inv["quarry.branch.status"] == "ok" and inv["quarry.branch.candidates"] > 0
    (line,) = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert line["trace_id"] == format(trace_id, "032x")


def test_no_endpoint_no_tracing() -> None:
    assert make_tracer_provider(TracingSettings()) is None
    provider = make_tracer_provider(TracingSettings(otlp_endpoint="http://127.0.0.1:4317", sample_ratio=0.5))
    assert provider is not None
    provider.shutdown()


def test_stage_spans_only_where_a_provider_records_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider given and none installed globally: a stage gets no span (not even a no-op one). A
    provider installed globally (auto-instrumentation does so) is honoured."""
    from opentelemetry import trace

    from retriever.generations import Registry
    from retriever.service import SearchService
    from retriever.settings import load_settings

    svc = SearchService(load_settings(), Registry())
    try:
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # the tests install none
        with svc.span("recall", {"quarry.collection": "x"}) as span:
            assert span is trace.INVALID_SPAN and not span.is_recording()
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
        monkeypatch.setattr(svc, "tracer", provider.get_tracer("quarry.retriever"))
        with svc.span("recall", {"quarry.collection": "x"}) as span:
            assert span.is_recording()
        assert [s.name for s in exporter.get_finished_spans()] == ["recall"]
    finally:
        svc.close()
