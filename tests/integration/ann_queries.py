"""Free-text MovieLens queries and the ANN-only Search that tests compare between two builds of the
same catalog (a static query encoder, an int8 encoder) over real gRPC."""

from __future__ import annotations

from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc

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
