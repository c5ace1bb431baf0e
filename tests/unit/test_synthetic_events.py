"""The SYNTHETIC GeoNames visits used by the demo and load tests: deterministic, valid, local."""

from __future__ import annotations

import itertools
import math

from indexer.datasets import geonames


def test_synthetic_events_are_deterministic_valid_and_local() -> None:
    a = list(geonames.synthetic_events("cities15000", users=30, per_user=10, seed=4))
    b = list(geonames.synthetic_events("cities15000", users=30, per_user=10, seed=4))
    assert a == b and len(a) == 300
    ids = {it.id: it for it in geonames.load(None, variant="cities15000").items()}  # type: ignore[arg-type]
    assert all(e.item in ids for e in a)
    by_user: dict[str, list[float]] = {}
    for e in a:
        by_user.setdefault(e.user, []).append(e.ts)
    assert len(by_user) == 30 and all(ts == sorted(ts) for ts in by_user.values())

    def km(x: str, y: str) -> float:
        p, q = ids[x], ids[y]
        assert p.lat is not None and p.lon is not None and q.lat is not None and q.lon is not None
        la1, lo1, la2, lo2 = map(math.radians, (p.lat, p.lon, q.lat, q.lon))
        h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
        return 12742 * math.asin(math.sqrt(h))

    # Visits cluster around a home: most consecutive visits of a user are within 1,000 km of each other.
    pairs = [(x.item, y.item) for x, y in itertools.pairwise(a) if x.user == y.user]
    assert sum(km(x, y) < 1000 for x, y in pairs) / len(pairs) > 0.6
