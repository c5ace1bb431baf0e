"""Prometheus metrics of the ranking stage (same default registry as the retriever's)."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

RANK_LATENCY = Histogram(
    "quarry_ranker_latency_seconds",
    "Model ranking per request: features + (micro-batched) inference",
    ["collection"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
RANK_CANDIDATES = Histogram(
    "quarry_ranker_candidates",
    "Candidates scored per request",
    ["collection"],
    buckets=(1, 10, 50, 100, 200, 500, 1000),
)
RANK_BATCH_ROWS = Histogram(
    "quarry_ranker_batch_rows",
    "Rows per onnxruntime call (several requests when micro-batching coalesces them)",
    buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
)
RANKER_INFO = Gauge(
    "quarry_ranker_info",
    "1 per loaded ranking model, with its version and provider",
    ["collection", "model", "provider"],
    multiprocess_mode="livemax",  # serve --workers N: 1 while any live worker has it loaded
)
