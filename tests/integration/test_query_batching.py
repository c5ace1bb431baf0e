"""Concurrent Searches' query encodings batched into shared MiniLM calls (ann.query_batch), over real gRPC
on real MovieLens-100K titles: the answers equal those of a server that encodes each query alone, and the
batches really formed (the server's own metric says so)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from common.v1 import search_pb2_grpc
from tests.conftest import ServerThread
from tests.integration.ann_queries import QUERIES, ann_ids

pytestmark = pytest.mark.integration

# Forty distinct texts, so with the cache off every request encodes.
TEXTS = [
    *QUERIES,
    *(f"{q} film" for q in QUERIES),
    *(f"old {q}" for q in QUERIES),
    *(f"{q}?" for q in QUERIES),
]


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"encoder": "minilm"}) or 0.0


@contextmanager
def _stub(
    snapshot: Path, query_batch: int, inline: bool = True
) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    """A server encoding with ``query_batch``, the query cache off (every request encodes) and a generous
    ANN budget: on a busy CI machine a query that waited behind a whole batch may take longer than the
    default 100 ms, and these tests are about the answers, not the deadline."""
    from common.settings import ServerSettings

    srv = ServerThread(
        [snapshot],
        server=ServerSettings(port=0, inline_recall=inline),
        collections={
            "movielens": {
                "ann": {"query_batch": query_batch, "query_cache_size": 0},
                "branches": {"ann": {"timeout_ms": 5000}},
            }
        },
    )
    try:
        with grpc.insecure_channel(srv.target) as channel:
            yield search_pb2_grpc.SearchServiceStub(channel)
    finally:
        srv.close()


@pytest.fixture(scope="module")
def alone(movielens_snapshot: Path) -> dict[str, list[str]]:
    """Each text's ANN ids from a server that encodes one query at a time (query_batch = 1)."""
    with _stub(movielens_snapshot, 1) as stub:
        return {t: ann_ids(stub, "movielens", t) for t in TEXTS}


@pytest.fixture(scope="module", params=[True, False], ids=["inline", "pool"])
def batched_stub(
    request: pytest.FixtureRequest, movielens_snapshot: Path
) -> Iterator[search_pb2_grpc.SearchServiceStub]:
    with _stub(movielens_snapshot, 8, inline=request.param) as stub:
        yield stub


def test_concurrent_searches_share_encoder_calls_and_answer_as_if_alone(
    alone: dict[str, list[str]], batched_stub: search_pb2_grpc.SearchServiceStub
) -> None:
    calls0, texts0 = (
        _metric("quarry_query_encode_batch_size_count"),
        _metric("quarry_query_encode_batch_size_sum"),
    )
    with ThreadPoolExecutor(16) as pool:
        got = dict(zip(TEXTS, pool.map(lambda t: ann_ids(batched_stub, "movielens", t), TEXTS), strict=True))
    calls = _metric("quarry_query_encode_batch_size_count") - calls0
    texts = _metric("quarry_query_encode_batch_size_sum") - texts0
    # Every request encoded its text through the batcher, and some shared a model call.
    assert texts == len(TEXTS), (calls, texts)
    assert calls < texts, (calls, texts)
    # fp32 MiniLM gives a text the same vector in a batch as alone (rounding apart): the same answers.
    assert got == alone


def test_the_servers_batcher_lingers_as_its_settings_say(movielens_snapshot: Path) -> None:
    """`ann.query_batch_linger_ms` (off by default) is the serving batcher's linger, in seconds (a batcher
    of its own: batchers are shared per encoder and shape)."""
    from common.settings import AnnSettings

    assert AnnSettings().query_batch_linger_ms == 0.0
    with pytest.raises(ValueError, match="query_batch_linger_ms"):
        AnnSettings(query_batch_linger_ms=-1)
    for linger_ms in (None, 4.0):
        ann: dict[str, object] = {"query_batch": 8}
        if linger_ms is not None:
            ann["query_batch_linger_ms"] = linger_ms
        srv = ServerThread([movielens_snapshot], collections={"movielens": {"ann": ann}})
        try:
            branch = srv.server.registry.get("movielens").branches["ann"]
            batcher = branch.query.batcher  # type: ignore[attr-defined]
            assert batcher is not None
            assert batcher.linger_s == (0.0 if linger_ms is None else 0.004)
        finally:
            srv.close()
