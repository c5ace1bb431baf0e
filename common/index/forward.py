"""The forward store: per-ordinal item data for display, filtering and features.

An Arrow IPC file (`forward.arrow`), memory-mapped by the retriever. Columns:
`id`, `title`, `category`, `tags` (list), `lat`, `lon`, `attr_<name>` (float64, null if absent) and
`text_<name>` (display text, truncated to DISPLAY_CHARS).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common.catalog import Item

FILE = "forward.arrow"
DISPLAY_CHARS = 300


def write_forward(
    items: Sequence[Item], directory: Path, attr_names: Sequence[str], text_names: Sequence[str]
) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "id": pa.array([it.id for it in items], pa.string()),
        "title": pa.array([it.title for it in items], pa.string()),
        "category": pa.array([it.category for it in items], pa.string()),
        "tags": pa.array([list(it.tags) for it in items], pa.list_(pa.string())),
        "lat": pa.array([it.lat for it in items], pa.float64()),
        "lon": pa.array([it.lon for it in items], pa.float64()),
    }
    for name in attr_names:
        cols[f"attr_{name}"] = pa.array([it.attrs.get(name) for it in items], pa.float64())
    for name in text_names:
        cols[f"text_{name}"] = pa.array([it.text.get(name, "")[:DISPLAY_CHARS] for it in items], pa.string())
    table = pa.table(cols)
    with pa.OSFile(str(directory / FILE), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        # One record batch: a memory-mapped single-chunk table serves take() without copying (with 64k-row
        # chunks, take() over 235k rows cost ~8 ms per request instead of ~0.3 ms).
        writer.write_table(table.combine_chunks())
    return {"files": [FILE], "attrs": list(attr_names), "text_fields": list(text_names), "rows": len(items)}


class ForwardStore:
    """Read side. Column arrays used on the hot path are materialised once as NumPy/Python objects."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        source = pa.memory_map(str(directory / FILE), "r")
        table = ipc.open_file(source).read_all().combine_chunks()  # zero-copy when single-chunk
        self._init(table, list(meta.get("attrs", [])), list(meta.get("text_fields", [])))

    @classmethod
    def from_table(
        cls, table: pa.Table, attr_names: Sequence[str], text_names: Sequence[str]
    ) -> ForwardStore:
        """A store over rows already in memory (a root's candidates, gathered from its shards)."""
        store = cls.__new__(cls)
        store._init(table.combine_chunks(), list(attr_names), list(text_names))
        return store

    def _init(self, table: pa.Table, attr_names: list[str], text_names: list[str]) -> None:
        self._table = table
        self.attr_names: list[str] = attr_names
        self.text_names: list[str] = text_names
        self.ids: list[str] = self._table.column("id").to_pylist()
        self.ord_of: dict[str, int] = {item_id: i for i, item_id in enumerate(self.ids)}
        cat = self._table.column("category").combine_chunks().dictionary_encode()
        self.category_vocab: dict[str, int] = {v: i for i, v in enumerate(cat.dictionary.to_pylist())}
        self.category_codes = cat.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        self.lat = self._table.column("lat").to_numpy(zero_copy_only=False).astype(np.float64)
        self.lon = self._table.column("lon").to_numpy(zero_copy_only=False).astype(np.float64)
        self._attrs = {
            name: self._table.column(f"attr_{name}").to_numpy(zero_copy_only=False).astype(np.float64)
            for name in self.attr_names
        }
        self._reader = _RowReader(self._table, self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def attr(self, name: str) -> np.ndarray:
        """float64 array over ordinals; NaN where the item lacks the attribute."""
        return self._attrs[name]

    def tags_column(self) -> pa.ListArray:
        """Every item's tags as one Arrow list array, in ordinal order."""
        return self._table.column("tags").combine_chunks()

    def tags_mask(self, tags: Sequence[str]) -> np.ndarray:
        """Boolean mask of items carrying any of `tags`."""
        col = self.tags_column()
        import pyarrow.compute as pc

        flat = col.flatten()
        hit = pc.is_in(flat, value_set=pa.array(list(tags), pa.string())).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(col).to_numpy()
        mask = np.zeros(len(self), dtype=bool)
        mask[parents[hit]] = True
        return mask

    def column(self, name: str) -> list[Any]:
        """One whole column as Python values (e.g. every title), in ordinal order."""
        return self._table.column(name).to_pylist()

    def rows(self, ordinals: Sequence[int]) -> list[dict[str, Any]]:
        """Display rows for `ordinals`, in order: what `take(ordinals).to_pylist()` gives, read straight
        from the columns' buffers (`_RowReader`; a Search's ten hits on `places`: 97–141 → 60–102 µs in
        a tight loop, more saved inside a Search, where Arrow's kernels run cold)."""
        if not ordinals:
            return []
        return self._reader.rows(ordinals)

    def take_table(self, ordinals: Sequence[int]) -> pa.Table:
        """The rows of `ordinals` as an Arrow table (what a shard ships to its root)."""
        return self._table.take(pa.array(ordinals, pa.int64()))


class _RowReader:
    """Rows of a single-chunk table as Python dicts without Arrow's per-call kernels: `take` then
    `to_pylist` costs ~5 µs a column however few the rows (~100 µs for ten rows of eleven columns).
    Strings are decoded from the memory-mapped offsets and data buffers, numbers read from NumPy views,
    lists of strings through their offsets; a column of any other type, or a table in several chunks,
    goes through Arrow (identical values either way; tests/unit/test_forward_rows.py)."""

    def __init__(self, table: pa.Table, ids: list[str]) -> None:
        self._table = table
        self._n = table.num_rows
        self._names = table.column_names
        self._columns: list[Callable[[np.ndarray, np.ndarray], list[Any]]] | None = []
        for name, column in zip(self._names, table.columns, strict=True):
            read = _column_reader(column, ids if name == "id" else None)
            if read is None:
                self._columns = None  # some column only Arrow reads: every row through Arrow
                break
            self._columns.append(read)

    def rows(self, ordinals: Sequence[int]) -> list[dict[str, Any]]:
        if self._columns is None:
            return self._table.take(pa.array(ordinals, pa.int64())).to_pylist()
        idx = np.asarray(ordinals, dtype=np.int64)
        if idx.min() < 0 or idx.max() >= self._n:
            raise IndexError(f"ordinals out of range for {self._n} rows: {idx.min()}..{idx.max()}")
        after = idx + 1
        values = [read(idx, after) for read in self._columns]
        names = self._names
        return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _valid(arr: pa.Array) -> np.ndarray | None:
    """Which entries are not null (None when none is)."""
    return np.asarray(arr.is_valid()) if arr.null_count else None


def _with_nulls(values: list[Any], valid: np.ndarray | None, idx: np.ndarray) -> list[Any]:
    if valid is None:
        return values
    return [v if ok else None for v, ok in zip(values, valid[idx].tolist(), strict=True)]


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, memoryview]:
    """A string (or large string) array's offsets (one more than its length, its slice applied) and
    UTF-8 data: value i is data[offsets[i]:offsets[i + 1]]."""
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    return offsets, memoryview(data_buf) if data_buf is not None else memoryview(b"")


