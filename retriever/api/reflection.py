"""Server reflection that also resolves *method* symbols.

ghz and grpcurl resolve `quarry.v1.SearchService.Search` by asking reflection for the file containing
that symbol. The stock servicer asks protobuf's descriptor pool, which indexes messages, enums and
services but not methods, and answers "Symbol not found". This pool wrapper falls back from a method
name to its service's file; every other lookup goes to the real pool unchanged.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection


class MethodAwarePool:
    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            if not service_name:
                raise
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if service.FindMethodByName(method) is None:
                raise KeyError(symbol) from None
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable(server: Any, service_names: list[str]) -> None:
    reflection.enable_server_reflection(
        [*service_names, reflection.SERVICE_NAME], server, pool=MethodAwarePool()
    )
