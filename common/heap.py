"""Keep Python's cyclic garbage collector off what a server loads once.

A loaded generation is hundreds of thousands of long-lived Python objects (id → ordinal dicts, vocabularies,
settings, branch objects). The collector's oldest generation rescans all of them whenever enough new
objects survive, and a Search allocates hundreds (candidates, provenance): measured on `places` (34k
items), full collections took 0.19 ms of a 3.4 ms Search on average — 41 ms each, one every ~220
Searches, a tail-latency spike rather than a mean. `settle()` collects once and moves everything alive
into the permanent generation (`gc.freeze`), which the collector never scans; reference counting still
frees those objects when they become unreachable (20–25 ms on `places`, holding the GIL).

At start-up the server settles before it listens. At a swap it must not: every shard of a set swaps at
the same instant, and a collection then stalled them all at once (a root's every shard call missed its
deadline). `after_swap()` only unfreezes — cheap, and the swapped-out generation's cycles become
collectable, so nothing leaks — and settles again later, at a random moment (so replicas and shards do
not stall together) once the old generation is gone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
import weakref

log = logging.getLogger(__name__)

#: After a swap, settle again this many seconds later (uniform): the old generation is long released.
RESETTLE_AFTER_S = (30.0, 90.0)

#: The settle scheduled by the last swap, per event loop (a process may run several: tests do).
_pending: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.TimerHandle] = (
    weakref.WeakKeyDictionary()
)


def settle() -> float:
    """Collect, then freeze what is alive; returns the seconds it took (logged at DEBUG)."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - t0
    log.debug("heap settled: %d objects frozen in %.0f ms", gc.get_freeze_count(), took * 1000)
    return took


def after_swap(delay_s: tuple[float, float] = RESETTLE_AFTER_S) -> None:
    """Call on the event loop right after a generation swap: unfreeze now, settle later (see above). A
    later swap on the same loop replaces a settle still pending."""
    gc.unfreeze()
    loop = asyncio.get_running_loop()
    previous = _pending.get(loop)
    if previous is not None:
        previous.cancel()
    _pending[loop] = loop.call_later(random.uniform(*delay_s), lambda: loop.run_in_executor(None, settle))