def _strings(arr: pa.Array) -> Callable[[np.ndarray, np.ndarray], list[Any]]:
    offsets, data = _string_buffers(arr)
    valid = _valid(arr)

    def read(idx: np.ndarray, after: np.ndarray) -> list[Any]:
        spans = zip(offsets[idx].tolist(), offsets[after].tolist(), strict=True)
        return _with_nulls([str(data[a:b], "utf-8") for a, b in spans], valid, idx)

    return read


def _string_lists(arr: pa.Array) -> Callable[[np.ndarray, np.ndarray], list[Any]] | None:
    items = arr.values  # the whole child; arr.offsets are positions in it, the list's slice applied
    if items.null_count:
        return None
    starts = arr.offsets.to_numpy()
    offsets, data = _string_buffers(items)
    valid = _valid(arr)

    def read(idx: np.ndarray, after: np.ndarray) -> list[Any]:
        out = []
        for a, b in zip(starts[idx].tolist(), starts[after].tolist(), strict=True):
            o = offsets[a : b + 1].tolist()
            out.append([str(data[o[i] : o[i + 1]], "utf-8") for i in range(b - a)])
        return _with_nulls(out, valid, idx)

    return read


def _column_reader(
    column: pa.ChunkedArray, ids: list[str] | None
) -> Callable[[np.ndarray, np.ndarray], list[Any]] | None:
    if column.num_chunks != 1:
        return None
    arr = column.chunk(0)
    t = arr.type
    if ids is not None and pa.types.is_string(t) and not arr.null_count:
        return lambda idx, _after: [ids[o] for o in idx.tolist()]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _strings(arr)
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        if pa.types.is_boolean(t):
            numbers = np.asarray(arr.fill_null(False))
        elif arr.null_count:
            numbers = arr.fill_null(0).to_numpy()
        else:
            numbers = arr.to_numpy()  # a view of the mapped buffer
        valid = _valid(arr)
        return lambda idx, _after: _with_nulls(numbers[idx].tolist(), valid, idx)
    if pa.types.is_list(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        return _string_lists(arr)
    return None
