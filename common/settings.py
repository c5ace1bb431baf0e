"""All of Quarry's settings, in one tree.

Sources, highest priority first: constructor arguments (the CLI's flags), environment variables with the
`QUARRY_` prefix (nested with `__`, e.g. `QUARRY_SERVER__PORT=50052`,
`QUARRY_DEFAULTS__BRANCHES__INVERTED__TIMEOUT_MS=80`), then the TOML file named by `QUARRY_CONFIG`
(see deploy/quarry.example.toml, which a test parses), then these defaults.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.types import LEARNED_FEATURES

CONFIG_ENV = "QUARRY_CONFIG"
#: Validation-context key: the recall branch names the serving layer registered (see `load_settings`).
RECALL_BRANCHES = "recall_branches"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    #: Server processes sharing the port (SO_REUSEPORT; the kernel spreads connections). More than 1 needs
    #: a fixed port; each worker loads the memory-mapped snapshot itself (shared page cache).
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    #: Threads for long GIL-free calls (a model's query encoding; recall's native calls when
    #: inline_recall is off).
    blocking_threads: Annotated[int, Field(ge=1, le=256)] = 4
    #: Recall branches' native calls (tantivy, hnswlib, cKDTree, NumPy over behavior tables) run inline on
    #: the event loop (True) or each hop to the blocking-thread pool (False). They take 0.05–0.5 ms, less
    #: than a hop costs once the GIL is contended: inline, one process served 200 five-branch Searches/s
    #: at p99 8–10 ms and 3.8 CPU ms each, instead of p99 219 ms and 5.5 ms (ghz; docs/benchmarks.md).
    #: Long GIL-free calls, a model's query encoding, still go to the pool.
    #: Inline, a branch's deadline is checked when it returns (late: TIMEOUT, its work dropped) instead of
    #: interrupting it; the request deadline still holds.
    inline_recall: bool = True
    #: Close each client connection gracefully after this long (HTTP/2 GOAWAY; its RPCs in flight get
    #: `max_connection_age_grace_s` to finish, and gRPC clients reconnect by themselves). Workers sharing
    #: the port (and an L4 balancer's backends) are handed connections, not requests: a long-lived channel
    #: stays on one worker, so balance drifts; ageing connections re-deals them. None: they live as long
    #: as clients keep them.
    max_connection_age_s: Annotated[float, Field(gt=0)] | None = None
    max_connection_age_grace_s: Annotated[float, Field(ge=0)] = 10.0
    #: RPCs in flight above this are refused with RESOURCE_EXHAUSTED (None: unbounded).
    max_concurrent_rpcs: Annotated[int, Field(ge=1)] | None = 1024
    max_receive_message_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 5.0
    reflection: bool = True
    #: One access-log line per RPC (logger quarry.access, INFO), for this share of RPCs (sampled at random).
    access_log: bool = True
    access_log_sample: Annotated[float, Field(ge=0, le=1)] = 1.0
    #: Prometheus /metrics HTTP port (None: not exposed; 0 is not allowed here). With `workers` > 1 the
    #: supervising process serves it: every worker's series added up (prometheus_client's multiprocess
    #: mode; the workers write their values to files in a private directory under TMPDIR).
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: TLS: the server's certificate chain and private key (PEM). Unset: plaintext (keep it on loopback).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: With TLS, also require client certificates signed by this CA (PEM): mutual TLS.
    tls_client_ca: Path | None = None

    @model_validator(mode="after")
    def _tls_complete(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("server.tls_cert and server.tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("server.tls_client_ca needs server.tls_cert and server.tls_key")
        return self


class LimitSettings(_Model):
    default_top_k: Annotated[int, Field(ge=1)] = 10
    max_top_k: Annotated[int, Field(ge=1, le=10000)] = 1000
    max_query_bytes: Annotated[int, Field(ge=16)] = 4096
    #: Distinct analysed terms kept from a query (the rest are dropped, and the answer says degraded=false).
    max_query_terms: Annotated[int, Field(ge=1)] = 64
    max_filter_values: Annotated[int, Field(ge=1)] = 1024
    max_radius_m: Annotated[float, Field(gt=0)] = 20_037_509.0  # half the Earth's circumference
    max_events_per_batch: Annotated[int, Field(ge=1)] = 1000
    #: Events stamped further in the future than this (client clock skew) are rejected.
    max_event_future_s: Annotated[float, Field(ge=0)] = 300.0


class BranchSpec(_Model):
    """Everything about one recall branch, in one place (name = the key in `branches`)."""

    enabled: bool = True
    #: Candidates this branch may contribute to the merge.
    quota: Annotated[int, Field(ge=1, le=100_000)] = 200
    timeout_ms: Annotated[float, Field(gt=0)] = 100.0
    #: True: a failing/slow branch contributes nothing and marks the answer degraded. False: the RPC fails.
    fail_open: bool = True
    #: Weight in fusion (RRF or weighted).
    weight: Annotated[float, Field(ge=0)] = 1.0


class LearnedFusion(_Model):
    """A linear fusion model fitted offline on judgments (`quarry eval scifact --cv-folds 5 --learned-out`):
    fused score = intercept + Σ weights[f] · x_f over per-branch features "<branch>.<feature>"
    (common.types.LEARNED_FEATURES). The fitted numbers live here, not in a model file, so a collection's
    fusion is reviewable in its config and travels with it."""

    #: The branches it was trained for. Candidates found only by other branches score `intercept`.
    branches: Annotated[list[str], Field(min_length=1)]
    #: Feature name → weight, in raw (unstandardised) feature units.
    weights: dict[str, float]
    intercept: float = 0.0
    #: k of the "rrf" features, as trained (independent of fusion.rrf_k, so retuning RRF cannot shift it).
    rrf_k: Annotated[float, Field(gt=0)] = 60.0
    #: Where the numbers came from (data set, judgments, CV score, date): shown nowhere, kept for people.
    version: str = ""

    @model_validator(mode="after")
    def _feature_names(self) -> LearnedFusion:
        if not self.weights:
            raise ValueError("fusion.learned.weights is empty: a learned fusion needs at least one feature")
        for name in self.weights:
            branch, _, feature = name.rpartition(".")
            if branch not in self.branches or feature not in LEARNED_FEATURES:
                raise ValueError(
                    f"fusion.learned.weights has {name!r}; features are named <branch>.<feature> with "
                    f"branch in {self.branches} and feature one of {', '.join(LEARNED_FEATURES)}"
                )
        return self


class FusionSettings(_Model):
    #: "learned" needs `learned` (the fitted parameters).
    strategy: Literal["rrf", "weighted", "learned"] = "rrf"
    rrf_k: Annotated[float, Field(gt=0)] = 60.0
    #: Per-branch score normalisation for the weighted strategy.
    normalization: Literal["minmax", "zscore", "rank"] = "minmax"
    #: Fitted parameters of the learned strategy (None: requests cannot ask for "learned").
    learned: LearnedFusion | None = None

    @model_validator(mode="after")
    def _learned_has_parameters(self) -> FusionSettings:
        if self.strategy == "learned" and self.learned is None:
            raise ValueError(
                'fusion.strategy = "learned" needs fitted parameters in fusion.learned '
                "(branches, weights, intercept); `quarry eval scifact --cv-folds 5 --learned-out FILE` "
                "writes them"
            )
        return self


class AnnSettings(_Model):
    """How the ANN branch searches (the snapshot holds both index kinds; this picks one)."""

    backend: Literal["hnsw", "ivf"] = "hnsw"
    #: HNSW search breadth (None: the value recorded in the snapshot). hnswlib uses max(ef, quota).
    ef: Annotated[int, Field(ge=1)] | None = None
    #: IVF lists probed (None: the value recorded in the snapshot).
    nprobe: Annotated[int, Field(ge=1)] | None = None
    #: Filtered searches allowing at most this many items go exact (None: the backend's measured default).
    exact_threshold: Annotated[int, Field(ge=0)] | None = None
    #: faiss IVF on a GPU when faiss has GPU support and one is visible.
    use_gpu: Literal["auto", "never", "always"] = "auto"
    #: Memory-map index files (shared page cache between processes, instant load).
    mmap: bool = True
    #: Query embeddings kept in an in-process LRU (0 disables it).
    query_cache_size: Annotated[int, Field(ge=0)] = 10_000
    #: onnxruntime threads per query encoding (1 is the most CPU-efficient for single queries).
    encoder_threads: Annotated[int, Field(ge=0)] = 1
    #: Most queries encoded together in one model call (common.encoders.batching): queries that arrive
    #: while the encoder is busy are encoded in one batch when it is free, never held back waiting for
    #: company (MiniLM on this CPU: 4.5 ms a name alone, 2.4 in fours, 2.2 in eights, no less in sixteens;
    #: a query waits for its whole batch). 1 encodes each query alone on the blocking pool, as before. A
    #: static query encoder never batches (it costs ~0.05 ms).
    query_batch: Annotated[int, Field(ge=1, le=256)] = 8
    #: Threads that run those batched calls, per process and encoder.
    query_batch_threads: Annotated[int, Field(ge=1, le=16)] = 1
    #: Under load only (the encoder's previous call held several queries), how long it waits for more
    #: queries before encoding a batch that is not full; an idle server's first query never waits. Buys
    #: throughput at saturation with latency below it (4 ms, `places`: highest rate +5–24% in 12 of 13
    #: pairs, one process's p99 at 150 Search/s 45–160 ms against 27–31; docs/benchmarks.md). 0 (the
    #: default): encode what is queued at once.
    query_batch_linger_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    #: "model": queries are encoded by the model that encoded the items (MiniLM: ~4–9 ms CPU a query).
    #: "static": by the static query encoder distilled for this catalog at build time (`quarry index
    #: build --query-encoder static`; ~0.05 ms a query; its quality: README "Quality and speed").
    #: "int8": by the int8 twin of a MiniLM snapshot's encoder (`minilm-int8`; 0.73x the CPU of fp32
    #: MiniLM a query, no rebuild; quality: README "Quality and speed").
    query_encoder: Literal["model", "static", "int8"] = "model"
    #: Score items by their best passage (own vector or a sentence window) when the snapshot was built with
    #: passages (`quarry index build --passages`); false searches the items' own vectors only.
    passages: bool = True


class BehaviorSettings(_Model):
    """How the behavior branch turns a user's actions into candidates (item-to-item expansion)."""

    #: i2i table: "swing", "itemcf" or "ease" (all in the snapshot by default; see `quarry eval behavior`).
    method: Literal["swing", "itemcf", "ease"] = "swing"
    #: Real-time recent events read from the store, and long-term history items from the snapshot.
    recent_n: Annotated[int, Field(ge=0, le=1000)] = 20
    history_n: Annotated[int, Field(ge=0, le=1000)] = 20
    #: Seed weight halves every `decay_half_life` positions back in the user's history.
    decay_half_life: Annotated[float, Field(gt=0)] = 10.0
    #: Long-term history seeds count this much relative to real-time ones.
    history_weight: Annotated[float, Field(ge=0)] = 0.5
    #: Exclude items the user already interacted with.
    exclude_seen: bool = True


