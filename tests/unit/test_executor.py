"""The executor fails open: slow or broken branches give partial results, never a failed request.

The branches here are small test implementations of our own RecallBranch Protocol (not mocks of any
library): one sleeps past its deadline, one raises, one answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.settings import BranchSpec, CollectionSettings
from common.types import Candidate
from retriever.core.errors import BranchFailed
from retriever.core.types import BranchResult, BranchStatus, SearchQuery
from retriever.generations import Collection
from retriever.recall.base import RecallRequest
from retriever.recall.executor import run_branches


class Fixed:
    def __init__(
        self, name: str, cands: list[Candidate], delay: float = 0.0, error: Exception | None = None
    ) -> None:
        self.name, self.cands, self.delay, self.error = name, cands, delay, error

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None

    async def recall(self, request: RecallRequest, quota: int) -> list[Candidate]:
        if self.delay:
            await request.blocking(time.sleep, self.delay)  # a blocking native call stuck in the pool
        if self.error:
            raise self.error
        return self.cands[:quota]


@pytest.fixture
def request_(tiny_snapshot: Path) -> RecallRequest:
    return RecallRequest(
        SearchQuery(collection="tiny", text="x"),
        Collection(tiny_snapshot, CollectionSettings()),
        ThreadPoolExecutor(4),
    )


def test_timeout_and_error_fail_open(request_: RecallRequest) -> None:
    branches = {
        "good": Fixed("good", [Candidate(1, 1.0), Candidate(2, 0.5), Candidate(3, 0.1)]),
        "slow": Fixed("slow", [Candidate(4, 1.0)], delay=0.5),
        "boom": Fixed("boom", [], error=RuntimeError("index exploded")),
    }
    specs = {
        "good": BranchSpec(quota=2, timeout_ms=1000),
        "slow": BranchSpec(timeout_ms=30),
        "boom": BranchSpec(),
        "off": BranchSpec(enabled=False),
    }
    t0 = time.perf_counter()
    res = asyncio.run(run_branches(branches, specs, request_))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    by = {r.branch: r for r in res}
    assert by["good"].status is BranchStatus.OK and [c.ordinal for c in by["good"].candidates] == [
        1,
        2,
    ]  # quota
    assert by["slow"].status is BranchStatus.TIMEOUT and by["slow"].candidates == []
    assert by["boom"].status is BranchStatus.ERROR and "index exploded" in by["boom"].detail
    assert by["off"].status is BranchStatus.DISABLED
    assert elapsed < 0.45, "the slow branch must not hold the request past its own deadline"


def test_request_deadline_caps_branch_timeout(request_: RecallRequest) -> None:
    branches = {"slow": Fixed("slow", [Candidate(1, 1.0)], delay=0.3)}
    res = asyncio.run(
        run_branches(
            branches, {"slow": BranchSpec(timeout_ms=5000)}, request_, deadline=time.monotonic() + 0.05
        )
    )  # type: ignore[arg-type]
    assert res[0].status is BranchStatus.TIMEOUT


def test_fail_closed_branch_fails_the_request(request_: RecallRequest) -> None:
    branches = {"strict": Fixed("strict", [], error=ValueError("bad"))}
    with pytest.raises(BranchFailed, match="strict"):
        asyncio.run(run_branches(branches, {"strict": BranchSpec(fail_open=False)}, request_))  # type: ignore[arg-type]


def test_branches_run_concurrently(request_: RecallRequest) -> None:
    branches = {n: Fixed(n, [Candidate(i, 1.0)], delay=0.2) for i, n in enumerate("abc")}
    t0 = time.perf_counter()
    res = asyncio.run(run_branches(branches, {n: BranchSpec(timeout_ms=2000) for n in "abc"}, request_))  # type: ignore[arg-type]
    assert all(r.status is BranchStatus.OK for r in res)
    assert time.perf_counter() - t0 < 0.5  # 3 × 0.2 s sequentially would be 0.6 s


def test_an_unavailable_store_is_one_log_line_not_a_traceback(
    request_: RecallRequest, caplog: pytest.LogCaptureFixture
) -> None:
    from retriever.features.recent import StoreUnavailable

    branches = {
        "user": Fixed("user", [], error=StoreUnavailable("redis: TimeoutError: no answer within 70 ms")),
        "boom": Fixed("boom", [], error=RuntimeError("index exploded")),
    }
    with caplog.at_level("WARNING", logger="retriever.recall.executor"):
        res = asyncio.run(run_branches(branches, {"user": BranchSpec(), "boom": BranchSpec()}, request_))  # type: ignore[arg-type]
    by = {r.branch: r for r in res}
    assert by["user"].status is BranchStatus.ERROR and "no answer within 70 ms" in by["user"].detail
    logged = {r.getMessage().split(":")[0]: r for r in caplog.records}
    assert logged["branch user failed"].exc_info is None  # expected in operation: no traceback
    assert logged["branch boom failed"].exc_info is not None  # a bug keeps its traceback


def test_inline_recall_runs_on_the_loop_and_a_late_branch_is_a_timeout(request_: RecallRequest) -> None:
    """server.inline_recall: `blocking` calls run on the event loop's own thread (no hop), `offload`
    still hops; an inline branch cannot be interrupted, so one that answers after its budget is reported
    TIMEOUT with nothing taken from it — the same answer a thread-pool run gives."""
    request_.inline = True
    threads: dict[str, int] = {}

    class Where(Fixed):
        async def recall(self, request: RecallRequest, quota: int) -> list[Candidate]:
            threads[self.name] = await request.blocking(threading.get_ident)
            threads[self.name + "/offload"] = await request.offload(threading.get_ident)
            return await super().recall(request, quota)

    branches = {
        "fast": Where("fast", [Candidate(1, 1.0), Candidate(2, 0.5)]),
        "late": Where("late", [Candidate(3, 1.0)], delay=0.08),
    }
    specs = {"fast": BranchSpec(timeout_ms=1000), "late": BranchSpec(timeout_ms=30)}

    async def go() -> tuple[list[BranchResult], int]:
        return await run_branches(branches, specs, request_), threading.get_ident()  # type: ignore[arg-type]

    res, loop_thread = asyncio.run(go())
    by = {r.branch: r for r in res}
    assert threads["fast"] == threads["late"] == loop_thread
    assert threads["fast/offload"] != loop_thread
    assert by["fast"].status is BranchStatus.OK and [c.ordinal for c in by["fast"].candidates] == [1, 2]
    assert by["late"].status is BranchStatus.TIMEOUT and by["late"].candidates == []
    assert "answered after 30 ms" in by["late"].detail and by["late"].latency_ms >= 80
