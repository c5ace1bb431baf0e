from common.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BranchCall(_message.Message):
    __slots__ = ("name", "quota", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    quota: int
    timeout_ms: float
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[int] = ..., timeout_ms: _Optional[float] = ...) -> None: ...

class SeedList(_message.Message):
    __slots__ = ("branch", "ordinals", "weights")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    ORDINALS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    branch: str
    ordinals: _containers.RepeatedScalarFieldContainer[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, branch: _Optional[str] = ..., ordinals: _Optional[_Iterable[int]] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class ShardRecallRequest(_message.Message):
    __slots__ = ("collection", "set_id", "generation", "query", "branches", "seeds", "profile", "query_vector", "with_display", "term_df")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    WITH_DISPLAY_FIELD_NUMBER: _ClassVar[int]
    TERM_DF_FIELD_NUMBER: _ClassVar[int]
    collection: str
    set_id: str
    generation: str
    query: _search_pb2.SearchRequest
    branches: _containers.RepeatedCompositeFieldContainer[BranchCall]
    seeds: _containers.RepeatedCompositeFieldContainer[SeedList]
    profile: _containers.RepeatedScalarFieldContainer[float]
    query_vector: bytes
    with_display: bool
    term_df: _containers.RepeatedCompositeFieldContainer[TermDf]
    def __init__(self, collection: _Optional[str] = ..., set_id: _Optional[str] = ..., generation: _Optional[str] = ..., query: _Optional[_Union[_search_pb2.SearchRequest, _Mapping]] = ..., branches: _Optional[_Iterable[_Union[BranchCall, _Mapping]]] = ..., seeds: _Optional[_Iterable[_Union[SeedList, _Mapping]]] = ..., profile: _Optional[_Iterable[float]] = ..., query_vector: _Optional[bytes] = ..., with_display: _Optional[bool] = ..., term_df: _Optional[_Iterable[_Union[TermDf, _Mapping]]] = ...) -> None: ...

class TermDf(_message.Message):
    __slots__ = ("field", "term", "df")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    DF_FIELD_NUMBER: _ClassVar[int]
    field: str
    term: str
    df: int
    def __init__(self, field: _Optional[str] = ..., term: _Optional[str] = ..., df: _Optional[int] = ...) -> None: ...

class ShardBranch(_message.Message):
    __slots__ = ("branch", "status", "latency_ms", "detail", "ordinals", "scores")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ORDINALS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    branch: str
    status: _search_pb2.BranchStatus
    latency_ms: float
    detail: str
    ordinals: bytes
    scores: bytes
    def __init__(self, branch: _Optional[str] = ..., status: _Optional[_Union[_search_pb2.BranchStatus, str]] = ..., latency_ms: _Optional[float] = ..., detail: _Optional[str] = ..., ordinals: _Optional[bytes] = ..., scores: _Optional[bytes] = ...) -> None: ...

class ShardRecallResponse(_message.Message):
    __slots__ = ("shard", "snapshot_version", "branches", "rows")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    snapshot_version: str
    branches: _containers.RepeatedCompositeFieldContainer[ShardBranch]
    rows: bytes
    def __init__(self, shard: _Optional[int] = ..., snapshot_version: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[ShardBranch, _Mapping]]] = ..., rows: _Optional[bytes] = ...) -> None: ...

class ShardFetchRequest(_message.Message):
    __slots__ = ("collection", "set_id", "ordinals")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SET_ID_FIELD_NUMBER: _ClassVar[int]
    ORDINALS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    set_id: str
    ordinals: bytes
    def __init__(self, collection: _Optional[str] = ..., set_id: _Optional[str] = ..., ordinals: _Optional[bytes] = ...) -> None: ...

class ShardFetchResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: bytes
    def __init__(self, rows: _Optional[bytes] = ...) -> None: ...
