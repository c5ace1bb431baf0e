"""Prometheus metrics of the serving path, on prometheus_client's one default registry (exposed on
`server.metrics_port`). The names are documented in docs/operations.md; the branch name is a label, as in
logs and config. The ranker's metrics live in `ranker.metrics`, the user store's in
`retriever.features.recent` (each layer registers its own, in the same registry)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

GRPC_REQUESTS = Counter(
    "quarry_grpc_requests_total",
    "Unary RPCs by service, method and status code",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "quarry_grpc_request_seconds",
    "Unary RPC latency (server side, handler start to end)",
    ["service", "method"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
)
BRANCH_RESULTS = Counter(
    "quarry_branch_results_total",
    "Recall branch outcomes (ok, skipped, timeout, error, disabled)",
    ["collection", "branch", "status"],
)
BRANCH_LATENCY = Histogram(
    "quarry_branch_latency_seconds",
    "Latency of successful recall branch calls",
    ["collection", "branch"],
    buckets=_FAST,
)
#: Each stage of an answered request's pipeline (validate, recall, fuse, post_filter, rank, hydrate, …),
#: wall time: what a request's time inside the service went to, beside `quarry_grpc_request_seconds`.
STAGE_LATENCY = Histogram(
    "quarry_stage_seconds",
    "Wall time of each stage of an answered Search or Recommend (pipeline order: validate, recall, fuse, …)",
    ["pipeline", "stage"],
    buckets=_FAST,
)
BRANCH_CANDIDATES = Histogram(
    "quarry_branch_candidates",
    "Candidates a successful branch call returned",
    ["collection", "branch"],
    buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000),
)
EVENTS = Counter(
    "quarry_events_total",
    "LogEvents records by outcome (accepted, duplicate, rejected)",
    ["collection", "outcome"],
)
# Gauges' multiprocess_mode says how `serve --workers N` adds up its workers' values (prometheus_client's
# multiprocess mode, retriever.api.server.serve_workers; one process ignores it): the largest among the
# live workers, so a generation reads 1 while any worker serves it.
GENERATION = Gauge(
    "quarry_generation_info",
    "1 for the generation each collection serves now (0: served before, under --workers N)",
    ["collection", "snapshot_version", "generation"],
    multiprocess_mode="livemax",
)
GENERATION_SINCE = Gauge(
    "quarry_generation_serving_since_seconds",
    "Unix time the serving generation went live",
    ["collection"],
    multiprocess_mode="livemax",
)
ITEMS = Gauge(
    "quarry_collection_items", "Items in the serving generation", ["collection"], multiprocess_mode="livemax"
)
SHARD_ANSWERS = Counter(
    "quarry_shard_answers_total",
    "A root's fan-outs by shard and outcome: ok, or missing (no replica answered in time: partial answer)",
    ["collection", "shard", "outcome"],
)


#: Set (to a directory) for `serve --workers N`'s workers: they write their values there, for the
#: supervising process to add up (prometheus_client's multiprocess mode).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROC_ENV in os.environ


def retire(gauge: Gauge, *labels: str) -> None:
    """A gauge's series that no longer applies: gone from this process's output; under `serve --workers
    N` (prometheus_client cannot remove a series there) it reads 0."""
    gauge.labels(*labels).set(0)
    if not MULTIPROCESS:
        gauge.remove(*labels)


@cache
def _branch_children(collection: str, branch: str, status: str) -> tuple[Any, Any, Any]:
    # labels() takes a lock and builds a key each call (~2.5 µs; three a branch, five branches a request)
    ok = status == "ok"  # latency and candidates are observed for answers only
    return (
        BRANCH_RESULTS.labels(collection, branch, status),
        BRANCH_LATENCY.labels(collection, branch) if ok else None,
        BRANCH_CANDIDATES.labels(collection, branch) if ok else None,
    )


def record_branch(collection: str, branch: str, status: str, latency_ms: float, candidates: int) -> None:
    """One branch's outcome in a request: its status counted; an OK one's latency and candidate count."""
    result, latency, count = _branch_children(collection, branch, status)
    result.inc()
    if latency is not None:
        latency.observe(latency_ms / 1000)
        count.observe(candidates)


@cache
def _stage_children(pipeline: str, stages: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(STAGE_LATENCY.labels(pipeline, stage) for stage in stages)


def record_stages(pipeline: str, stages: tuple[str, ...], seconds: Sequence[float]) -> None:
    """An answered request's stage times (seconds, in `stages`' order)."""
    for child, took in zip(_stage_children(pipeline, stages), seconds, strict=True):
        child.observe(took)


ENCODE_BATCH = Histogram(
    "quarry_query_encode_batch_size",
    "Queries encoded together in one model call (ann.query_batch > 1): 1 while the server keeps up",
    ["encoder"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
)
ENCODE_BATCH_SECONDS = Histogram(
    "quarry_query_encode_batch_seconds",
    "Time of one batched query-encoding model call",
    ["encoder"],
    buckets=_FAST,
)


def encode_batch_observer(encoder: str) -> Callable[[int, float], None]:
    """The hook an encode batcher calls after each model call: its size and seconds, by encoder."""
    size, seconds = ENCODE_BATCH.labels(encoder), ENCODE_BATCH_SECONDS.labels(encoder)

    def observe(n: int, secs: float) -> None:
        size.observe(n)
        seconds.observe(secs)

    return observe
