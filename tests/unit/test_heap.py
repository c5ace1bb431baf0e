"""common.heap: the loaded heap is frozen out of the collector, a swap unfreezes at once (no collection on
the swap's critical path) and settles again later, and a swapped-out generation's cycles are freed."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from common import heap


@pytest.fixture(autouse=True)
def _unfrozen_after() -> Iterator[None]:
    yield
    gc.unfreeze()  # leave the test process's collector as it was


class _Generation:
    """Stands in for a loaded generation: objects that reference each other (a cycle), as a collection
    and its branches do, so only the cyclic collector can free them."""

    def __init__(self) -> None:
        self.branches = {"b": self}
        self.payload = [object() for _ in range(1000)]


def test_settle_freezes_and_a_swap_unfreezes_then_resettles_and_frees_the_old_cycle() -> None:
    old = _Generation()
    gone = weakref.ref(old)
    heap.settle()
    assert gc.get_freeze_count() > 0
    del old  # the swap drops the last reference; the cycle keeps it alive until a collection
    gc.collect()
    assert gone() is not None, "frozen: the collector must not see it (what freezing is for)"

    async def swap() -> tuple[int, float]:
        t0 = time.perf_counter()
        heap.after_swap(delay_s=(0.05, 0.05))
        took = time.perf_counter() - t0
        unfrozen = gc.get_freeze_count()
        for _ in range(100):  # the settle runs later, in a thread
            await asyncio.sleep(0.02)
            if gc.get_freeze_count() > 0:
                break
        return unfrozen, took

    unfrozen, took = asyncio.run(swap())
    assert unfrozen == 0  # right after the swap everything is collectable again
    assert took < 0.05  # and nothing was collected on the swap's own path
    assert gc.get_freeze_count() > 0  # settled again later
    assert gone() is None  # the old generation's cycle was freed by that settle


def test_a_later_swap_replaces_a_pending_settle() -> None:
    async def two_swaps() -> int:
        loop = asyncio.get_running_loop()
        heap.after_swap(delay_s=(60.0, 60.0))
        first = heap._pending[loop]
        heap.after_swap(delay_s=(60.0, 60.0))
        assert first.cancelled() and heap._pending[loop] is not first
        heap._pending[loop].cancel()
        return gc.get_freeze_count()

    assert asyncio.run(two_swaps()) == 0
