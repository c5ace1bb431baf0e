"""Request validation shared by every transport. Raises InvalidArgument with a message that names the
field and says what is wrong."""

from __future__ import annotations

import math
from dataclasses import replace

from common.settings import LimitSettings
from retriever.core.errors import InvalidArgument
from retriever.core.types import SearchQuery

MAX_ID_BYTES = 256
MAX_BRANCHES = 32
#: Request-level fusion overrides ("" keeps the collection's strategy). "learned" also needs the collection
#: to have fitted parameters, which the service checks once it has resolved the collection.
FUSIONS = ("", "rrf", "weighted", "learned")


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value}")


def validate_search(q: SearchQuery, limits: LimitSettings) -> SearchQuery:
    """Return `q` with defaults applied (top_k) after checking every field."""
    if not q.collection:
        raise InvalidArgument("collection is required")
    if len(q.collection) > 64:
        raise InvalidArgument("collection name is longer than 64 characters")
    n = len(q.text.encode("utf-8"))
    if n > limits.max_query_bytes:
        raise InvalidArgument(f"query is {n} bytes; the maximum is {limits.max_query_bytes} bytes")
    if "\x00" in q.text:
        raise InvalidArgument("query contains a NUL character")
    if len(q.user_id.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidArgument(f"user_id is longer than {MAX_ID_BYTES} bytes")
    if q.top_k < 0:
        raise InvalidArgument(
            f"top_k must be >= 0 (0 means the default {limits.default_top_k}), got {q.top_k}"
        )
    if q.top_k > limits.max_top_k:
        raise InvalidArgument(f"top_k {q.top_k} exceeds the maximum of {limits.max_top_k}")
    if q.location is not None:
        _finite("location.lat", q.location.lat)
        _finite("location.lon", q.location.lon)
        if not -90.0 <= q.location.lat <= 90.0:
            raise InvalidArgument(f"location.lat must be in [-90, 90], got {q.location.lat}")
        if not -180.0 <= q.location.lon <= 180.0:
            raise InvalidArgument(f"location.lon must be in [-180, 180], got {q.location.lon}")
    _finite("radius_m", q.radius_m)
    if q.radius_m < 0:
        raise InvalidArgument(f"radius_m must be >= 0, got {q.radius_m}")
    if q.radius_m > limits.max_radius_m:
        raise InvalidArgument(f"radius_m {q.radius_m} exceeds the maximum of {limits.max_radius_m} m")
    if q.radius_m > 0 and q.location is None:
        raise InvalidArgument("radius_m is set but location is missing")
    f = q.filters
    for label, values in (("categories", f.categories), ("tags", f.tags), ("exclude_ids", f.exclude_ids)):
        if len(values) > limits.max_filter_values:
            raise InvalidArgument(
                f"filters.{label} has {len(values)} values; the maximum is {limits.max_filter_values}"
            )
        if any(not v for v in values):
            raise InvalidArgument(f"filters.{label} contains an empty string")
    if len(f.ranges) > 64:
        raise InvalidArgument("filters.ranges has more than 64 ranges")
    for i, r in enumerate(f.ranges):
        where = f"filters.ranges[{i}]"
        if not r.field:
            raise InvalidArgument(f"{where}.field is required")
        if r.min is None and r.max is None:
            raise InvalidArgument(f"{where} ({r.field}) needs min or max")
        for side, v in (("min", r.min), ("max", r.max)):
            if v is not None:
                _finite(f"{where}.{side}", v)
        if r.min is not None and r.max is not None and r.min > r.max:
            raise InvalidArgument(f"{where} ({r.field}): min {r.min} > max {r.max}")
    if len(q.branches) > MAX_BRANCHES:
        raise InvalidArgument(f"branches has {len(q.branches)} names; the maximum is {MAX_BRANCHES}")
    if any(not b for b in q.branches):
        raise InvalidArgument("branches contains an empty name")
    if q.fusion not in FUSIONS:
        raise InvalidArgument(
            f"fusion {q.fusion[:64]!r} is not a fusion strategy; use one of: {', '.join(FUSIONS[1:])} "
            "(or leave it empty for the collection's own)"
        )
    return replace(q, top_k=q.top_k or limits.default_top_k, branches=tuple(dict.fromkeys(q.branches)))
