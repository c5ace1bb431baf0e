"""The one declared ranking feature schema, shared by the offline trainer and the online server.

Train/serve skew is the classic way a ranking model silently degrades: the trainer computes a feature
one way, the server another. So both sides build their vectors through `FeatureSchema.vectorize` and
nothing else, and the exported model records `FeatureSchema.fingerprint()`; the server refuses a model
whose fingerprint differs from the schema it runs (see `ranker.session`).

Rows are plain mappings ``name -> float``. Missing keys (and non-finite values) take the feature's
declared default. Unknown keys are ignored rather than raised on: upstream stages add signals before the
model learns to use them, and a deploy must not start failing requests because of that. They are
counted instead (pass a `collections.Counter` as ``unknown``) so a typo'd feature name shows up in
metrics rather than silently scoring everything with the default.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, cast, get_args

import numpy as np

Source = Literal["user", "item", "query_item"]
Transform = Literal["none", "log1p", "clip01"]

_SOURCES: tuple[str, ...] = get_args(Source)
_TRANSFORMS: tuple[str, ...] = get_args(Transform)


@dataclass(frozen=True)
class Feature:
    name: str
    source: Source
    default: float
    transform: Transform = "none"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("feature name must be non-empty")
        if self.source not in _SOURCES:
            raise ValueError(f"feature {self.name!r}: unknown source {self.source!r}")
        if self.transform not in _TRANSFORMS:
            raise ValueError(f"feature {self.name!r}: unknown transform {self.transform!r}")
        if not math.isfinite(self.default):
            raise ValueError(f"feature {self.name!r}: default must be finite")

    def apply(self, value: float) -> float:
        """Transform one raw value (the default already substituted)."""
        if self.transform == "log1p":
            # Counts and distances are heavy-tailed; negatives are data errors, not signal.
            return math.log1p(max(value, 0.0))
        if self.transform == "clip01":
            return min(max(value, 0.0), 1.0)
        return value


@dataclass(frozen=True)
class FeatureSchema:
    version: str
    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {dupes}")
        if not self.features:
            raise ValueError("a schema needs at least one feature")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def dim(self) -> int:
        return len(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "features": [
                {"name": f.name, "source": f.source, "default": float(f.default), "transform": f.transform}
                for f in self.features
            ],
        }

    def to_json(self) -> str:
        # Canonical form: the fingerprint hashes exactly this string.
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FeatureSchema:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSchema:
        feats = tuple(
            Feature(
                name=str(f["name"]),
                source=cast(Source, f["source"]),
                default=float(f["default"]),
                transform=cast(Transform, f.get("transform", "none")),
            )
            for f in data["features"]
        )
        return cls(version=str(data["version"]), features=feats)

    def without(self, *names: str) -> FeatureSchema:
        """This schema less `names` (a model that reads fewer features); the version says which."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise ValueError(f"not in schema {self.version!r}: {unknown}")
        kept = tuple(f for f in self.features if f.name not in names)
        return FeatureSchema(f"{self.version}-without-{'+'.join(sorted(names))}", kept)

    def check_served_by(self, server: FeatureSchema) -> None:
        """Raise ValueError unless `server` computes every feature this (a model's) schema reads, each
        defined the same way (source, default, transform): a model may read a subset, never a variant."""
        theirs = {f.name: f for f in server.features}
        for f in self.features:
            if f.name not in theirs:
                raise ValueError(
                    f"the model reads {f.name!r}, which schema {server.version!r} does not compute"
                )
            if theirs[f.name] != f:
                raise ValueError(
                    f"the model reads {f.name!r} as {f}, schema {server.version!r} computes {theirs[f.name]}"
                )

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: changes with any name, order, default or transform change."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def vectorize(
        self, rows: Sequence[Mapping[str, float]], *, unknown: Counter[str] | None = None
    ) -> np.ndarray:
        """Rows -> float32 (n, dim). Missing/non-finite -> default; unknown keys counted into ``unknown``."""
        names = self.names
        if unknown is not None:
            known = frozenset(names)
            for row in rows:
                if not known.issuperset(row.keys()):
                    unknown.update(k for k in row if k not in known)
        if not rows:
            return np.empty((0, self.dim), dtype=np.float32)
        # Gather in one comprehension and transform whole columns: a per-cell Python loop costs ~50x
        # the MLP itself at a few hundred candidates. None and missing both become NaN here.
        nan = math.nan
        return self._finish(np.array([[row.get(n, nan) for n in names] for row in rows], dtype=np.float64))

    def vectorize_columns(self, columns: Mapping[str, np.ndarray | float], n: int) -> np.ndarray:
        """`vectorize` of the n rows whose values the columns hold (a column: one value per row, or one
        scalar for every row; NaN = missing). Equal to `vectorize` over the same rows, without building
        a dict a row."""
        raw = np.full((n, self.dim), math.nan, dtype=np.float64)
        for j, name in enumerate(self.names):
            col = columns.get(name)
            if col is not None:
                raw[:, j] = col
        return self._finish(raw)

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        """Raw values (NaN/inf = missing) → defaults substituted, columns transformed, float32."""
        raw = np.where(np.isfinite(raw), raw, self._defaults)
        cols = self._transform_cols
        raw[:, cols["log1p"]] = np.log1p(np.maximum(raw[:, cols["log1p"]], 0.0))
        raw[:, cols["clip01"]] = np.clip(raw[:, cols["clip01"]], 0.0, 1.0)
        return raw.astype(np.float32)

    @cached_property
    def _defaults(self) -> np.ndarray:
        return np.array([f.default for f in self.features], dtype=np.float64)

    @cached_property
    def _transform_cols(self) -> dict[str, np.ndarray]:
        return {
            t: np.array([i for i, f in enumerate(self.features) if f.transform == t], dtype=np.intp)
            for t in _TRANSFORMS
        }


