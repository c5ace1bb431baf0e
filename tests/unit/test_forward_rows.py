"""The forward store's rows, read from the columns' buffers, equal Arrow's own `take().to_pylist()`:
a written and memory-mapped snapshot store, and tables of every column type the reader handles (nulls,
empty strings, non-ASCII text, empty and null lists, large strings, slices), or leaves to Arrow."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from common.catalog import Item
from common.index.forward import ForwardStore, _RowReader, write_forward

WORDS = ["", "a", "Zürich", "東京", "Ţarīf Kalbā", "naïve café", "🙂 emoji", "x" * 300, "北京市 Beijing"]


def _items(n: int, rnd: random.Random) -> list[Item]:
    items = []
    for i in range(n):
        maybe = rnd.random() < 0.8
        items.append(
            Item(
                id=f"item-{i}-{rnd.choice(WORDS[1:-2]).replace(' ', '_')}",
                text={"name": rnd.choice(WORDS), "body": " ".join(rnd.choices(WORDS, k=3))}
                if maybe
                else {"name": rnd.choice(WORDS)},
                category=rnd.choice(["shop", "café", None]),
                tags=tuple(rnd.sample(WORDS[1:], rnd.randrange(0, 4))),
                lat=rnd.uniform(-80, 80) if maybe else None,
                lon=rnd.uniform(-170, 170) if maybe else None,
                attrs={"price": rnd.uniform(0, 100)} if rnd.random() < 0.6 else {},
            )
        )
    return items


def _arrow_rows(table: pa.Table, ordinals: list[int]) -> list[dict[str, object]]:
    return table.take(pa.array(ordinals, pa.int64())).to_pylist()


def test_a_snapshot_store_reads_the_rows_arrow_reads(tmp_path: Path) -> None:
    rnd = random.Random(7)
    items = _items(400, rnd)
    meta = write_forward(items, tmp_path, ["price"], ["name", "body"])
    fw = ForwardStore(tmp_path, meta)
    assert fw._reader._columns is not None, "every column of a snapshot store is read from its buffers"
    for _ in range(200):
        ordinals = [rnd.randrange(len(items)) for _ in range(rnd.randrange(1, 25))]
        assert fw.rows(ordinals) == _arrow_rows(fw._table, ordinals)
    assert fw.rows([]) == []
    row = fw.rows([3])[0]
    assert row["id"] == items[3].id and row["tags"] == list(items[3].tags)
    with pytest.raises(IndexError):
        fw.rows([len(items)])
    with pytest.raises(IndexError):
        fw.rows([-1])  # not Python's from-the-end indexing


def _zoo(n: int, rnd: random.Random) -> pa.Table:
    def maybe(v: object) -> object:
        return None if rnd.random() < 0.2 else v

    return pa.table(
        {
            "id": pa.array([f"id{i}" for i in range(n)], pa.string()),
            "s": pa.array([maybe(rnd.choice(WORDS)) for _ in range(n)], pa.string()),
            "ls": pa.array([maybe(rnd.choice(WORDS)) for _ in range(n)], pa.large_string()),
            "f": pa.array([maybe(rnd.uniform(-1, 1)) for _ in range(n)], pa.float64()),
            "f32": pa.array([maybe(float(rnd.randrange(100))) for _ in range(n)], pa.float32()),
            "i": pa.array([maybe(rnd.randrange(-(2**40), 2**40)) for _ in range(n)], pa.int64()),
            "b": pa.array([maybe(rnd.random() < 0.5) for _ in range(n)], pa.bool_()),
            "tags": pa.array(
                [maybe(rnd.sample(WORDS, rnd.randrange(0, 4))) for _ in range(n)], pa.list_(pa.string())
            ),
        }
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_handled_type_with_nulls_and_slices(seed: int) -> None:
    rnd = random.Random(seed)
    table = _zoo(300, rnd)
    for t in (table, table.slice(37, 200)):  # a slice's buffers start before its first row
        t = t.combine_chunks()
        reader = _RowReader(t, t.column("id").to_pylist())
        assert reader._columns is not None
        for _ in range(100):
            ordinals = [rnd.randrange(t.num_rows) for _ in range(rnd.randrange(1, 30))]
            got = reader.rows(ordinals)
            want = _arrow_rows(t, ordinals)
            assert got == want
            # Same Python types too (an int is not a float, a NaN-free float stays a float).
            assert [[type(v) for v in r.values()] for r in got] == [
                [type(v) for v in r.values()] for r in want
            ]


def test_what_it_cannot_read_goes_through_arrow() -> None:
    rnd = random.Random(4)
    base = _zoo(50, rnd)
    stamped = base.append_column("ts", pa.array(np.arange(50).astype("datetime64[s]")))
    chunked = pa.concat_tables([base.slice(0, 20), base.slice(20)])  # two chunks a column
    for t in (stamped, chunked):
        reader = _RowReader(t, t.column("id").to_pylist())
        assert reader._columns is None
        assert reader.rows([0, 33, 7]) == _arrow_rows(t, [0, 33, 7])
