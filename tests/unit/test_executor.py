"""The executor fails open: slow or broken branches give partial results, never a failed request.

The branches here are small test implementations of our own RecallBranch Protocol (not mocks of any
library): one sleeps past its deadline, one raises, one answers.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.settings import BranchSpec, CollectionSettings
from common.types import Candidate
from retriever.core.errors import BranchFailed
from retriever.core.types import BranchStatus, SearchQuery
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
