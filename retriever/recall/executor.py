"""Runs a collection's recall branches concurrently, each under its own deadline and quota.

Concurrently: each branch is a task. Where its work is native and short it may run inline on the event
loop (RecallRequest.inline, server.inline_recall); waits (Redis) and long GIL-free calls still overlap.

A branch that times out or raises contributes nothing and is reported (status, latency, detail), and the
answer is marked degraded — unless its spec says fail_open=false, in which case the request fails.
The overall request deadline caps every branch's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping

from opentelemetry import trace

from common.ordering import canonical
from common.settings import BranchSpec
from common.types import DependencyUnavailable
from retriever.core.errors import BranchFailed
from retriever.core.types import BranchResult, BranchStatus
from retriever.recall.base import RecallBranch, RecallRequest

log = logging.getLogger(__name__)


async def _run_one(
    branch: RecallBranch, spec: BranchSpec, request: RecallRequest, deadline: float | None
) -> BranchResult:
    name = branch.name
    reason = branch.skip_reason(request)
    if reason is not None:
        return BranchResult(name, BranchStatus.SKIPPED, detail=reason)
    timeout = spec.timeout_ms / 1000.0
    if deadline is not None:
        timeout = min(timeout, deadline - time.monotonic())
    t0 = time.perf_counter()
    if timeout <= 0:
        return BranchResult(name, BranchStatus.TIMEOUT, detail="no time left before the request deadline")
    try:
        async with asyncio.timeout(timeout):
            cands = await branch.recall(request, spec.quota)
    except TimeoutError:
        ms = (time.perf_counter() - t0) * 1000
        log.warning("branch %s timed out after %.1f ms (budget %.1f ms)", name, ms, timeout * 1000)
        return BranchResult(
            name, BranchStatus.TIMEOUT, latency_ms=ms, detail=f"timed out after {timeout * 1000:.0f} ms"
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        ms = (time.perf_counter() - t0) * 1000
        if isinstance(exc, DependencyUnavailable):  # expected in operation: one line, no traceback
            log.warning("branch %s failed: %s", name, exc)
        else:
            log.exception("branch %s failed", name)
        return BranchResult(name, BranchStatus.ERROR, latency_ms=ms, detail=f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - t0) * 1000
    if ms > timeout * 1000:
        # Inline recall (server.inline_recall) cannot be interrupted: a branch that answers after its
        # budget is a timeout all the same, so the answer never depends on how the branch was run.
        log.warning("branch %s answered after %.1f ms (budget %.1f ms)", name, ms, timeout * 1000)
        return BranchResult(
            name, BranchStatus.TIMEOUT, latency_ms=ms, detail=f"answered after {timeout * 1000:.0f} ms"
        )
    # One canonical order (near ties by ordinal), whichever engine answered: a root merging shard lists
    # orders them the same way (common.ordering).
    return BranchResult(name, BranchStatus.OK, candidates=canonical(cands[: spec.quota]), latency_ms=ms)


async def _traced(tracer: trace.Tracer, name: str, run: Awaitable[BranchResult]) -> BranchResult:
    with tracer.start_as_current_span(f"branch {name}", attributes={"quarry.branch": name}) as span:
        res = await run
        span.set_attribute("quarry.branch.status", res.status.value)
        span.set_attribute("quarry.branch.candidates", len(res.candidates))
        if res.status in (BranchStatus.TIMEOUT, BranchStatus.ERROR):
            span.set_status(trace.Status(trace.StatusCode.ERROR, res.detail))
        return res


async def run_branches(
    branches: Mapping[str, RecallBranch],
    specs: Mapping[str, BranchSpec],
    request: RecallRequest,
    deadline: float | None = None,
    unavailable: Mapping[str, str] | None = None,
    tracer: trace.Tracer | None = None,
) -> list[BranchResult]:
    """Run every enabled branch concurrently; the result list follows `specs` order. With `tracer`, each
    branch runs in its own span (a child of the caller's), carrying its status and candidate count."""
    results: list[BranchResult] = []
    tasks: dict[str, asyncio.Task[BranchResult]] = {}
    async with asyncio.TaskGroup() as tg:
        for name, spec in specs.items():
            branch = branches.get(name)
            if branch is not None and spec.enabled:
                run = _run_one(branch, spec, request, deadline)
                tasks[name] = tg.create_task(run if tracer is None else _traced(tracer, name, run))
    for name, spec in specs.items():
        if name in tasks:
            res = tasks[name].result()
            if res.status in (BranchStatus.TIMEOUT, BranchStatus.ERROR) and not spec.fail_open:
                raise BranchFailed(f"recall branch {name!r} failed and is not fail-open: {res.detail}")
            results.append(res)
        else:
            reason = (unavailable or {}).get(name, "disabled in the collection's settings")
            results.append(BranchResult(name, BranchStatus.DISABLED, detail=reason))
    return results
