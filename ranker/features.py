"""Ranking features of fused candidates: the ONE function that training and serving both call.

Inputs are only what serving has at ranking time — the fused candidates with their per-branch sources,
the collection's forward store and popularity, the request's location, and the user's real-time
counters (from the RecentStore, i.e. what LogEvents maintained). The trainer replays its training events
through the same store and calls this same function, so offline and online vectors cannot drift.
`item_age_days` comes from the item's `created_ts` attribute (epoch seconds) or else its `year`
(1 January of it), relative to `now`; `user_events_1h/1d/7d` count the user's newest real-time events
(as many as the profile reads) within each window before the request (`UserCounters.recent_windows`);
`item_events_1h/1d/7d` are the item's events in the same windows as decayed counts (the store's item
states, `retriever.features.windows`; `ItemWindows`, read by the serving layer for the candidates).
`item_avg_weight` is the item's mean event strength in the snapshot (`BehaviorIndex.item_weight`);
`user_<table>_affinity[_long]` sum, over the user's seed items (`UserCounters.i2i_seeds`, derived by the
serving layer from the same real-time events and history under `ranker.schema.AFFINITY_MEMORIES`), each
seed's weight × its i2i similarity to the candidate (`RankingContext.i2i_affinity`), for every candidate
whichever branch found it, computed only for a model that reads them.
`feature_matrix` (serving and training) computes them as columns (`feature_columns`); `feature_rows` is
the same, one dict a candidate: the plain definition a randomized test holds the columns to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.geo import haversine_many
from common.profile import TagTable
from common.types import CandidateArrays, Fused, GeoPoint, ItemWindows, UserCounters
from ranker.base import ForwardColumns, RankingContext
from ranker.schema import DEFAULT_SCHEMA, FeatureSchema, reads_affinity

#: Which branch's raw score feeds which feature.
_SCORE_FEATURE = {
    "inverted": "bm25_score",
    "ann": "ann_similarity",
    "behavior": "i2i_score",
    "popular": "popular_score",
    "preference": "preference_score",
}
DAY_S = 86_400.0
_EPOCH_YEAR = 1970


def item_created_ts(forward: ForwardColumns) -> Callable[[np.ndarray], np.ndarray] | None:
    """When given items came to be (epoch seconds; NaN unknown), from `created_ts`, else `year`; a
    function of the candidates' ordinals, so a request converts only its own candidates."""
    if "created_ts" in forward.attr_names:
        created = forward.attr("created_ts")
        return lambda ords: created[ords]
    if "year" in forward.attr_names:
        year = forward.attr("year")
        return lambda ords: (year[ords] - _EPOCH_YEAR) * 365.2425 * DAY_S
    return None


@dataclass(frozen=True)
class FeatureInputs:
    """What the features of a request's candidates are computed from (besides the candidates)."""

    lat: np.ndarray  # over every ordinal
    lon: np.ndarray
    popularity: np.ndarray | None
    origin: GeoPoint | None  # the request's location
    counters: UserCounters | None
    created: Callable[[np.ndarray], np.ndarray] | None = None  # ordinals → epoch seconds (NaN unknown)
    now: float | None = None  # when the request happens (default: the clock)
    tag_table: TagTable | None = None
    item_windows: ItemWindows | None = None
    item_weight: np.ndarray | None = None  # over every ordinal
    #: ordinals → the i2i affinity features (name → one value each), or None: not computed.
    affinity: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None


