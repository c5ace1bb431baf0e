"""The catalog format: items and behavior events, as read by the indexer.

Both come as JSONL (one JSON object per line) or Parquet (one row per record, same field names).

Item::

    {"id": "1796236",                              # required, unique, non-empty string
     "text": {"title": "Shanghai", "alt_names": "上海 沪 ..."},   # text fields, searched with BM25
     "category": "CN",                             # optional, one value, exact-match filter
     "tags": ["P.PPLA"],                           # optional, exact-match filter (any of)
     "lat": 31.22, "lon": 121.46,                  # optional, both or neither, WGS84 degrees
     "attrs": {"population": 24874500},            # optional numeric attributes: range filters, features
     "embedding": [0.01, ...]}                     # optional precomputed vector (all items or none)

Event::

    {"user": "u1", "item": "1796236", "type": "click", "ts": 1700000000.0, "weight": 1.0}

`ts` is seconds since the epoch (int or float); `weight` defaults to 1.0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_ID_BYTES = 256


class CatalogError(ValueError):
    """A catalog record is invalid; the message names the file, line and field."""


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1)]
    text: dict[str, str] = Field(default_factory=dict)
    category: str | None = None
    tags: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None
    attrs: dict[str, float] = Field(default_factory=dict)
    embedding: tuple[float, ...] | None = None

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        if len(v.encode()) > MAX_ID_BYTES or v != v.strip() or any(c in v for c in "\n\r\t"):
            raise ValueError(
                f"id must be at most {MAX_ID_BYTES} bytes without surrounding/control whitespace"
            )
        return v

    @field_validator("attrs")
    @classmethod
    def _attrs_finite(cls, v: dict[str, float]) -> dict[str, float]:
        for name, value in v.items():
            if not name.isidentifier():
                raise ValueError(f"attribute name {name!r} must be an identifier ([A-Za-z_][A-Za-z0-9_]*)")
            if not math.isfinite(value):
                raise ValueError(f"attribute {name!r} is not finite ({value})")
        return v

    @field_validator("text")
    @classmethod
    def _text_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"text field name {name!r} must be an identifier")
        return v

    @model_validator(mode="after")
    def _geo_ok(self) -> Item:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        if self.lat is not None and self.lon is not None:
            if not (math.isfinite(self.lat) and -90.0 <= self.lat <= 90.0):
                raise ValueError(f"lat {self.lat} outside [-90, 90]")
            if not (math.isfinite(self.lon) and -180.0 <= self.lon <= 180.0):
                raise ValueError(f"lon {self.lon} outside [-180, 180]")
        if self.embedding is not None and not all(math.isfinite(x) for x in self.embedding):
            raise ValueError("embedding contains a non-finite value")
        return self

    @property
    def title(self) -> str:
        return self.text.get("title") or self.text.get("name") or self.id


def embed_text(item: Item, fields: Iterable[str]) -> str:
    """The text embedded for an item: its chosen fields joined with '. ' (empty fields skipped)."""
    return ". ".join(t for f in fields if (t := item.text.get(f, "").strip()))


#: A sentence ends at . ! or ? followed by white space and a capital letter, a digit or "(".
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\d])")


def split_sentences(text: str) -> list[str]:
    """``text``'s sentences (stripped, empty ones dropped), by punctuation: good enough for prose in
    Latin scripts, one sentence for text without such boundaries."""
    return [s for part in _SENTENCE.split(text) if (s := part.strip())]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES)]
    item: Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES)]
    type: Annotated[str, Field(min_length=1, max_length=64)] = "view"
    ts: float
    weight: float = 1.0

    @field_validator("ts", "weight")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


def read_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, raw record) from a JSONL or Parquet file (not validated: see read_items)."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix in {".gz", ".xz"} else path.suffix
    if suffix in {".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.xz"}:
        opener: Any = open
        if path.suffix == ".gz":
            import gzip

            opener = gzip.open
        elif path.suffix == ".xz":
            import lzma

            opener = lzma.open
        # Bytes, decoded line by line: invalid UTF-8 is reported with its line like any other bad record.
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CatalogError(
                        f"{path}:{lineno}: not valid UTF-8 (byte {exc.start + 1} of the line)"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CatalogError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise CatalogError(f"{path}:{lineno}: expected a JSON object")
                yield f"{path}:{lineno}", record
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=8192):
            for record in batch.to_pylist():
                row += 1
                yield f"{path}[row {row}]", _drop_nulls(record)
    else:
        raise CatalogError(f"{path}: unknown catalog format {suffix!r} (use .jsonl[.gz|.xz] or .parquet)")


def _drop_nulls(record: dict[str, Any]) -> dict[str, Any]:
    """Parquet stores missing struct keys as nulls; the catalog format treats them as absent."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if value is None:
            continue
        out[key] = _drop_nulls(value) if isinstance(value, dict) else value
    return out


def _parse(model: type[BaseModel], where: str, record: dict[str, Any]) -> Any:
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise CatalogError(f"{where}: field {loc}: {first['msg']}") from None


def read_items(path: Path) -> Iterator[Item]:
    for where, record in read_records(path):
        yield _parse(Item, where, record)


def read_events(path: Path) -> Iterator[Event]:
    for where, record in read_records(path):
        yield _parse(Event, where, record)


def write_jsonl(path: Path, records: Iterable[BaseModel]) -> int:
    """Write records as JSONL (exclude unset defaults to keep files small); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(rec.model_dump_json(exclude_defaults=True))
            fh.write("\n")
            n += 1
    return n


def write_parquet(path: Path, records: Iterable[BaseModel]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r.model_dump(exclude_none=True) for r in records]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return len(rows)