class PreferenceSettings(_Model):
    """How the preference branch profiles a user (tag and category affinities) and recalls from it."""

    #: Real-time recent events read from the store, and long-term history items from the snapshot.
    recent_n: Annotated[int, Field(ge=0, le=1000)] = 50
    history_n: Annotated[int, Field(ge=0, le=1000)] = 50
    #: An event's say halves every `decay_half_life` positions back in the user's history.
    decay_half_life: Annotated[float, Field(gt=0)] = 20.0
    #: Long-term history counts this much relative to real-time events.
    history_weight: Annotated[float, Field(ge=0)] = 0.5
    #: The profile's strongest tags recalled from, and the most popular items taken per tag.
    top_tags: Annotated[int, Field(ge=1, le=100)] = 6
    per_tag: Annotated[int, Field(ge=1, le=10_000)] = 300
    #: Exclude items the user already interacted with.
    exclude_seen: bool = True


class GeoSettings(_Model):
    #: Without radius_m, the geo branch takes the nearest items within this distance.
    default_radius_m: Annotated[float, Field(gt=0)] = 50_000.0


def _search_branches() -> dict[str, BranchSpec]:
    return {
        "inverted": BranchSpec(),
        "ann": BranchSpec(quota=100),
        # Until a ranker model serves, query-independent signals get a smaller say in fused order.
        "behavior": BranchSpec(quota=100, weight=0.5),
        # The user's favourite tags/categories: a small say, only for a known user.
        "preference": BranchSpec(quota=50, weight=0.2),
        "geo": BranchSpec(quota=100, weight=0.5),
    }