def feature_rows(fused: Sequence[Fused], x: FeatureInputs) -> list[dict[str, float]]:
    """The features, one dict a candidate: the plain definition (serving and training compute the same
    values as columns, `feature_columns`; tests/unit/test_ranker_features.py holds them equal)."""
    lat, lon, popularity, origin, counters = x.lat, x.lon, x.popularity, x.origin, x.counters
    created, now, tag_table, item_windows = x.created, x.now, x.tag_table, x.item_windows
    user: dict[str, float] = {}
    if counters is not None:
        user = {
            "user_events_total": float(counters.events_total),
            "user_distinct_items": float(counters.distinct_items),
            "user_avg_weight": counters.avg_weight,
        }
        if counters.recent_windows is not None:
            h1, d1, d7 = counters.recent_windows
            user |= {"user_events_1h": float(h1), "user_events_1d": float(d1), "user_events_7d": float(d7)}
    ords = np.fromiter((f.ordinal for f in fused), dtype=np.int64, count=len(fused))
    dist_km: list[float | None] = [None] * len(fused)
    if origin is not None and len(fused):
        with np.errstate(invalid="ignore"):
            d = haversine_many(origin.lat, origin.lon, lat[ords], lon[ords]) / 1000.0
        dist_km = [None if np.isnan(x) else float(x) for x in d]
    pop = popularity[ords].tolist() if popularity is not None and len(fused) else [None] * len(fused)
    age: list[float | None] = [None] * len(fused)
    if created is not None and len(fused):
        when = time.time() if now is None else now
        age = [None if math.isnan(c) else max(0.0, (when - c) / DAY_S) for c in created(ords).tolist()]
    affinity: list[float | None] = [None] * len(fused)
    profile = counters.tag_affinity if counters is not None else None
    # Only a profile over this very table (same tag ids) is matched.
    if tag_table is not None and profile is not None and len(profile) == len(tag_table.vocab) and len(fused):
        affinity = tag_table.match(ords, profile).tolist()
    windows = item_windows.by_ordinal if item_windows is not None else None
    weight = x.item_weight[ords].tolist() if x.item_weight is not None and len(fused) else None
    i2i = (
        {k: v.tolist() for k, v in x.affinity(ords).items()} if x.affinity is not None and len(fused) else {}
    )
    rows: list[dict[str, float]] = []
    for i, (f, dk, p, a, aff) in enumerate(zip(fused, dist_km, pop, age, affinity, strict=True)):
        row: dict[str, float] = dict(user)
        if weight is not None:
            row["item_avg_weight"] = float(weight[i])
        for name, values in i2i.items():
            row[name] = values[i]
        for s in f.sources:
            row[f"found_by_{s.branch}"] = 1.0
            row[f"{s.branch}_rank"] = float(s.rank)
            score_name = _SCORE_FEATURE.get(s.branch)
            if score_name is not None:
                row[score_name] = s.score
        row["best_branch_rank"] = float(min(s.rank for s in f.sources))
        row["branches_found"] = float(len(f.sources))
        if a is not None:
            row["item_age_days"] = a
        if windows is not None:
            w = windows.get(f.ordinal)
            if w is not None:
                row["item_events_1h"], row["item_events_1d"], row["item_events_7d"] = w
        if aff is not None:
            row["user_tag_affinity"] = aff
        row["fused_score"] = f.score
        if dk is not None:
            row["distance_km"] = dk
        if p is not None:
            row["item_popularity"] = float(p)
        rows.append(row)
    return rows


