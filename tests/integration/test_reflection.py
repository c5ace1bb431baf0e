"""ghz/grpcurl resolve methods through reflection by the method's full name; that must work."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

pytestmark = pytest.mark.integration


def test_reflection_resolves_method_symbol(server: str) -> None:
    with grpc.insecure_channel(server) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = db.get_services()
        assert "quarry.v1.SearchService" in services and "grpc.health.v1.Health" in services
        pool = DescriptorPool(db)
        # What ghz does: look up the file containing the *method* symbol.
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = iter(
            [reflection_pb2.ServerReflectionRequest(file_containing_symbol="quarry.v1.SearchService.Search")]
        )
        (resp,) = list(stub.ServerReflectionInfo(reqs, timeout=5))
        assert resp.WhichOneof("message_response") == "file_descriptor_response", resp
        method = pool.FindMethodByName("quarry.v1.SearchService.Search")
        assert method.input_type.full_name == "quarry.v1.SearchRequest"
        assert method.output_type.full_name == "quarry.v1.SearchResponse"


def test_reflection_still_reports_unknown_symbols(server: str) -> None:
    with grpc.insecure_channel(server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        for sym in ("quarry.v1.SearchService.Nope", "nope.Nope.Nope", "Nope"):
            (resp,) = list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=sym)]), timeout=5
                )
            )
            assert resp.WhichOneof("message_response") == "error_response", sym
            assert resp.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