def _recommend_branches() -> dict[str, BranchSpec]:
    return {
        "behavior": BranchSpec(),
        "preference": BranchSpec(quota=100, weight=0.5),
        "geo": BranchSpec(),
        "popular": BranchSpec(quota=100, weight=0.3),
    }


class RankerSettings(_Model):
    #: ONNX model from `quarry rank train` (with its .json sidecar); None: fused order.
    model_path: Path | None = None
    #: Micro-batching window across concurrent requests (0: one call per request, no waiting).
    window_ms: Annotated[float, Field(ge=0, le=50)] = 0.0
    #: onnxruntime providers (None: CUDA when available, else CPU).
    providers: list[str] | None = None


class CollectionSettings(_Model):
    #: Recall branches for Search, by name.
    branches: dict[str, BranchSpec] = Field(default_factory=_search_branches)
    #: Recall branches for Recommend (no query text), by name.
    recommend_branches: dict[str, BranchSpec] = Field(default_factory=_recommend_branches)
    #: Recommend never returns what the user already interacted with: their long-term history (snapshot)
    #: and real-time events (store, up to `redis.recent_max_len`), whichever branch proposed it.
    recommend_exclude_seen: bool = True
    ann: AnnSettings = Field(default_factory=AnnSettings)
    behavior: BehaviorSettings = Field(default_factory=BehaviorSettings)
    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    geo: GeoSettings = Field(default_factory=GeoSettings)
    ranker: RankerSettings = Field(default_factory=RankerSettings)
    fusion: FusionSettings = Field(default_factory=FusionSettings)
    #: Overrides of the per-field BM25 boosts recorded in the snapshot.
    field_boosts: dict[str, float] = Field(default_factory=dict)

    @field_validator("branches", "recommend_branches")
    @classmethod
    def _known(cls, v: dict[str, BranchSpec], info: ValidationInfo) -> dict[str, BranchSpec]:
        # The names come from the retriever's branch registry (the schema lives below it and cannot know
        # them); validated whenever the caller passes them, as `retriever.settings.load_settings` does.
        known = (info.context or {}).get(RECALL_BRANCHES)
        if known is not None:
            unknown = sorted(set(v) - set(known))
            if unknown:
                raise ValueError(f"unknown recall branches {unknown}; known: {sorted(known)}")
        return v

    @model_validator(mode="after")
    def _learned_branches(self) -> CollectionSettings:
        # A model trained for a branch this collection does not run would silently score 0 for it.
        learned = self.fusion.learned
        if learned is not None:
            missing = [b for b in learned.branches if b not in self.branches]
            if missing:
                raise ValueError(
                    f"fusion.learned was trained for branches {missing} that are not Search branches here "
                    f"({', '.join(self.branches)})"
                )
        return self


