from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    def __init__(self, lat: _Optional[float] = ..., lon: _Optional[float] = ...) -> None: ...

class NumericRange(_message.Message):
    __slots__ = ("field", "min", "max", "min_exclusive", "max_exclusive")
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
    def __init__(self, field: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., min_exclusive: _Optional[bool] = ..., max_exclusive: _Optional[bool] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("categories", "tags", "ranges", "exclude_ids")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    ranges: _containers.RepeatedCompositeFieldContainer[NumericRange]
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., tags: _Optional[_Iterable[str]] = ..., ranges: _Optional[_Iterable[_Union[NumericRange, _Mapping]]] = ..., exclude_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "user_id", "location", "radius_m", "filters", "top_k", "debug", "request_id", "branches", "fusion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    user_id: str
    location: GeoPoint
    radius_m: float
    filters: Filters
    top_k: int
    debug: bool
    request_id: str
    branches: _containers.RepeatedScalarFieldContainer[str]
    fusion: str
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., user_id: _Optional[str] = ..., location: _Optional[_Union[GeoPoint, _Mapping]] = ..., radius_m: _Optional[float] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., top_k: _Optional[int] = ..., debug: _Optional[bool] = ..., request_id: _Optional[str] = ..., branches: _Optional[_Iterable[str]] = ..., fusion: _Optional[str] = ...) -> None: ...

class SourceScore(_message.Message):
    __slots__ = ("branch", "score", "rank")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    branch: str
    score: float
    rank: int
    def __init__(self, branch: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "sources", "title", "category", "tags", "location", "distance_m", "attributes", "fields", "debug")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    DEBUG_FIELD_NUMBER: _ClassVar[int]
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
    debug: HitDebug
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[SourceScore, _Mapping]]] = ..., title: _Optional[str] = ..., category: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., location: _Optional[_Union[GeoPoint, _Mapping]] = ..., distance_m: _Optional[float] = ..., attributes: _Optional[_Mapping[str, float]] = ..., fields: _Optional[_Mapping[str, str]] = ..., debug: _Optional[_Union[HitDebug, _Mapping]] = ...) -> None: ...

class HitDebug(_message.Message):
    __slots__ = ("fused_score", "fused_rank", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FUSED_SCORE_FIELD_NUMBER: _ClassVar[int]
    FUSED_RANK_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    fused_score: float
    fused_rank: int
    features: _containers.ScalarMap[str, float]
    def __init__(self, fused_score: _Optional[float] = ..., fused_rank: _Optional[int] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class BranchStats(_message.Message):
    __slots__ = ("branch", "status", "latency_ms", "candidates", "detail")
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
    def __init__(self, branch: _Optional[str] = ..., status: _Optional[_Union[BranchStatus, str]] = ..., latency_ms: _Optional[float] = ..., candidates: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "snapshot_version", "degraded", "branch_stats", "took_ms", "debug")
    HITS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    BRANCH_STATS_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    snapshot_version: str
    degraded: bool
    branch_stats: _containers.RepeatedCompositeFieldContainer[BranchStats]
    took_ms: float
    debug: DebugInfo
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., snapshot_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., branch_stats: _Optional[_Iterable[_Union[BranchStats, _Mapping]]] = ..., took_ms: _Optional[float] = ..., debug: _Optional[_Union[DebugInfo, _Mapping]] = ...) -> None: ...

class DebugCandidate(_message.Message):
    __slots__ = ("id", "title", "score", "rank", "sources", "location")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    score: float
    rank: int
    sources: _containers.RepeatedCompositeFieldContainer[SourceScore]
    location: GeoPoint
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[SourceScore, _Mapping]]] = ..., location: _Optional[_Union[GeoPoint, _Mapping]] = ...) -> None: ...

class BranchCandidates(_message.Message):
    __slots__ = ("branch", "candidates")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    branch: str
    candidates: _containers.RepeatedCompositeFieldContainer[DebugCandidate]
    def __init__(self, branch: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[DebugCandidate, _Mapping]]] = ...) -> None: ...

class RecentEvent(_message.Message):
    __slots__ = ("item_id", "title", "type", "ts", "weight")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    type: str
    ts: float
    weight: float
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., type: _Optional[str] = ..., ts: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class UserDebug(_message.Message):
    __slots__ = ("user_id", "available", "recent", "events_total", "weight_sum", "distinct_items", "last_ts")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SUM_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    LAST_TS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    available: bool
    recent: _containers.RepeatedCompositeFieldContainer[RecentEvent]
    events_total: int
    weight_sum: float
    distinct_items: int
    last_ts: float
    def __init__(self, user_id: _Optional[str] = ..., available: _Optional[bool] = ..., recent: _Optional[_Iterable[_Union[RecentEvent, _Mapping]]] = ..., events_total: _Optional[int] = ..., weight_sum: _Optional[float] = ..., distinct_items: _Optional[int] = ..., last_ts: _Optional[float] = ...) -> None: ...

class DebugInfo(_message.Message):
    __slots__ = ("branches", "fused", "fusion", "ranker", "feature_names", "user")
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    RANKER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    branches: _containers.RepeatedCompositeFieldContainer[BranchCandidates]
    fused: _containers.RepeatedCompositeFieldContainer[DebugCandidate]
    fusion: str
    ranker: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    user: UserDebug
    def __init__(self, branches: _Optional[_Iterable[_Union[BranchCandidates, _Mapping]]] = ..., fused: _Optional[_Iterable[_Union[DebugCandidate, _Mapping]]] = ..., fusion: _Optional[str] = ..., ranker: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., user: _Optional[_Union[UserDebug, _Mapping]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("collection", "user_id", "location", "radius_m", "filters", "top_k", "debug", "request_id", "branches", "fusion")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    RADIUS_M_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    user_id: str
    location: GeoPoint
    radius_m: float
    filters: Filters
    top_k: int
    debug: bool
    request_id: str
    branches: _containers.RepeatedScalarFieldContainer[str]
    fusion: str
    def __init__(self, collection: _Optional[str] = ..., user_id: _Optional[str] = ..., location: _Optional[_Union[GeoPoint, _Mapping]] = ..., radius_m: _Optional[float] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., top_k: _Optional[int] = ..., debug: _Optional[bool] = ..., request_id: _Optional[str] = ..., branches: _Optional[_Iterable[str]] = ..., fusion: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "type", "ts", "weight")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    weight: float
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[str] = ..., ts: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class LogEventsRequest(_message.Message):
    __slots__ = ("collection", "events")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, collection: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RejectedEvent(_message.Message):
    __slots__ = ("index", "event_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LogEventsResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedEvent]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedEvent, _Mapping]]] = ...) -> None: ...
