"""The ranking stage's Protocol and the types at its boundary. Serving asks a `Ranker` to order the fused
candidates; what a ranker may read is spelled out here (`RankQuery`, `RankingContext`, `UserCounters`), so
the ranker depends only on the shared ground (`common`), never on the retriever that calls it.

Until a trained ONNX model is configured, `FusedOrder` keeps the recall fusion's order and scores —
the documented behaviour of the ranking stage without a model, not a placeholder model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeGuard, runtime_checkable

import numpy as np

from common.profile import TagTable
from common.protocols import implements
from common.types import CandidateArrays, Fused, GeoPoint, ItemWindows, SeedWeights, UserCounters
from ranker.schema import FeatureSchema


class RankQuery(Protocol):
    """What a ranker reads from the request (the retriever's SearchQuery satisfies it)."""

    @property
    def location(self) -> GeoPoint | None: ...


class ForwardColumns(Protocol):
    """What a ranker reads from the forward rows: columns over ordinals. `common.index.forward.ForwardStore`
    satisfies it, and so does the retriever's LiveForward (a generation's rows plus real-time upserts)."""

    @property
    def ids(self) -> Sequence[str]: ...
    @property
    def attr_names(self) -> Sequence[str]: ...
    @property
    def lat(self) -> np.ndarray: ...
    @property
    def lon(self) -> np.ndarray: ...
    def attr(self, name: str) -> np.ndarray:
        """float64 array over ordinals; NaN where the item lacks the attribute."""
        ...


class RankingContext(Protocol):
    """What a ranker reads from the generation being served (the retriever's Collection satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def forward(self) -> ForwardColumns:
        """Rows of every ordinal a candidate may carry."""
        ...

    @property
    def item_popularity(self) -> np.ndarray | None:
        """Popularity over the same ordinals; None without behavior data."""
        ...

    @property
    def tag_table(self) -> TagTable | None:
        """Item tags (common.profile) for the user–item affinity; None without any."""
        ...

    @property
    def item_weight(self) -> np.ndarray | None:
        """Each item's mean event strength over the same ordinals (common.index.behavior); None without
        behavior data or in snapshots built before it."""
        ...

    def i2i_affinity(self, seeds: SeedWeights, ordinals: np.ndarray) -> dict[str, np.ndarray]:
        """The i2i affinity features (`ranker.features.AFFINITY_FEATURES`) of the candidates `ordinals`
        for the user's `seeds`: feature name → one value a candidate; {} without i2i tables."""
        ...


@runtime_checkable
class Ranker(Protocol):
    name: str

    async def rank(
        self,
        query: RankQuery,
        candidates: list[Fused],
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> list[Fused]:
        """Return `candidates` reordered (and rescored) best first. `counters`: the user's real-time
        counters when the request names a user and the store answered, else None; `item_windows`: the
        candidates' real-time event counts, given to rankers that read features (`ExplainingRanker`)
        when the store answered, else None."""
        ...


@runtime_checkable
class ExplainingRanker(Protocol):
    """A ranker that can say what it reads: its input features per candidate (debug requests)."""

    #: The features it reads (the ranking stage fetches the item windows only for a ranker reading them).
    schema: FeatureSchema

    def explain(
        self,
        query: RankQuery,
        candidates: list[Fused],
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """Feature names and the model input (one row per candidate, in `candidates` order), computed
        exactly as `rank` computes them. Call it before `rank`, which rescores the candidates."""
        ...


@runtime_checkable
class ArrayRanker(Protocol):
    """A ranker that scores candidates given as arrays (`CandidateArrays`): the serving path, which then
    builds `Fused` objects for the answer's hits alone. Its `rank` must order exactly by these scores
    (stable: equal scores keep the fused order) and rescore with them."""

    async def score_arrays(
        self,
        query: RankQuery,
        candidates: CandidateArrays,
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> np.ndarray:
        """One score a candidate, in `candidates` order (higher is better)."""
        ...


def explains(ranker: object) -> TypeGuard[ExplainingRanker]:
    """`isinstance(ranker, ExplainingRanker)`, decided once per class (common.protocols)."""
    return implements(ranker, ExplainingRanker)


def scores_arrays(ranker: object) -> TypeGuard[ArrayRanker]:
    """`isinstance(ranker, ArrayRanker)`, decided once per class (common.protocols)."""
    return implements(ranker, ArrayRanker)


class FusedOrder:
    """Keep the fusion order: the ranking stage with no model loaded."""

    name = "fused"

    async def rank(
        self,
        query: RankQuery,
        candidates: list[Fused],
        collection: RankingContext,
        counters: UserCounters | None = None,
        item_windows: ItemWindows | None = None,
    ) -> list[Fused]:
        return candidates
