"""The forward store: per-ordinal item data for display, filtering and features.

An Arrow IPC file (`forward.arrow`), memory-mapped by the retriever. Columns:
`id`, `title`, `category`, `tags` (list), `lat`, `lon`, `attr_<name>` (float64, null if absent) and
`text_<name>` (display text, truncated to DISPLAY_CHARS).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        """Display rows for `ordinals`, in order."""
        if not ordinals:
            return []
        return self._table.take(pa.array(ordinals, pa.int64())).to_pylist()

    def take_table(self, ordinals: Sequence[int]) -> pa.Table:
        """The rows of `ordinals` as an Arrow table (what a shard ships to its root)."""
        return self._table.take(pa.array(ordinals, pa.int64()))
