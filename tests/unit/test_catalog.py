from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.catalog import CatalogError, Event, Item, read_events, read_items, write_jsonl, write_parquet

GOOD = {
    "id": "a1",
    "text": {"title": "Café", "body": "x"},
    "category": "food",
    "tags": ["t"],
    "lat": 1.5,
    "lon": -2.0,
    "attrs": {"price": 3.5},
}


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_roundtrip_and_parquet(tmp_path: Path) -> None:
    items = list(read_items(_write(tmp_path / "c.jsonl", [GOOD, {"id": "b", "text": {"title": "y"}}])))
    assert items[0].title == "Café" and items[0].attrs == {"price": 3.5} and items[1].lat is None
    write_parquet(tmp_path / "c.parquet", items)
    assert list(read_items(tmp_path / "c.parquet")) == items
    write_jsonl(tmp_path / "d.jsonl", items)
    assert list(read_items(tmp_path / "d.jsonl")) == items


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GOOD, "lat": 91}, "lat 91"),
        ({**GOOD, "lon": None}, "lat and lon must be given together"),
        ({**GOOD, "id": ""}, "field id"),
        ({**GOOD, "attrs": {"bad name": 1}}, "identifier"),
        ({**GOOD, "colour": "red"}, "field colour"),
        ({**GOOD, "attrs": {"p": "NaN"}}, "not finite"),
    ],
)
def test_bad_items_name_line_and_field(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = _write(tmp_path / "c.jsonl", [GOOD, row])
    with pytest.raises(CatalogError, match=message) as ei:
        list(read_items(path))
    assert "c.jsonl:2" in str(ei.value)


def test_not_json_and_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(CatalogError, match=r"c.jsonl:2: not valid JSON"):
        list(read_items(p))
    with pytest.raises(CatalogError, match="unknown catalog format"):
        list(read_items(tmp_path / "c.csv"))


def test_events(tmp_path: Path) -> None:
    p = _write(tmp_path / "e.jsonl", [{"user": "u", "item": "i", "type": "click", "ts": 1700000000}])
    assert list(read_events(p)) == [Event(user="u", item="i", type="click", ts=1.7e9, weight=1.0)]
    _write(p, [{"user": "u", "item": "i", "ts": "yesterday"}])
    with pytest.raises(CatalogError, match="field ts"):
        list(read_events(p))


def test_item_model_is_strict() -> None:
    with pytest.raises(ValueError):
        Item(id=" padded", text={})


def test_invalid_utf8_is_a_catalog_error_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "items.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "b\x80"}\n')
    with pytest.raises(CatalogError, match=r"items\.jsonl:2: not valid UTF-8"):
        list(read_items(p))
