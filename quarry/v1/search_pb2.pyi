from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class BranchStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BRANCH_STATUS_UNSPECIFIED: _ClassVar[BranchStatus]
    BRANCH_STATUS_OK: _ClassVar[BranchStatus]
    BRANCH_STATUS_SKIPPED: _ClassVar[BranchStatus]
    BRANCH_STATUS_TIMEOUT: _ClassVar[BranchStatus]
    BRANCH_STATUS_ERROR: _ClassVar[BranchStatus]
    BRANCH_STATUS_DISABLED: _ClassVar[BranchStatus]

BRANCH_STATUS_UNSPECIFIED: BranchStatus
BRANCH_STATUS_OK: BranchStatus
BRANCH_STATUS_SKIPPED: BranchStatus
BRANCH_STATUS_TIMEOUT: BranchStatus
BRANCH_STATUS_ERROR: BranchStatus
BRANCH_STATUS_DISABLED: BranchStatus

class GeoPoint(_message.Message):
    __slots__ = ("lat", "lon")
    LAT_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    lat: float
    lon: float
    def __init__(self, lat: float | None = ..., lon: float | None = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("field", "max", "max_exclusive", "min", "min_exclusive")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    field: str
    min: float
    max: float
    min_exclusive: bool
    max_exclusive: bool
    def __init__(
        self,
        field: str | None = ...,
        min: float | None = ...,
        max: float | None = ...,
        min_exclusive: bool | None = ...,
        max_exclusive: bool | None = ...,
    ) -> None: ...

class Filters(_message.Message):
    __slots__ = ("categories", "exclude_ids", "ranges", "tags")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    ranges: _containers.RepeatedCompositeFieldContainer[NumericRange]
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        categories: _Iterable[str] | None = ...,
        tags: _Iterable[str] | None = ...,
        ranges: _Iterable[NumericRange | _Mapping] | None = ...,
        exclude_ids: _Iterable[str] | None = ...,
    ) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = (
        "collection",
        "debug",
        "filters",
        "location",
        "query",
        "radius_m",
        "request_id",
        "top_k",
        "user_id",
    )
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    user_id: str
    location: GeoPoint
    radius_m: float
    filters: Filters
    top_k: int
    debug: bool
    request_id: str
    def __init__(
        self,
        collection: str | None = ...,
        query: str | None = ...,
        user_id: str | None = ...,
        location: GeoPoint | _Mapping | None = ...,
        radius_m: float | None = ...,
        filters: Filters | _Mapping | None = ...,
        top_k: int | None = ...,
        debug: bool | None = ...,
        request_id: str | None = ...,
    ) -> None: ...

class SourceScore(_message.Message):
    __slots__ = ("branch", "rank", "score")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    branch: str
    score: float
    rank: int
    def __init__(
        self, branch: str | None = ..., score: float | None = ..., rank: int | None = ...
    ) -> None: ...

class Hit(_message.Message):
    __slots__ = (
        "attributes",
        "category",
        "distance_m",
        "fields",
        "id",
        "location",
        "score",
        "sources",
        "tags",
        "title",
    )
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: str | None = ..., value: float | None = ...) -> None: ...

    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_M_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    sources: _containers.RepeatedCompositeFieldContainer[SourceScore]
    title: str
    category: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    location: GeoPoint
    distance_m: float
    attributes: _containers.ScalarMap[str, float]
    fields: _containers.ScalarMap[str, str]
    def __init__(
        self,
        id: str | None = ...,
        score: float | None = ...,
        sources: _Iterable[SourceScore | _Mapping] | None = ...,
        title: str | None = ...,
        category: str | None = ...,
        tags: _Iterable[str] | None = ...,
        location: GeoPoint | _Mapping | None = ...,
        distance_m: float | None = ...,
        attributes: _Mapping[str, float] | None = ...,
        fields: _Mapping[str, str] | None = ...,
    ) -> None: ...

class BranchStats(_message.Message):
    __slots__ = ("branch", "candidates", "detail", "latency_ms", "status")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    branch: str
    status: BranchStatus
    latency_ms: float
    candidates: int
    detail: str
    def __init__(
        self,
        branch: str | None = ...,
        status: BranchStatus | str | None = ...,
        latency_ms: float | None = ...,
        candidates: int | None = ...,
        detail: str | None = ...,
    ) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("branch_stats", "degraded", "hits", "snapshot_version", "took_ms")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    BRANCH_STATS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    snapshot_version: str
    degraded: bool
    branch_stats: _containers.RepeatedCompositeFieldContainer[BranchStats]
    took_ms: float
    def __init__(
        self,
        hits: _Iterable[Hit | _Mapping] | None = ...,
        snapshot_version: str | None = ...,
        degraded: bool | None = ...,
        branch_stats: _Iterable[BranchStats | _Mapping] | None = ...,
        took_ms: float | None = ...,
    ) -> None: ...
