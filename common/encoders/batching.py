"""Coalesce concurrent queries' encodings into one model call (serving only; builds batch on their own).

Why: a transformer's cost per text falls steeply with the batch. all-MiniLM-L6-v2 on one thread of this
machine's CPU, GeoNames place names in random order (padding to the batch's longest): fp32 4.5 ms a text
alone, 3.1 in twos, 2.4 in fours, 2.2 in eights; int8 2.5 / 2.0 / 1.7 / 1.5 ms. A loaded server has
several queries waiting for the encoder at once; encoding them together is the cheapest CPU it can buy.

How: *opportunistic* batching. A caller puts its text on a queue and awaits a future. Each encoder
thread blocks for the next text, then takes whatever else is already queued (up to ``max_batch``) and
encodes them in one call. An idle server therefore encodes each query at once and alone, with no added
latency; a busy one forms batches from the queries that arrived while the previous batch ran, so
batching grows with the load that needs it. Under load — the previous call held several texts — the
thread also lingers up to ``linger_s`` for more before it encodes: a loaded server's queries arrive a
few milliseconds apart, and without the wait its batches stay at 2–3 where 8 cost a third less CPU a
text; the first query after an idle spell never waits (its previous call held one text). It trades
latency below saturation for throughput at it, so the service leaves it off unless
``ann.query_batch_linger_ms`` says otherwise (docs/benchmarks.md has the figures). A caller that gave up
before its text was taken (its branch's deadline passed) cancels its future and its text is not encoded:
under overload the encoder sheds work that nobody waits for.

Why not the ranker's ``ranker.session.MicroBatcher``: that one holds rows for a time window on one event
loop, worth it for a sub-millisecond inference call; a query encoding costs milliseconds, so waiting for
company would only add latency, and one encoder serves every collection (and a shard set's root) of the
process, from any thread.

Threads start on the first submission, in the process that serves (worker processes are spawned, never
forked, see retriever.api.server). onnxruntime releases the GIL while it runs, so an encoder thread's
batch overlaps the event loop's Python work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .base import TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Counters since the batcher was made: model calls, texts encoded, and texts dropped because their
    caller had given up (cancelled) before an encoder thread took them."""

    calls: int
    texts: int
    cancelled: int
    largest: int

    @property
    def mean_batch(self) -> float:
        return self.texts / self.calls if self.calls else 0.0


class EncodeBatcher:
    """Encodes single texts submitted from many threads or tasks, several at a time.

    Args:
        encoder: the model; must be thread-safe (every :class:`TextEncoder` is).
        max_batch: most texts in one model call (1: each text alone, still off the caller's thread).
        linger_s: under load (the thread's previous call held several texts), how long to wait for more
            texts before encoding a batch that is not full; 0 encodes what is queued at once, always.
        threads: encoder threads. One keeps batches largest (the most texts a CPU second); a second lets an
            idle server encode two simultaneous queries in parallel on two cores.
        observe: called after each model call with the batch size and its seconds (e.g. a metric).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        max_batch: int = 8,
        threads: int = 1,
        observe: Callable[[int, float], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.encoder = encoder
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.threads = threads
        self._observe = observe
        self._queue: queue.SimpleQueue[tuple[str, Future[np.ndarray]] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._calls = self._texts = self._cancelled = self._largest = 0
        self._closed = False
        #: The last call held several texts: queries are queueing behind the encoder (lingering pays).
        self._loaded = False

    def submit(self, text: str) -> Future[np.ndarray]:
        """A future of ``text``'s (dim,) float32 vector; cancel it to withdraw the text if not yet taken."""
        if self._closed:
            raise RuntimeError("the encode batcher is closed")
        if not self._workers:
            self._start()
        fut: Future[np.ndarray] = Future()
        self._queue.put((text, fut))
        return fut

    async def encode(self, text: str) -> np.ndarray:
        """``text``'s vector, awaited; cancelling the awaiting task withdraws the text if not yet taken."""
        return await asyncio.wrap_future(self.submit(text))

    def stats(self) -> BatchStats:
        with self._stats_lock:
            return BatchStats(self._calls, self._texts, self._cancelled, self._largest)

    def close(self) -> None:
        """Stop the threads once the queued texts are done; later submissions raise."""
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join()

    def _start(self) -> None:
        with self._start_lock:
            if self._workers:
                return
            for i in range(self.threads):
                t = threading.Thread(
                    target=self._run, name=f"encode-batch-{self.encoder.name}-{i}", daemon=True
                )
                t.start()
                self._workers.append(t)

    def _take(self) -> tuple[list[tuple[str, Future[np.ndarray]]], bool]:
        """The next batch (blocking for its first text) and whether a stop marker was met."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        linger = self._loaded and self.linger_s > 0 and self.max_batch > 1
        deadline = time.monotonic() + self.linger_s
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.monotonic() if linger else 0.0
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        self._loaded = len(batch) > 1  # one thread's view; with several, a benign race
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            live = [(text, fut) for text, fut in batch if fut.set_running_or_notify_cancel()]
            dropped = len(batch) - len(live)
            if dropped:  # counted before any waiter of this batch hears
                with self._stats_lock:
                    self._cancelled += dropped
            if live:
                self._encode(live)

    def _encode(self, batch: list[tuple[str, Future[np.ndarray]]]) -> None:
        # The same text twice in one batch (a hot query arriving in a burst) is encoded once.
        order: dict[str, int] = {}
        for text, _ in batch:
            order.setdefault(text, len(order))
        t0 = time.perf_counter()
        try:
            vecs = self.encoder.encode(list(order), batch_size=len(order))
        except Exception as exc:  # every waiter hears of the failure; the thread lives on
            log.warning("encoder %s failed on a batch of %d: %s", self.encoder.name, len(order), exc)
            for _, fut in batch:
                fut.set_exception(exc)
            return
        seconds = time.perf_counter() - t0
        # Counted before the waiters hear: whoever got an answer sees it in the figures.
        with self._stats_lock:
            self._calls += 1
            self._texts += len(order)
            self._largest = max(self._largest, len(order))
        if self._observe is not None:
            try:
                self._observe(len(order), seconds)
            except Exception:  # a broken hook must not leave the batch's waiters hanging
                log.exception("encode batch observer failed")
        for text, fut in batch:
            vec = vecs[order[text]]
            vec.setflags(write=False)
            fut.set_result(vec)
