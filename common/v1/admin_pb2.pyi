from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CollectionStatus(_message.Message):
    __slots__ = ("collection", "snapshot_version", "generation", "path", "items", "branches", "unavailable", "ranker", "serving_since", "generations", "root_live")
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
    def __init__(self, collection: _Optional[str] = ..., snapshot_version: _Optional[str] = ..., generation: _Optional[str] = ..., path: _Optional[str] = ..., items: _Optional[int] = ..., branches: _Optional[_Iterable[str]] = ..., unavailable: _Optional[_Mapping[str, str]] = ..., ranker: _Optional[str] = ..., serving_since: _Optional[float] = ..., generations: _Optional[_Iterable[str]] = ..., root_live: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStatus]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionStatus, _Mapping]]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("collection", "generation")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    generation: str
    def __init__(self, collection: _Optional[str] = ..., generation: _Optional[str] = ...) -> None: ...

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
