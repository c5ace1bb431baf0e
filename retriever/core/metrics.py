"""Prometheus metrics, one name per component (the branch name is a label, as in logs and config)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BRANCH_RESULTS = Counter(
    "quarry_branch_results_total",
    "Recall branch outcomes (ok, skipped, timeout, error, disabled)",
    ["collection", "branch", "status"],
)
BRANCH_LATENCY = Histogram(
    "quarry_branch_latency_seconds",
    "Latency of successful recall branch calls",
    ["collection", "branch"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
RPCS = Counter("quarry_rpcs_total", "RPCs by method and status code", ["method", "code"])
RPC_LATENCY = Histogram(
    "quarry_rpc_latency_seconds",
    "RPC latency by method",
    ["method"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
)