class RedisSettings(_Model):
    #: redis://host:port/db; empty = embedded in-process store (no external server needed).
    url: str = ""
    #: The URL names one node of a Redis Cluster: the client discovers the other nodes from it and sends
    #: each user's keys to the master that owns their slot (db must be 0). False = one plain server.
    cluster: bool = False
    #: Per-command timeout: a slow Redis costs at most this, then the answer is degraded.
    socket_timeout_ms: Annotated[float, Field(gt=0)] = 20.0
    connect_timeout_ms: Annotated[float, Field(gt=0)] = 50.0
    #: Failures in a row that open the circuit breaker (calls in flight together when one stall hits
    #: count once: retriever.features.recent.CircuitBreaker), and how long it stays open.
    breaker_failures: Annotated[int, Field(ge=1)] = 3
    breaker_open_s: Annotated[float, Field(gt=0)] = 2.0
    #: Recent events kept per user, and for how long after the user's last event.
    recent_max_len: Annotated[int, Field(ge=1, le=10_000)] = 100
    recent_ttl_s: Annotated[float, Field(gt=0)] = 30 * 86400
    #: Event ids remembered per user for idempotent LogEvents retries.
    dedup_window: Annotated[int, Field(ge=1)] = 1000
    #: Users held by the embedded store (least recently active are dropped first).
    embedded_max_users: Annotated[int, Field(ge=1)] = 100_000
    #: In-process cache of per-user real-time counters (ranking features): entries and seconds.
    counter_cache_size: Annotated[int, Field(ge=1)] = 100_000
    counter_cache_ttl_s: Annotated[float, Field(gt=0)] = 5.0
    #: Seconds a process keeps an item's real-time window state (a ranker feature; entries share
    #: counter_cache_size): how long its 1 h / 1 d / 7 d counts may lag other processes' LogEvents.
    item_cache_ttl_s: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        # Caught at start-up rather than by the first request that reaches the client.
        if self.cluster:
            if not self.url:
                raise ValueError("redis.cluster needs redis.url (any one node of the cluster)")
            db = urlsplit(self.url).path.strip("/")
            if db not in ("", "0"):
                raise ValueError(f"a Redis Cluster has only db 0, but redis.url names db {db}")
        return self


