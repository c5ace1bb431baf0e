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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cities500")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--per-user", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ns = ap.parse_args()

    from indexer.datasets.geonames import synthetic_events

    n = 0
    with open(ns.out, "w", encoding="utf-8") as fh:
        for e in synthetic_events(ns.variant, users=ns.users, per_user=ns.per_user, seed=ns.seed):
            fh.write(json.dumps({"user": e.user, "item": e.item, "type": e.type, "ts": e.ts}) + "\n")
            n += 1
    print(f"wrote {n} SYNTHETIC events for {ns.users} users to {ns.out}")


if __name__ == "__main__":
    main()
