"""protobuf ↔ domain conversion. Nothing here decides policy; validation lives in retriever.core."""

from __future__ import annotations

from typing import Any

from common.types import GeoPoint
from common.v1 import search_pb2 as pb
from retriever.core.events import LogResult, RawEvent
from retriever.core.types import (
    BranchStatus,
    DebugDetail,
    DebugItem,
    Filters,
    NumericRange,
    SearchQuery,
    SearchResult,
)

_STATUS = {
    BranchStatus.OK: pb.BRANCH_STATUS_OK,
    BranchStatus.SKIPPED: pb.BRANCH_STATUS_SKIPPED,
    BranchStatus.TIMEOUT: pb.BRANCH_STATUS_TIMEOUT,
    BranchStatus.ERROR: pb.BRANCH_STATUS_ERROR,
    BranchStatus.DISABLED: pb.BRANCH_STATUS_DISABLED,
}


def branch_status(status: BranchStatus) -> pb.BranchStatus:
    return _STATUS[status]


def _filters(f: pb.Filters) -> Filters:
    return Filters(
        categories=tuple(f.categories),
        tags=tuple(f.tags),
        ranges=tuple(
            NumericRange(
                field=r.field,
                min=r.min if r.HasField("min") else None,
                max=r.max if r.HasField("max") else None,
                min_exclusive=r.min_exclusive,
                max_exclusive=r.max_exclusive,
            )
            for r in f.ranges
        ),
        exclude_ids=tuple(f.exclude_ids),
    )


def _query(req: pb.SearchRequest | pb.RecommendRequest, text: str) -> SearchQuery:
    return SearchQuery(
        collection=req.collection,
        text=text,
        user_id=req.user_id,
        location=GeoPoint(req.location.lat, req.location.lon) if req.HasField("location") else None,
        radius_m=req.radius_m,
        filters=_filters(req.filters),
        top_k=req.top_k,
        debug=req.debug,
        request_id=req.request_id,
        branches=tuple(req.branches),
        fusion=req.fusion,
    )


def search_query(req: pb.SearchRequest) -> SearchQuery:
    return _query(req, req.query)


def recommend_query(req: pb.RecommendRequest) -> SearchQuery:
    return _query(req, "")


def raw_events(req: pb.LogEventsRequest) -> list[RawEvent]:
    return [RawEvent(e.event_id, e.user_id, e.item_id, e.type, e.ts, e.weight) for e in req.events]


def log_events_response(res: LogResult) -> pb.LogEventsResponse:
    out = pb.LogEventsResponse(accepted=res.accepted, duplicates=res.duplicates)
    for index, event_id, reason in res.rejected:
        out.rejected.add(index=index, event_id=event_id, reason=reason)
    return out


def search_response(res: SearchResult, *, debug: bool) -> pb.SearchResponse:
    out = pb.SearchResponse(snapshot_version=res.snapshot_version, degraded=res.degraded, took_ms=res.took_ms)
    for h in res.hits:
        hit = out.hits.add(id=h.id, score=h.score, title=h.title, category=h.category or "", tags=h.tags)
        for s in h.sources:
            hit.sources.add(branch=s.branch, score=s.score, rank=s.rank)
        if h.location is not None:
            hit.location.lat, hit.location.lon = h.location.lat, h.location.lon
        if h.distance_m is not None:
            hit.distance_m = h.distance_m
        hit.attributes.update(h.attributes)
        hit.fields.update(h.fields)
        if debug and h.debug is not None:
            hit.debug.fused_score, hit.debug.fused_rank = h.debug.fused_score, h.debug.fused_rank
            hit.debug.features.update(h.debug.features)
    if debug and res.debug is not None:
        _debug_info(out.debug, res.debug)
    if debug:
        for b in res.branch_stats:
            out.branch_stats.add(
                branch=b.branch,
                status=_STATUS[b.status],
                latency_ms=b.latency_ms,
                candidates=len(b.candidates),
                detail=b.detail,
            )
    return out


def _debug_items(out: Any, items: tuple[DebugItem, ...]) -> None:
    for it in items:
        c = out.add(id=it.id, title=it.title, score=it.score, rank=it.rank)
        for src in it.sources:
            c.sources.add(branch=src.branch, score=src.score, rank=src.rank)
        if it.location is not None:
            c.location.lat, c.location.lon = it.location.lat, it.location.lon


def _debug_info(out: pb.DebugInfo, d: DebugDetail) -> None:
    for name, items in d.branches:
        _debug_items(out.branches.add(branch=name).candidates, items)
    _debug_items(out.fused, d.fused)
    out.fusion, out.ranker = d.fusion, d.ranker
    out.feature_names.extend(d.feature_names)
    if d.user is not None:
        u = out.user
        u.user_id, u.available = d.user.user_id, d.user.available
        for e in d.user.recent:
            u.recent.add(item_id=e.item_id, title=e.title, type=e.type, ts=e.ts, weight=e.weight)
        if d.user.counters is not None:
            c = d.user.counters
            u.events_total, u.weight_sum = c.events_total, c.weight_sum
            u.distinct_items, u.last_ts = c.distinct_items, c.last_ts