class AdminSettings(_Model):
    """The AdminService (Status, Reload, Rollback) on the serving port."""

    #: Bearer token every admin call must present; None (the default) turns the admin service off.
    token: SecretStr | None = None
    #: Reload a collection by itself when the snapshot root's live pointer moves (checked every interval).
    watch: bool = False
    watch_interval_s: Annotated[float, Field(gt=0)] = 5.0


class RealtimeSettings(_Model):
    """Real-time Upsert/Delete (AdminService): the durable change log and how fast other processes see it."""

    #: Where change logs live when serving plain snapshot directories: <log_dir>/<collection>/. Served
    #: from a snapshot root, a collection's log is <root>/<collection>/changes/ and this is not needed.
    log_dir: Path | None = None
    #: How often every process looks for changes appended by another one (SO_REUSEPORT workers, a second
    #: server on the same root): the visibility bound across processes. In the process that took the
    #: Upsert, the change is visible when the RPC returns.
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    #: Items per Upsert and ids per Delete call.
    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000


class ClusterSettings(_Model):
    """Scale-out: a root server fans each request out to one replica of every shard of a shard set
    (common/sharding.py); `quarry serve --role root|shard` sets the role."""

    #: "single" (a whole collection per process), "root" (no indexes: fans out to `shards`) or "shard".
    role: Literal["single", "root", "shard"] = "single"
    #: role shard: which shard of each collection's shard set this server holds.
    shard: Annotated[int, Field(ge=0)] | None = None
    #: role root: per shard (index order), the addresses of its replicas: "host:port", or
    #: "dns:///name:port" for a Kubernetes headless service (every address it resolves to is a replica).
    shards: list[list[str]] = Field(default_factory=list)
    #: Per-shard deadline of one fan-out (capped by the request's own deadline).
    shard_timeout_ms: Annotated[float, Field(gt=0)] = 250.0
    #: Where the root gets hits' display fields (title, text): "in_recall" — every candidate's row carries
    #: them (one round trip; more bytes); "fetch" — only the final hits', from their shards after ranking
    #: (query then fetch: a second round trip, far fewer bytes when documents are long).
    display: Literal["in_recall", "fetch"] = "in_recall"
    #: Hedging: after this quantile of a shard's recent latencies (at least hedge_min_ms), ask a second
    #: replica; at most hedge_budget of the calls may hedge, so a slow shard cannot double its load.
    hedge: bool = True
    hedge_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    hedge_min_ms: Annotated[float, Field(ge=0)] = 2.0
    hedge_budget: Annotated[float, Field(ge=0, le=1)] = 0.1
    #: A replica failing this many times in a row is skipped for eject_s seconds.
    eject_failures: Annotated[int, Field(ge=1)] = 3
    eject_s: Annotated[float, Field(gt=0)] = 1.0
    dns_refresh_s: Annotated[float, Field(gt=0)] = 5.0
    #: role shard: how long after its root moved to a new shard set the previous one stays loaded.
    release_previous_s: Annotated[float, Field(ge=0)] = 30.0
    #: role root: bearer token for the shards' AdminService (coordinated Reload, routed Upsert/Delete);
    #: default: admin.token.
    shard_token: SecretStr | None = None


