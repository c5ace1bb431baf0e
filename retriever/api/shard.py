"""quarry.v1.ShardService over gRPC: converts the root's recall request, asks the shard core, converts back."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common.types import Ranked
from common.v1 import shard_pb2 as spb
from retriever.api import convert
from retriever.api.errors import rpc
from retriever.cluster.shard import BranchCall, ShardCore, ShardRequest, ShardResult
from retriever.core.errors import InvalidArgument
from retriever.recall.base import RootInputs

SHARD_SERVICE = spb.DESCRIPTOR.services_by_name["ShardService"].full_name


def shard_request(req: spb.ShardRecallRequest) -> ShardRequest:
    seeds: dict[str, dict[int, float]] = {}
    for s in req.seeds:
        if len(s.ordinals) != len(s.weights):
            raise InvalidArgument(
                f"seeds for {s.branch!r}: {len(s.ordinals)} ordinals, {len(s.weights)} weights"
            )
        seeds[s.branch] = dict(zip(s.ordinals, s.weights, strict=True))
    vector = None
    if req.query_vector:
        if len(req.query_vector) % 4:
            raise InvalidArgument("query_vector must be float32 values (a multiple of 4 bytes)")
        vector = np.frombuffer(req.query_vector, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(vector)):
            raise InvalidArgument("query_vector has a non-finite value")
    profile = np.asarray(req.profile, dtype=np.float64) if len(req.profile) else None
    query = convert.search_query(req.query)
    return ShardRequest(
        collection=req.collection,
        set_id=req.set_id,
        generation=req.generation,
        query=replace(query, collection=req.collection),
        branches=tuple(BranchCall(b.name, b.quota, b.timeout_ms) for b in req.branches),
        root=RootInputs(
            seeds=seeds,
            profile=profile,
            vector=vector,
            term_df={(t.field, t.term): t.df for t in req.term_df},
        ),
        with_display=req.with_display,
    )


def shard_response(res: ShardResult) -> spb.ShardRecallResponse:
    out = spb.ShardRecallResponse(shard=res.shard, snapshot_version=res.snapshot_version)
    for r in res.results:
        found = Ranked.of(r.candidates)
        out.branches.add(
            branch=r.branch,
            status=convert.branch_status(r.status),
            latency_ms=r.latency_ms,
            detail=r.detail,
            ordinals=found.ordinals.astype("<i8").tobytes(),
            scores=found.scores.astype("<f8").tobytes(),
        )
    out.rows = arrow_bytes(res.rows)
    return out


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def int64s(raw: bytes, what: str) -> np.ndarray:
    if len(raw) % 8:
        raise InvalidArgument(f"{what} must be int64 values (a multiple of 8 bytes)")
    return np.frombuffer(raw, dtype="<i8")


class ShardServicer:
    """quarry.v1.ShardService. Only converts; the shard core decides."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    @rpc("ShardRecall", spb.ShardRecallRequest)
    async def recall(
        self, request: spb.ShardRecallRequest, context: grpc.aio.ServicerContext
    ) -> spb.ShardRecallResponse:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return shard_response(await self.core.recall(shard_request(request), deadline))

    @rpc("ShardFetch", spb.ShardFetchRequest)
    async def fetch(
        self, request: spb.ShardFetchRequest, context: grpc.aio.ServicerContext
    ) -> spb.ShardFetchResponse:
        gords = int64s(request.ordinals, "ordinals")
        rows = await self.core.fetch(request.collection, request.set_id, gords)
        return spb.ShardFetchResponse(rows=arrow_bytes(rows))

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=response.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SHARD_SERVICE,
            {
                "Recall": unary(self.recall, spb.ShardRecallResponse),
                "Fetch": unary(self.fetch, spb.ShardFetchResponse),
            },
        )
