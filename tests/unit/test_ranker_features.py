"""The ranker's feature columns (`feature_columns`, what serving and training vectorise) against the plain
row-by-row definition (`feature_rows` + `FeatureSchema.vectorize`): equal, bit for bit, over random
candidates, sources, locations, missing values and every optional input present or absent."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pytest

from common.profile import TagArrays, TagTable
from common.types import CandidateArrays, Fused, GeoPoint, ItemWindows, SourceScore, UserCounters
from ranker.features import FeatureInputs, feature_columns, feature_rows
from ranker.schema import AFFINITY_FEATURES, DEFAULT_SCHEMA, ITEM_WINDOW_FEATURES

BRANCHES = ("inverted", "ann", "behavior", "geo", "popular", "preference", "unscored")


@pytest.mark.parametrize("seed", range(30))
def test_columns_equal_the_row_definition(seed: int) -> None:
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    n_items = 300
    lat = rng.uniform(-80, 80, n_items)
    lon = rng.uniform(-180, 180, n_items)
    lat[rng.random(n_items) < 0.2] = np.nan  # items without a location
    created_at = rng.uniform(1.0e9, 1.7e9, n_items)
    created_at[rng.random(n_items) < 0.2] = np.nan
    tags = pa.array([[f"t{rnd.randrange(8)}" for _ in range(rnd.randrange(4))] for _ in range(n_items)])
    table = TagTable.from_arrays(
        TagArrays.build(tags, pa.array([None] * n_items, pa.string()), None), per_tag=5
    )
    fused = []
    for o in rng.choice(n_items, rnd.randrange(0, 120), replace=False).tolist():
        branches = rnd.sample(BRANCHES, rnd.randrange(1, 4))
        srcs = [SourceScore(b, rnd.uniform(-2, 5), rnd.randrange(1, 400)) for b in branches]
        fused.append(Fused(o, rnd.uniform(0, 1), srcs))
    counters = None
    if rnd.random() < 0.7:
        counters = UserCounters(
            rnd.randrange(100),
            rnd.uniform(0, 50),
            rnd.randrange(50),
            1.6e9,
            recent_windows=(1, 2, 3) if rnd.random() < 0.5 else None,
            tag_affinity=rng.random(len(table.vocab)) if rnd.random() < 0.7 else None,
        )
    windows = None
    if rnd.random() < 0.6:
        windows = ItemWindows(
            {f.ordinal: (rnd.uniform(0, 3), rnd.uniform(0, 9), math.inf) for f in fused if rnd.random() < 0.7}
        )
    inputs = FeatureInputs(
        lat=lat,
        lon=lon,
        popularity=rng.integers(0, 50, n_items).astype(np.float32) if rnd.random() < 0.8 else None,
        origin=GeoPoint(rnd.uniform(-60, 60), rnd.uniform(-170, 170)) if rnd.random() < 0.5 else None,
        counters=counters,
        created=(lambda ords: created_at[ords]) if rnd.random() < 0.7 else None,
        now=1.75e9,
        tag_table=table if rnd.random() < 0.8 else None,
        item_windows=windows,
        item_weight=rng.uniform(1, 5, n_items).astype(np.float32) if rnd.random() < 0.7 else None,
        affinity=_random_affinity(rng) if rnd.random() < 0.7 else None,
    )
    for schema in (DEFAULT_SCHEMA, DEFAULT_SCHEMA.without(*ITEM_WINDOW_FEATURES)):
        want = schema.vectorize(feature_rows(fused, inputs))
        got = schema.vectorize_columns(feature_columns(CandidateArrays.of(fused), inputs), len(fused))
        np.testing.assert_array_equal(got, want)
        assert got.shape == (len(fused), schema.dim) and got.dtype == np.float32


def _random_affinity(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """A context's affinity function: some features (a snapshot may lack a table), a value an ordinal."""
    names = [n for n in AFFINITY_FEATURES if rng.random() < 0.8]
    table = {n: rng.exponential(1.0, 300) for n in names}
    return lambda ords: {n: v[ords] for n, v in table.items()}
