"""Keep Python's cyclic garbage collector off what a server loads once.

A loaded generation is hundreds of thousands of long-lived Python objects (id → ordinal dicts, vocabularies,
settings, branch objects). The collector's oldest generation rescans all of them whenever enough new
objects survive, and a Search allocates hundreds (candidates, provenance): measured on `places` (34k
items), full collections took 0.19 ms of a 3.4 ms Search on average. `settle()` collects once and moves
everything alive into the permanent generation (`gc.freeze`), which the collector never scans; reference
counting still frees those objects when they become unreachable. Called after each load or swap of a
generation: it first unfreezes, so cycles of a generation that was swapped out are collected then.

Cost: one full collection per load or swap (20–25 ms on `places`, holding the GIL, so requests wait that
long once), where serving without it paid one every ~220 Searches (41 ms each on `places`: a tail
latency spike, not only a mean).
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def settle() -> float:
    """Collect, then freeze what is alive; returns the seconds it took (logged at DEBUG)."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - t0
    log.debug("heap settled: %d objects frozen in %.0f ms", gc.get_freeze_count(), took * 1000)
    return took
