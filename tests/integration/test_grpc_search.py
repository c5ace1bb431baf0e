"""End to end over a real grpc.aio server on a free port, with a real stub."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
async def stub(server: str):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(server) as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


async def test_scifact_search(stub: search_pb2_grpc.SearchServiceStub) -> None:
    resp = await stub.Search(
        pb.SearchRequest(
            collection="scifact", query="1 in 5 million in UK have abnormal PrP positivity.", debug=True
        ),
        timeout=5,
    )
    assert len(resp.hits) == 10
    assert resp.hits[0].id == "13734012"  # the judged-relevant abstract for this claim (train qrels)
    assert resp.snapshot_version.startswith("scifact-") and not resp.degraded
    assert (
        resp.hits[0].title
        and resp.hits[0].sources[0].branch == "inverted"
        and resp.hits[0].sources[0].rank == 1
    )
    assert [h.score for h in resp.hits] == sorted((h.score for h in resp.hits), reverse=True)
    stats = {b.branch: b for b in resp.branch_stats}
    inv = stats["inverted"]
    assert inv.status == pb.BRANCH_STATUS_OK and inv.candidates >= 10 and inv.latency_ms > 0
    # This snapshot was built without vectors: the ANN branch says so instead of failing the request.
    assert stats["ann"].status == pb.BRANCH_STATUS_DISABLED and "no vectors" in stats["ann"].detail


async def test_chinese_query_finds_shanghai_in_geonames(stub: search_pb2_grpc.SearchServiceStub) -> None:
    for text in ("上海", "上海市", "Shanghai"):
        resp = await stub.Search(pb.SearchRequest(collection="geonames", query=text, top_k=3), timeout=5)
        assert resp.hits and resp.hits[0].id == "1796236" and resp.hits[0].title == "Shanghai", text
    resp = await stub.Search(pb.SearchRequest(collection="geonames", query="北京", top_k=1), timeout=5)
    assert resp.hits[0].title == "Beijing"


async def test_filters_and_location_over_grpc(stub: search_pb2_grpc.SearchServiceStub) -> None:
    req = pb.SearchRequest(collection="geonames", query="springfield", top_k=20)
    req.filters.categories.append("US")
    req.filters.ranges.add(field="population", min=100_000)
    req.location.lat, req.location.lon = 39.8, -89.65  # Springfield, Illinois
    resp = await stub.Search(req, timeout=5)
    assert resp.hits and all(h.category == "US" and h.attributes["population"] >= 100_000 for h in resp.hits)
    assert all(h.HasField("distance_m") for h in resp.hits)
    assert min(h.distance_m for h in resp.hits) < 10_000


async def test_top_k_zero_means_default(stub: search_pb2_grpc.SearchServiceStub) -> None:
    resp = await stub.Search(pb.SearchRequest(collection="geonames", query="san"), timeout=5)
    assert len(resp.hits) == 10
    assert not resp.branch_stats  # debug off


BAD = [
    (pb.SearchRequest(collection="", query="x"), grpc.StatusCode.INVALID_ARGUMENT, "collection is required"),
    (
        pb.SearchRequest(collection="nope", query="x"),
        grpc.StatusCode.NOT_FOUND,
        "collection 'nope' not found",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", top_k=1001),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k 1001 exceeds the maximum of 1000",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", top_k=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k must be >= 0",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", location=pb.GeoPoint(lat=math.nan, lon=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "location.lat must be a finite number",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", location=pb.GeoPoint(lat=91, lon=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"location.lat must be in \[-90, 90\]",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", location=pb.GeoPoint(lat=0, lon=-180.5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        r"location.lon must be in \[-180, 180\]",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", radius_m=1000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "radius_m is set but location is missing",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x", radius_m=math.inf, location=pb.GeoPoint(lat=0, lon=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "radius_m must be a finite number",
    ),
    (
        pb.SearchRequest(collection="tiny", query="x" * 100_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query is 100000 bytes; the maximum is 4096",
    ),
    (
        pb.SearchRequest(
            collection="tiny",
            query="x",
            filters=pb.Filters(ranges=[pb.NumericRange(field="population", min=5, max=1)]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "min 5.0 > max 1.0",
    ),
    (
        pb.SearchRequest(
            collection="tiny",
            query="x",
            filters=pb.Filters(ranges=[pb.NumericRange(field="elevation", min=1)]),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown numeric attribute 'elevation'",
    ),
    (
        pb.SearchRequest(
            collection="tiny", query="x", filters=pb.Filters(ranges=[pb.NumericRange(field="population")])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs min or max",
    ),
]


@pytest.mark.parametrize(("request_", "code", "message"), BAD, ids=[m[:30] for _r, _c, m in BAD])
async def test_bad_requests_get_clear_errors_and_server_stays_up(
    stub: search_pb2_grpc.SearchServiceStub, request_: pb.SearchRequest, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.Search(request_, timeout=5)
    assert ei.value.code() == code
    assert pytest.importorskip("re").search(message, ei.value.details()), ei.value.details()
    ok = await stub.Search(pb.SearchRequest(collection="tiny", query="paris"), timeout=5)
    assert ok.hits


async def test_invalid_utf8_is_invalid_argument(server: str) -> None:
    # Hand-encode SearchRequest{collection="tiny", query=<invalid UTF-8>}: field 1 and 2, wire type 2.
    raw = b"\x0a\x04tiny" + b"\x12\x03\xff\xfe\xfd"
    async with grpc.aio.insecure_channel(server) as channel:
        call = channel.unary_unary(
            "/quarry.v1.SearchService/Search",
            request_serializer=None,
            response_deserializer=pb.SearchResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call(raw, timeout=5)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "valid UTF-8" in ei.value.details()
        stub = search_pb2_grpc.SearchServiceStub(channel)
        assert (await stub.Search(pb.SearchRequest(collection="tiny", query="上海"), timeout=5)).hits[
            0
        ].id == "sh"


async def test_truncated_message_is_invalid_argument(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as channel:
        call = channel.unary_unary(
            "/quarry.v1.SearchService/Search", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call(b"\x0a\x40tiny", timeout=5)  # declares 64 bytes, carries 4
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health(server: str) -> None:
    async with grpc.aio.insecure_channel(server) as channel:
        h = health_pb2_grpc.HealthStub(channel)
        for service in ("", "quarry.v1.SearchService"):
            resp = await h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