#: The item's real-time window counts: what the ranking stage reads from the store for its candidates
#: (one call a request, made only for a model that reads any of them).
ITEM_WINDOW_FEATURES: tuple[str, ...] = ("item_events_1h", "item_events_1d", "item_events_7d")


def reads_item_windows(schema: FeatureSchema) -> bool:
    return any(n in ITEM_WINDOW_FEATURES for n in schema.names)


@dataclass(frozen=True)
class SeedRecipe:
    """Which of a user's items seed the i2i affinity features and how much each weighs (the shape of
    the behavior branch's settings, `retriever.recall.base.decayed_seeds`): the newest `recent_n`
    real-time events (event weight × decay^position), then `history_n` long-term items (history_weight ×
    decay^position); the weight halves every `decay_half_life` positions. Fixed here, not in settings:
    they are part of the features' definition, which a trained model depends on."""

    recent_n: int
    history_n: int
    decay_half_life: float
    history_weight: float


def affinity_feature(method: str, suffix: str) -> str:
    return f"user_{method}_affinity{suffix}"


#: The i2i affinity features' memories, by feature-name suffix: the behavior branch's default recipe
#: (what the user did lately), a longer one (the user's taste), and the user's whole long-term history as
#: of the snapshot, every item alike (the seeds EASE is defined with: on MovieLens-1M its score over all
#: of a user's items put the ranker 0.016 NDCG@10 above the same over the decayed last 100).
AFFINITY_MEMORIES: dict[str, SeedRecipe] = {
    "": SeedRecipe(recent_n=20, history_n=20, decay_half_life=10.0, history_weight=0.5),
    "_long": SeedRecipe(recent_n=50, history_n=50, decay_half_life=50.0, history_weight=0.5),
    "_all": SeedRecipe(recent_n=0, history_n=500, decay_half_life=math.inf, history_weight=1.0),
}
#: The real-time events the memories read at most (how many the ranking stage reads for them).
AFFINITY_RECENT_N = max(r.recent_n for r in AFFINITY_MEMORIES.values())
#: Σ over the user's seeds of weight × i2i similarity (seed, candidate), for each i2i table and memory:
#: how close a candidate is to what the user did, whichever branch found it (`i2i_score` is only known
#: for the behavior branch's own candidates, under its one table).
AFFINITY_FEATURES: tuple[str, ...] = tuple(
    affinity_feature(method, suffix) for method in ("swing", "itemcf", "ease") for suffix in AFFINITY_MEMORIES
)


def reads_affinity(schema: FeatureSchema) -> bool:
    return any(n in AFFINITY_FEATURES for n in schema.names)


# Defaults are chosen so that "unknown" never looks like a strong signal: an unknown age counts as old
# (no freshness boost), an unknown distance as far, an item no branch found as ranked last.
DEFAULT_SCHEMA = FeatureSchema(
    version="v5",
    features=(
        Feature("user_events_total", "user", 0.0, "log1p"),
        Feature("user_events_1h", "user", 0.0, "log1p"),
        Feature("user_events_1d", "user", 0.0, "log1p"),
        Feature("user_events_7d", "user", 0.0, "log1p"),
        Feature("user_distinct_items", "user", 0.0, "log1p"),
        Feature("user_avg_weight", "user", 0.0, "none"),
        Feature("item_popularity", "item", 0.0, "log1p"),
        Feature("item_age_days", "item", 365.0, "log1p"),
        # The item's mean event strength (a rating's stars; shrunk to the mean, common.index.behavior).
        Feature("item_avg_weight", "item", 0.0, "none"),
        # The item's real-time events in the last hour / day / week (LogEvents' item buckets).
        Feature("item_events_1h", "item", 0.0, "log1p"),
        Feature("item_events_1d", "item", 0.0, "log1p"),
        Feature("item_events_7d", "item", 0.0, "log1p"),
        Feature("bm25_score", "query_item", 0.0, "log1p"),
        Feature("ann_similarity", "query_item", 0.0, "none"),
        Feature("distance_km", "query_item", 20_000.0, "log1p"),
        Feature("i2i_score", "query_item", 0.0, "none"),
        Feature("popular_score", "query_item", 0.0, "none"),
        Feature("preference_score", "query_item", 0.0, "none"),
        # How much the item's tags match the user's preference profile (0..1; common.profile).
        Feature("user_tag_affinity", "query_item", 0.0, "none"),
        *(Feature(name, "query_item", 0.0, "log1p") for name in AFFINITY_FEATURES),
        Feature("found_by_inverted", "query_item", 0.0, "clip01"),
        Feature("found_by_ann", "query_item", 0.0, "clip01"),
        Feature("found_by_behavior", "query_item", 0.0, "clip01"),
        Feature("found_by_geo", "query_item", 0.0, "clip01"),
        Feature("found_by_popular", "query_item", 0.0, "clip01"),
        Feature("found_by_preference", "query_item", 0.0, "clip01"),
        # Each branch's own rank (an item the branch did not find counts as far down its list).
        Feature("inverted_rank", "query_item", 1000.0, "log1p"),
        Feature("ann_rank", "query_item", 1000.0, "log1p"),
        Feature("behavior_rank", "query_item", 1000.0, "log1p"),
        Feature("geo_rank", "query_item", 1000.0, "log1p"),
        Feature("popular_rank", "query_item", 1000.0, "log1p"),
        Feature("preference_rank", "query_item", 1000.0, "log1p"),
        Feature("best_branch_rank", "query_item", 1000.0, "log1p"),
        Feature("branches_found", "query_item", 0.0, "none"),
        Feature("fused_score", "query_item", 0.0, "none"),
    ),
)