class TracingSettings(_Model):
    """OpenTelemetry: one span per RPC with child spans for recall (one per branch), fusion and ranking."""

    #: OTLP/gRPC collector, e.g. "http://127.0.0.1:4317"; None (the default): no tracing, no exporter.
    otlp_endpoint: str | None = None
    service_name: str = "quarry"
    #: Share of new traces recorded (parent-based: a caller's sampling decision is kept).
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0


class QuarrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUARRY_", env_nested_delimiter="__", extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: "text" for people, "json" for log pipelines (one object per line; see common/logs.py).
    log_format: Literal["text", "json"] = "text"
    #: Snapshot directories to serve (one collection each).
    snapshots: list[Path] = Field(default_factory=list)
    #: A snapshot root (common.snapshot_root): serve the live generation of every collection under it.
    snapshot_root: Path | None = None
    #: "full" re-hashes every file at load; "size" only checks sizes (faster for huge snapshots).
    verify: Literal["full", "size"] = "full"
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    defaults: CollectionSettings = Field(default_factory=CollectionSettings)
    #: Per-collection overrides, merged over `defaults` key by key.
    collections: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _collections_valid(self) -> QuarrySettings:
        for name in self.collections:
            self.for_collection(name)  # raises a ValidationError naming the bad key
        return self

    def check_branch_names(self, recall_branches: Collection[str]) -> None:
        """Raise a ValidationError when a branch key (defaults or any collection) is not in `recall_branches`."""
        context = {RECALL_BRANCHES: frozenset(recall_branches)}
        CollectionSettings.model_validate(self.defaults.model_dump(), context=context)
        for name in self.collections:
            self.for_collection(name, context=context)

    def for_collection(self, name: str, *, context: Mapping[str, Any] | None = None) -> CollectionSettings:
        override = self.collections.get(name)
        if not override:
            return self.defaults
        merged = _deep_merge(self.defaults.model_dump(), override)
        return CollectionSettings.model_validate(merged, context=context)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_override or os.environ.get(CONFIG_ENV)
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={path}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_config_override: str | None = None


def load_settings(
    config: Path | None = None, *, recall_branches: Collection[str] | None = None, **overrides: Any
) -> QuarrySettings:
    """Settings from `config` (or $QUARRY_CONFIG), the environment, then `overrides`.

    With `recall_branches`, every `branches`/`recommend_branches` key (defaults and per collection) must be
    one of them; `retriever.settings.load_settings` passes the retriever's branch registry."""
    global _config_override
    _config_override = str(config) if config is not None else None
    try:
        settings = QuarrySettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_override = None
    if recall_branches is not None:
        settings.check_branch_names(recall_branches)
    return settings
