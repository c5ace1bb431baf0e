"""Prometheus metrics as an operator scrapes them: a real server with `server.metrics_port`, real Redis,
real RPCs (good and bad), then GET /metrics and read the documented series (docs/operations.md)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from common.settings import CollectionSettings, ServerSettings
from common.v1 import search_pb2, search_pb2_grpc
from tests.conftest import ServerThread, free_port

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_endpoint(tiny_snapshot: Path, redis_url: str) -> None:
    mport = free_port()
    srv = ServerThread([tiny_snapshot], redis_url, server=ServerSettings(port=0, metrics_port=mport))
    try:
        before = _scrape(mport)
        with grpc.insecure_channel(srv.target) as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            for _ in range(3):
                version = stub.Search(
                    search_pb2.SearchRequest(collection="tiny", query="paris", top_k=3)
                ).snapshot_version
            with pytest.raises(grpc.RpcError):
                stub.Search(search_pb2.SearchRequest(collection="tiny", query="x", top_k=-1))
            with pytest.raises(grpc.RpcError):
                stub.Search(search_pb2.SearchRequest(collection="nope", query="x"))
            ev = search_pb2.LogEventsRequest(collection="tiny")
            ev.events.add(event_id="m-1", user_id="metrics-user", item_id="sh", type="click")
            ev.events.add(event_id="m-2", user_id="metrics-user", item_id="", type="click")  # rejected
            stub.LogEvents(ev)
            stub.LogEvents(ev)  # m-1 again: a duplicate
            rec = search_pb2.RecommendRequest(collection="tiny", user_id="metrics-user", top_k=3)
            stub.Recommend(rec)
        after = _scrape(mport)
    finally:
        srv.close()

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    svc = "quarry.v1.SearchService"
    assert delta("quarry_grpc_requests_total", service=svc, method="Search", code="OK") == 3
    assert delta("quarry_grpc_requests_total", service=svc, method="Search", code="INVALID_ARGUMENT") == 1
    assert delta("quarry_grpc_requests_total", service=svc, method="Search", code="NOT_FOUND") == 1
    assert delta("quarry_grpc_request_seconds_count", service=svc, method="Search") == 5
    assert delta("quarry_branch_results_total", collection="tiny", branch="inverted", status="ok") == 3
    assert delta("quarry_branch_candidates_count", collection="tiny", branch="inverted") == 3
    assert delta("quarry_events_total", collection="tiny", outcome="accepted") == 1
    assert delta("quarry_events_total", collection="tiny", outcome="duplicate") == 1
    assert delta("quarry_events_total", collection="tiny", outcome="rejected") == 2
    assert delta("quarry_redis_latency_seconds_count", op="append") == 2
    assert _value(after, "quarry_redis_breaker_open") == 0
    assert _value(after, "quarry_collection_items", collection="tiny") == 7
    # (Other tests in this process load other "tiny" registries; a server process has one.)
    assert (
        _value(after, "quarry_generation_info", collection="tiny", snapshot_version=version, generation="")
        == 1
    )
    assert _value(after, "process_resident_memory_bytes") > 0
    # Each stage of an answered request, once a request: the three Searches and the Recommend; the two
    # refused Searches record none (their stage set is incomplete).
    from retriever.service import RECOMMEND, SEARCH

    for pipeline, answered in ((SEARCH, 3), (RECOMMEND, 1)):
        for stage in pipeline.stage_names:
            assert delta("quarry_stage_seconds_count", pipeline=pipeline.name, stage=stage) == answered, stage
    assert "post_filter" in SEARCH.stage_names and "exclude_seen" in RECOMMEND.stage_names
    stages_s = sum(delta("quarry_stage_seconds_sum", pipeline="search", stage=n) for n in SEARCH.stage_names)
    assert delta("quarry_stage_seconds_sum", pipeline="search", stage="recall") > 0
    # The stages run inside the handler: together they take less than the answered calls' handler time.
    assert 0 < stages_s < delta("quarry_grpc_request_seconds_sum", service=svc, method="Search")


def test_ranker_metrics(tiny_snapshot: Path, tmp_path: Path) -> None:
    from common.types import Fused, SourceScore
    from ranker.model import train_synthetic
    from ranker.schema import DEFAULT_SCHEMA
    from ranker.serving import load_model_ranker
    from retriever.core.types import SearchQuery
    from retriever.generations import Collection

    model, m, _, _ = train_synthetic(DEFAULT_SCHEMA, n=2000, max_epochs=3)
    path = tmp_path / "model.onnx"
    model.to_onnx(path, schema=DEFAULT_SCHEMA, model_version="metrics-v1", metrics=m)
    ranker = load_model_ranker(path, "tiny", window_ms=0.0, providers=["CPUExecutionProvider"])
    assert ranker is not None
    coll = Collection(tiny_snapshot, CollectionSettings())
    count = REGISTRY.get_sample_value("quarry_ranker_latency_seconds_count", {"collection": "tiny"}) or 0.0
    fused = [Fused(o, 1.0 / (o + 1), [SourceScore("inverted", 1.0, o + 1)]) for o in range(5)]
    asyncio.run(ranker.rank(SearchQuery(collection="tiny"), fused, coll))
    assert (
        REGISTRY.get_sample_value("quarry_ranker_latency_seconds_count", {"collection": "tiny"}) == count + 1
    )
    assert REGISTRY.get_sample_value("quarry_ranker_candidates_sum", {"collection": "tiny"}) >= 5
    assert (
        REGISTRY.get_sample_value(
            "quarry_ranker_info",
            {"collection": "tiny", "model": "metrics-v1", "provider": "CPUExecutionProvider"},
        )
        == 1
    )
