"""All of Quarry's settings, in one tree.

Sources, highest priority first: constructor arguments (the CLI's flags), environment variables with the
`QUARRY_` prefix (nested with `__`, e.g. `QUARRY_SERVER__PORT=50052`,
`QUARRY_DEFAULTS__BRANCHES__INVERTED__TIMEOUT_MS=80`), then the TOML file named by `QUARRY_CONFIG`
(see deploy/quarry.example.toml, which a test parses), then these defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "QUARRY_CONFIG"
KNOWN_BRANCHES = ("inverted", "ann")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    #: Threads for blocking native calls (tantivy, hnswlib, faiss, onnxruntime); all release the GIL.
    blocking_threads: Annotated[int, Field(ge=1, le=256)] = 4
    #: RPCs in flight above this are refused with RESOURCE_EXHAUSTED (None: unbounded).
    max_concurrent_rpcs: Annotated[int, Field(ge=1)] | None = 1024
    max_receive_message_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 5.0
    reflection: bool = True


class LimitSettings(_Model):
    default_top_k: Annotated[int, Field(ge=1)] = 10
    max_top_k: Annotated[int, Field(ge=1, le=10000)] = 1000
    max_query_bytes: Annotated[int, Field(ge=16)] = 4096
    #: Distinct analysed terms kept from a query (the rest are dropped, and the answer says degraded=false).
    max_query_terms: Annotated[int, Field(ge=1)] = 64
    max_filter_values: Annotated[int, Field(ge=1)] = 1024
    max_radius_m: Annotated[float, Field(gt=0)] = 20_037_509.0  # half the Earth's circumference


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


class FusionSettings(_Model):
    strategy: Literal["rrf", "weighted"] = "rrf"
    rrf_k: Annotated[float, Field(gt=0)] = 60.0
    #: Per-branch score normalisation for the weighted strategy.
    normalization: Literal["minmax", "zscore", "rank"] = "minmax"


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


class CollectionSettings(_Model):
    branches: dict[str, BranchSpec] = Field(
        default_factory=lambda: {"inverted": BranchSpec(), "ann": BranchSpec(quota=100)}
    )
    ann: AnnSettings = Field(default_factory=AnnSettings)
    fusion: FusionSettings = Field(default_factory=FusionSettings)
    #: Overrides of the per-field BM25 boosts recorded in the snapshot.
    field_boosts: dict[str, float] = Field(default_factory=dict)

    @field_validator("branches")
    @classmethod
    def _known(cls, v: dict[str, BranchSpec]) -> dict[str, BranchSpec]:
        unknown = sorted(set(v) - set(KNOWN_BRANCHES))
        if unknown:
            raise ValueError(f"unknown recall branches {unknown}; known: {list(KNOWN_BRANCHES)}")
        return v


class RedisSettings(_Model):
    #: redis://host:port/db; empty = embedded in-process store (no external server needed).
    url: str = ""
    socket_timeout_ms: Annotated[float, Field(gt=0)] = 20.0


class QuarrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUARRY_", env_nested_delimiter="__", extra="forbid")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Snapshot directories to serve (one collection each).
    snapshots: list[Path] = Field(default_factory=list)
    #: "full" re-hashes every file at load; "size" only checks sizes (faster for huge snapshots).
    verify: Literal["full", "size"] = "full"
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    defaults: CollectionSettings = Field(default_factory=CollectionSettings)
    #: Per-collection overrides, merged over `defaults` key by key.
    collections: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _collections_valid(self) -> QuarrySettings:
        for name in self.collections:
            self.for_collection(name)  # raises a ValidationError naming the bad key
        return self

    def for_collection(self, name: str) -> CollectionSettings:
        override = self.collections.get(name)
        if not override:
            return self.defaults
        merged = _deep_merge(self.defaults.model_dump(), override)
        return CollectionSettings.model_validate(merged)

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


def load_settings(config: Path | None = None, **overrides: Any) -> QuarrySettings:
    """Settings from `config` (or $QUARRY_CONFIG), the environment, then `overrides`."""
    global _config_override
    _config_override = str(config) if config is not None else None
    try:
        return QuarrySettings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_override = None
