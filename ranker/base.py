"""The ranking stage's Protocol. Serving asks a `Ranker` to order the fused candidates.

Until a trained ONNX model is configured, `FusedOrder` keeps the recall fusion's order and scores —
the documented behaviour of the ranking stage without a model, not a placeholder model.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from retriever.core.types import Fused


@runtime_checkable
class Ranker(Protocol):
    name: str

    async def rank(
        self, query: Any, candidates: list[Fused], collection: Any, counters: Any = None
    ) -> list[Fused]:
        """Return `candidates` reordered (and rescored) best first. `counters`: the user's real-time
        counters (UserCounters) when the request names a user and the store answered, else None."""
        ...


class FusedOrder:
    """Keep the fusion order: the ranking stage with no model loaded."""

    name = "fused"

    async def rank(
        self, query: Any, candidates: list[Fused], collection: Any, counters: Any = None
    ) -> list[Fused]:
        return candidates
