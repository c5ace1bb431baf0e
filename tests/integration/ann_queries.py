"""Free-text MovieLens queries, the ANN-only Search, and the MovieLens build that tests compare between two
builds of the same catalog (a static query encoder, an int8 encoder) over real gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc
from indexer.build import build_snapshot
from indexer.datasets import load_dataset

QUERIES = (
    "star wars",
    "animated movie about toys",
    "space adventure",
    "a romantic comedy in new york",
    "horror film with zombies",
    "war movie",
    "godfather",
    "batman returns",
    "children's film about a pig",
    "detective thriller",
)


def ann_ids(stub: search_pb2_grpc.SearchServiceStub, collection: str, query: str) -> list[str]:
    """The ids the ANN branch alone answers with (top 10); the branch must have answered OK."""
    req = pb.SearchRequest(collection=collection, query=query, top_k=10, debug=True, branches=["ann"])
    resp = stub.Search(req, timeout=10)
    stats = {b.branch: b for b in resp.branch_stats}
    assert stats["ann"].status == pb.BRANCH_STATUS_OK, stats["ann"].detail
    return [h.id for h in resp.hits]


def ann_overlaps(
    a: search_pb2_grpc.SearchServiceStub,
    a_collection: str,
    b: search_pb2_grpc.SearchServiceStub,
    b_collection: str,
) -> list[float]:
    """Per query of QUERIES, the share of ANN top-10 ids two servings have in common (each answers 10)."""
    overlap = []
    for q in QUERIES:
        got, want = ann_ids(a, a_collection, q), ann_ids(b, b_collection, q)
        assert len(got) == 10 and len(want) == 10, (q, got, want)
        overlap.append(len(set(got) & set(want)) / 10)
    return overlap


def build_movielens(tmp_path_factory: pytest.TempPathFactory, collection: str, **options: Any) -> Path:
    """Real MovieLens-100K items (no events) built as ``collection`` with build ``options`` (an encoder,
    a query encoder)."""
    ds = load_dataset("movielens", tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("snap") / collection
    opts = ds.build_options(progress=False, collection=collection, **options)
    build_snapshot(ds.items(), out, opts, ds.source)
    return out
