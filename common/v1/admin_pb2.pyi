from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Item(_message.Message):
    __slots__ = ("id", "text", "category", "tags", "lat", "lon", "attrs", "embedding")
    class TextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    LAT_FIELD_NUMBER: _ClassVar[int]
    LON_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: _containers.ScalarMap[str, str]
    category: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    lat: float
    lon: float
    attrs: _containers.ScalarMap[str, float]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[_Mapping[str, str]] = ..., category: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., lat: _Optional[float] = ..., lon: _Optional[float] = ..., attrs: _Optional[_Mapping[str, float]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RejectedItem(_message.Message):
    __slots__ = ("index", "id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ChangeResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "not_found", "log_seq", "took_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedItem]
    not_found: _containers.RepeatedScalarFieldContainer[str]
    log_seq: int
    took_ms: float
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedItem, _Mapping]]] = ..., not_found: _Optional[_Iterable[str]] = ..., log_seq: _Optional[int] = ..., took_ms: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CollectionStatus(_message.Message):
    __slots__ = ("collection", "snapshot_version", "generation", "path", "items", "branches", "unavailable", "ranker", "serving_since", "generations", "root_live", "log_seq", "generation_log_seq", "upserts", "deletes", "changelog", "set_id", "shards")
    class UnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RANKER_FIELD_NUMBER: _ClassVar[int]
    SERVING_SINCE_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    ROOT_LIVE_FIELD_NUMBER: _ClassVar[int]
    LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    GENERATION_LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    CHANGELOG_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    snapshot_version: str
    generation: str
    path: str
    items: int
    branches: _containers.RepeatedScalarFieldContainer[str]
    unavailable: _containers.ScalarMap[str, str]
    ranker: str
    serving_since: float
    generations: _containers.RepeatedScalarFieldContainer[str]
    root_live: str
    log_seq: int
    generation_log_seq: int
    upserts: int
    deletes: int
    changelog: str
    set_id: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    def __init__(self, collection: _Optional[str] = ..., snapshot_version: _Optional[str] = ..., generation: _Optional[str] = ..., path: _Optional[str] = ..., items: _Optional[int] = ..., branches: _Optional[_Iterable[str]] = ..., unavailable: _Optional[_Mapping[str, str]] = ..., ranker: _Optional[str] = ..., serving_since: _Optional[float] = ..., generations: _Optional[_Iterable[str]] = ..., root_live: _Optional[str] = ..., log_seq: _Optional[int] = ..., generation_log_seq: _Optional[int] = ..., upserts: _Optional[int] = ..., deletes: _Optional[int] = ..., changelog: _Optional[str] = ..., set_id: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStatus]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStatus, _Mapping]]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("collection", "generation", "keep_pointer")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KEEP_POINTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    generation: str
    keep_pointer: bool
    def __init__(self, collection: _Optional[str] = ..., generation: _Optional[str] = ..., keep_pointer: _Optional[bool] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "replicas")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, shard: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("address", "in_flight", "ejected", "failures", "p50_ms", "p95_ms")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    address: str
    in_flight: int
    ejected: bool
    failures: int
    p50_ms: float
    p95_ms: float
    def __init__(self, address: _Optional[str] = ..., in_flight: _Optional[int] = ..., ejected: _Optional[bool] = ..., failures: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("collection", "generation")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    generation: str
    def __init__(self, collection: _Optional[str] = ..., generation: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("status", "previous_version", "load_ms", "unchanged")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    status: CollectionStatus
    previous_version: str
    load_ms: float
    unchanged: bool
    def __init__(self, status: _Optional[_Union[CollectionStatus, _Mapping]] = ..., previous_version: _Optional[str] = ..., load_ms: _Optional[float] = ..., unchanged: _Optional[bool] = ...) -> None: ...