def feature_columns(candidates: CandidateArrays, x: FeatureInputs) -> dict[str, np.ndarray | float]:
    """`feature_rows` as columns (name → one value a candidate, or one scalar for all; NaN = missing):
    the same values (a randomized test holds them equal), from arrays — no dict, no object a candidate."""
    lat, lon, popularity, origin, counters = x.lat, x.lon, x.popularity, x.origin, x.counters
    created, now, tag_table, item_windows = x.created, x.now, x.tag_table, x.item_windows
    n = len(candidates)
    nan = math.nan
    cols: dict[str, np.ndarray | float] = {}
    if counters is not None:
        cols["user_events_total"] = float(counters.events_total)
        cols["user_distinct_items"] = float(counters.distinct_items)
        cols["user_avg_weight"] = counters.avg_weight
        if counters.recent_windows is not None:
            h1, d1, d7 = counters.recent_windows
            cols["user_events_1h"], cols["user_events_1d"], cols["user_events_7d"] = (
                float(h1),
                float(d1),
                float(d7),
            )
    if not n:
        return cols
    ords = candidates.ordinal
    at, rank = candidates.src_item, candidates.src_rank.astype(np.float64)
    for b, branch in enumerate(candidates.branches):
        mine = candidates.src_branch == b
        where = at[mine]
        found, ranks = np.full(n, nan), np.full(n, nan)
        found[where] = 1.0
        ranks[where] = rank[mine]
        cols[f"found_by_{branch}"], cols[f"{branch}_rank"] = found, ranks
        name = _SCORE_FEATURE.get(branch)
        if name is not None:
            raw = np.full(n, nan)
            raw[where] = candidates.src_score[mine]
            cols[name] = raw
    best = np.full(n, math.inf)
    np.minimum.at(best, at, rank)
    cols["best_branch_rank"] = np.where(np.isinf(best), nan, best)
    cols["branches_found"] = np.bincount(at, minlength=n).astype(np.float64)
    cols["fused_score"] = candidates.score.astype(np.float64)
    if origin is not None:
        with np.errstate(invalid="ignore"):
            cols["distance_km"] = haversine_many(origin.lat, origin.lon, lat[ords], lon[ords]) / 1000.0
    if popularity is not None:
        cols["item_popularity"] = popularity[ords].astype(np.float64)
    if created is not None:
        when = time.time() if now is None else now
        cols["item_age_days"] = np.maximum(0.0, (when - created(ords).astype(np.float64)) / DAY_S)
    profile = counters.tag_affinity if counters is not None else None
    if tag_table is not None and profile is not None and len(profile) == len(tag_table.vocab):
        cols["user_tag_affinity"] = np.asarray(tag_table.match(ords, profile), dtype=np.float64)
    if x.item_weight is not None:
        cols["item_avg_weight"] = x.item_weight[ords].astype(np.float64)
    if x.affinity is not None:
        cols.update(x.affinity(ords))
    if item_windows is not None:
        by_ord, none = item_windows.by_ordinal, (nan, nan, nan)
        w = np.array([by_ord.get(o, none) for o in ords.tolist()], dtype=np.float64)
        cols["item_events_1h"], cols["item_events_1d"], cols["item_events_7d"] = w[:, 0], w[:, 1], w[:, 2]
    return cols


def feature_matrix(
    fused: Sequence[Fused] | CandidateArrays,
    collection: RankingContext,
    origin: GeoPoint | None,
    counters: UserCounters | None,
    schema: FeatureSchema = DEFAULT_SCHEMA,
    now: float | None = None,
    item_windows: ItemWindows | None = None,
) -> np.ndarray:
    """The model input for `fused` in `collection` (float32, one row per candidate); `now` (epoch
    seconds, default the clock) is when the request happens, for item ages; `item_windows` the
    candidates' real-time event counts (None: unknown, the features' defaults)."""
    inputs = FeatureInputs(
        lat=collection.forward.lat,
        lon=collection.forward.lon,
        popularity=collection.item_popularity,
        origin=origin,
        counters=counters,
        created=item_created_ts(collection.forward),
        now=now,
        tag_table=collection.tag_table,
        item_windows=item_windows,
        item_weight=collection.item_weight,
        affinity=_affinity(collection, counters, schema),
    )
    candidates = fused if isinstance(fused, CandidateArrays) else CandidateArrays.of(fused)
    return schema.vectorize_columns(feature_columns(candidates, inputs), len(candidates))


def _affinity(
    collection: RankingContext, counters: UserCounters | None, schema: FeatureSchema
) -> Callable[[np.ndarray], Mapping[str, np.ndarray]] | None:
    """The i2i affinity features of given candidates, where the user's seeds are known and the model
    reads any of them (each costs a gather over the seeds' neighbour lists)."""
    seeds = counters.i2i_seeds if counters is not None else None
    if seeds is None or not reads_affinity(schema):
        return None
    return lambda ords: collection.i2i_affinity(seeds, ords)
