"""Adapters that turn real data sets into Quarry's catalog format (see common/catalog.py).

One module per data set, each exposing `load(data_dir: Path) -> Dataset`. Adding a data set is one
module plus one line in `adapters()`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from indexer.datasets.base import DATA_DIR_ENV, Dataset, DatasetUnavailable, default_data_dir


def adapters() -> dict[str, Callable[[Path], Dataset]]:
    from indexer.datasets import geonames, movielens, scifact

    return {
        "scifact": scifact.load,
        "geonames": geonames.load,
        "movielens": movielens.load,
        "movielens-1m": movielens.load_1m,
    }


def load_dataset(name: str, data_dir: Path | None = None) -> Dataset:
    table = adapters()
    if name not in table:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(table))}")
    return table[name](data_dir or default_data_dir())


__all__ = ["DATA_DIR_ENV", "Dataset", "DatasetUnavailable", "adapters", "default_data_dir", "load_dataset"]
