"""quarry.v1.AdminService: Status, Reload, Rollback over `retriever.lifecycle` — bearer-token protected."""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from common.v1 import admin_pb2 as pb
from retriever.api.errors import rpc
from retriever.core.errors import InvalidArgument, Unauthenticated
from retriever.lifecycle import GenerationStatus, Lifecycle, ReloadOutcome
from retriever.realtime import ChangeOutcome, Realtime

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name


def _status(s: GenerationStatus) -> pb.CollectionStatus:
    return pb.CollectionStatus(
        collection=s.collection,
        snapshot_version=s.snapshot_version,
        generation=s.generation,
        path=str(s.path),
        items=s.items,
        branches=s.branches,
        unavailable=s.unavailable,
        ranker=s.ranker,
        serving_since=s.serving_since,
        generations=s.generations,
        root_live=s.root_live,
        log_seq=s.log_seq,
        generation_log_seq=s.generation_log_seq,
        upserts=s.upserts,
        deletes=s.deletes,
        changelog=s.changelog,
        set_id=s.set_id,
        shards=[
            pb.ShardStatus(
                shard=i,
                replicas=[
                    pb.ReplicaStatus(
                        address=r["address"],
                        in_flight=r["in_flight"],
                        ejected=r["ejected"],
                        failures=r["failures"],
                        p50_ms=r["p50_ms"] or 0.0,
                        p95_ms=r["p95_ms"] or 0.0,
                    )
                    for r in replicas
                ],
            )
            for i, replicas in enumerate(s.shards)
        ],
    )


def _reload(o: ReloadOutcome) -> pb.ReloadResponse:
    return pb.ReloadResponse(
        status=_status(o.status),
        previous_version=o.previous_version,
        load_ms=o.load_ms,
        unchanged=o.unchanged,
    )


def item_record(item: pb.Item) -> dict[str, Any]:
    """An Item message as a catalog record (validated by the core, per item)."""
    record: dict[str, Any] = {"id": item.id, "text": dict(item.text), "tags": list(item.tags)}
    if item.HasField("category"):
        record["category"] = item.category
    if item.HasField("lat"):
        record["lat"] = item.lat
    if item.HasField("lon"):
        record["lon"] = item.lon
    if item.attrs:
        record["attrs"] = dict(item.attrs)
    if item.embedding:
        record["embedding"] = list(item.embedding)
    return record


def _change(o: ChangeOutcome) -> pb.ChangeResponse:
    return pb.ChangeResponse(
        accepted=o.accepted,
        rejected=[pb.RejectedItem(index=r.index, id=r.id, reason=r.reason) for r in o.rejected],
        not_found=o.not_found,
        log_seq=o.log_seq,
        took_ms=o.took_ms,
    )


class AdminServicer:
    """Only converts and authenticates; `Lifecycle` and `Realtime` decide."""

    def __init__(self, lifecycle: Lifecycle, realtime: Realtime, token: str) -> None:
        if not token:
            raise ValueError("the admin service needs a token")
        self.lifecycle = lifecycle
        self.realtime = realtime
        self._expected = f"Bearer {token}".encode()

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        got = dict(context.invocation_metadata() or ()).get("authorization")
        if got is None:
            raise Unauthenticated("admin calls need the metadata 'authorization: Bearer <token>'")
        if not hmac.compare_digest(str(got).encode(), self._expected):
            raise Unauthenticated("wrong admin token")

    @rpc("Status", pb.StatusRequest, auth=True)
    async def status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        return pb.StatusResponse(collections=[_status(s) for s in self.lifecycle.status(request.collection)])

    @rpc("Reload", pb.ReloadRequest, auth=True)
    async def reload(self, request: pb.ReloadRequest, context: grpc.aio.ServicerContext) -> pb.ReloadResponse:
        return _reload(
            await self.lifecycle.reload(
                _required(request.collection), request.generation, keep_pointer=request.keep_pointer
            )
        )

    @rpc("Rollback", pb.RollbackRequest, auth=True)
    async def rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadResponse:
        return _reload(await self.lifecycle.rollback(_required(request.collection), request.generation))

    @rpc("Upsert", pb.UpsertRequest, auth=True)
    async def upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.ChangeResponse:
        name = _required(request.collection)
        return _change(await self.realtime.upsert(name, [item_record(it) for it in request.items]))

    @rpc("Delete", pb.DeleteRequest, auth=True)
    async def delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.ChangeResponse:
        return _change(await self.realtime.delete(_required(request.collection), list(request.ids)))

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=response.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE,
            {
                "Status": unary(self.status, pb.StatusResponse),
                "Reload": unary(self.reload, pb.ReloadResponse),
                "Rollback": unary(self.rollback, pb.ReloadResponse),
                "Upsert": unary(self.upsert, pb.ChangeResponse),
                "Delete": unary(self.delete, pb.ChangeResponse),
            },
        )


def _required(collection: str) -> str:
    if not collection:
        raise InvalidArgument("collection is required")
    return collection
