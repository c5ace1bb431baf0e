"""Query-encode batching (common.encoders.batching) and the serving path's QueryEmbedder.

The batching logic is checked with a small deterministic encoder that records each call and can be held
inside a call, so the tests decide exactly which texts are queued while the encoder is busy; the real
MiniLM's batched vectors are checked in test_encoder_minilm.py.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from common.encoders.batching import EncodeBatcher
from common.encoders.cache import normalize_query
from common.encoders.query import QueryEmbedder

DIM = 8


def _vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class RecordingEncoder:
    """Each text's vector depends on the text alone; every call's texts are recorded; ``hold`` keeps the
    next call inside the encoder until ``release`` is set."""

    name = "recording"
    dim = DIM

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.release.wait(10)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot encode {self.fail_on!r}")
        return np.stack([_vector(t) for t in texts]) if texts else np.empty((0, DIM), np.float32)


def _busy(batcher: EncodeBatcher, enc: RecordingEncoder, first: str = "first") -> object:
    """Submit ``first`` and wait until the encoder thread is inside its call (held)."""
    enc.hold()
    fut = batcher.submit(first)
    assert enc.entered.wait(10)
    return fut


def test_an_idle_batcher_encodes_each_text_at_once_and_alone() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=16)
    for text in ("berlin", "paris", "tokyo"):
        np.testing.assert_array_equal(batcher.submit(text).result(10), _vector(text))
    assert enc.calls == [["berlin"], ["paris"], ["tokyo"]]
    stats = batcher.stats()
    assert (stats.calls, stats.texts, stats.largest, stats.cancelled) == (3, 3, 1, 0)
    batcher.close()


def test_texts_queued_while_the_encoder_is_busy_go_in_one_call_up_to_max_batch() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=3)
    first = _busy(batcher, enc)
    waiting = {t: batcher.submit(t) for t in ("a", "b", "c", "d", "e")}
    enc.release.set()
    for text, fut in waiting.items():
        np.testing.assert_array_equal(fut.result(10), _vector(text))
    np.testing.assert_array_equal(first.result(10), _vector("first"))  # type: ignore[attr-defined]
    assert enc.calls == [["first"], ["a", "b", "c"], ["d", "e"]]
    stats = batcher.stats()
    assert (stats.calls, stats.texts, stats.largest) == (3, 6, 3)
    assert stats.mean_batch == 2.0
    batcher.close()


def test_the_same_text_twice_in_a_batch_is_encoded_once_and_answers_both() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=8)
    _busy(batcher, enc)
    futs = [batcher.submit(t) for t in ("rome", "oslo", "rome")]
    enc.release.set()
    vecs = [f.result(10) for f in futs]
    assert enc.calls[1] == ["rome", "oslo"]
    np.testing.assert_array_equal(vecs[0], vecs[2])
    assert not vecs[0].flags.writeable  # shared between callers: read-only
    batcher.close()


def test_a_text_withdrawn_before_it_was_taken_is_not_encoded() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=8)
    _busy(batcher, enc)
    kept, withdrawn = batcher.submit("kept"), batcher.submit("withdrawn")
    assert withdrawn.cancel()
    enc.release.set()
    np.testing.assert_array_equal(kept.result(10), _vector("kept"))
    assert enc.calls == [["first"], ["kept"]]
    assert batcher.stats().cancelled == 1
    batcher.close()


def test_a_failing_call_fails_every_text_of_its_batch_and_the_batcher_lives_on() -> None:
    enc = RecordingEncoder(fail_on="bad")
    batcher = EncodeBatcher(enc, max_batch=8)
    _busy(batcher, enc)
    futs = [batcher.submit(t) for t in ("good", "bad")]
    enc.release.set()
    for fut in futs:
        with pytest.raises(RuntimeError, match="cannot encode 'bad'"):
            fut.result(10)
    np.testing.assert_array_equal(batcher.submit("after").result(10), _vector("after"))
    batcher.close()


def test_close_finishes_queued_texts_then_refuses_more() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=8, threads=2)
    futs = [batcher.submit(t) for t in ("x", "y", "z")]
    batcher.close()
    assert all(f.done() for f in futs)
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("late")


def test_under_load_a_batch_lingers_for_more_texts_until_it_is_full() -> None:
    """Once a call held several texts (queries queue behind the encoder), the next batch waits up to
    linger_s for company: a text submitted a moment after the first joins its call, and a full batch goes
    at once (this test would take the whole 5 s linger otherwise)."""
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=2, linger_s=5.0)
    first = _busy(batcher, enc)
    queued = [batcher.submit(t) for t in ("a", "b")]
    enc.release.set()
    for fut in [first, *queued]:
        fut.result(10)  # type: ignore[attr-defined]
    assert enc.calls == [["first"], ["a", "b"]]  # a call of two: the encoder is loaded
    c = batcher.submit("c")
    assert not c.done()
    threading.Event().wait(0.2)  # "c" was taken alone; without a linger it would be encoded by now
    d = batcher.submit("d")
    np.testing.assert_array_equal(c.result(2.5), _vector("c"))
    np.testing.assert_array_equal(d.result(2.5), _vector("d"))
    assert enc.calls[2] == ["c", "d"]
    batcher.close()


def test_an_idle_batcher_never_lingers() -> None:
    """The first text after an idle spell (the previous call held one text, or none yet) is encoded at
    once, however long the linger: it answers long before the 5 s a linger would take."""
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=8, linger_s=5.0)
    for text in ("berlin", "paris"):
        np.testing.assert_array_equal(batcher.submit(text).result(2.5), _vector(text))
    assert enc.calls == [["berlin"], ["paris"]]
    batcher.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"threads": 0}, "threads"),
        ({"linger_s": -0.001}, "linger_s"),
    ],
)
def test_bad_shapes_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncodeBatcher(RecordingEncoder(), **kwargs)


async def test_many_concurrent_tasks_each_get_their_own_texts_vector() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=4, threads=2)
    texts = [f"city {i}" for i in range(40)]
    vecs = await asyncio.gather(*(batcher.encode(t) for t in texts))
    for text, vec in zip(texts, vecs, strict=True):
        np.testing.assert_array_equal(vec, _vector(text))
    assert sum(len(c) for c in enc.calls) == 40
    assert max(len(c) for c in enc.calls) <= 4
    batcher.close()


async def test_a_task_cancelled_by_its_deadline_withdraws_its_text() -> None:
    enc = RecordingEncoder()
    batcher = EncodeBatcher(enc, max_batch=8)
    await asyncio.to_thread(_busy, batcher, enc)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await batcher.encode("too late")
    await asyncio.sleep(0.01)  # the loop passes the cancellation on to the batcher's future
    enc.release.set()
    await batcher.encode("next")
    assert ["too late"] not in enc.calls and all("too late" not in c for c in enc.calls)
    assert batcher.stats().cancelled == 1
    batcher.close()


async def _no_offload(fn: object, text: str) -> np.ndarray:
    raise AssertionError("batching is on: the pool must not be used")


async def test_query_embedder_batches_misses_and_caches_them_under_the_normalised_text() -> None:
    enc = RecordingEncoder()
    observed: list[tuple[int, float]] = []
    q = QueryEmbedder(enc, cache_size=100, max_batch=8, observe=lambda n, s: observed.append((n, s)))
    assert q.batcher is not None and q.cache is not None
    vec = await q.aembed("  New   York ", _no_offload)
    np.testing.assert_array_equal(vec, _vector(normalize_query("  New   York ")))
    assert enc.calls == [["New York"]]  # the cache's key form is what gets encoded
    again = await q.aembed("New York", _no_offload)  # a hit: no encoder call
    np.testing.assert_array_equal(again, vec)
    assert len(enc.calls) == 1
    assert q.cache.stats().hits == 1
    assert len(observed) == 1 and observed[0][0] == 1 and observed[0][1] >= 0


async def test_query_embedder_without_batching_encodes_a_miss_alone_through_the_callers_pool() -> None:
    enc = RecordingEncoder()
    q = QueryEmbedder(enc, cache_size=0, max_batch=1)
    assert q.batcher is None and q.cache is None
    used: list[str] = []

    async def offload(fn, text):  # type: ignore[no-untyped-def]
        used.append(text)
        return await asyncio.to_thread(fn, text)

    vec = await q.aembed("lima", offload)
    np.testing.assert_array_equal(vec, _vector("lima"))
    assert used == ["lima"]
    np.testing.assert_array_equal(q.embed("lima"), _vector("lima"))


def test_batchers_are_shared_per_encoder_and_shape() -> None:
    enc = RecordingEncoder()
    a = QueryEmbedder(enc, cache_size=10, max_batch=8)
    b = QueryEmbedder(enc, cache_size=10, max_batch=8)
    c = QueryEmbedder(enc, cache_size=10, max_batch=4)
    other = QueryEmbedder(RecordingEncoder(), cache_size=10, max_batch=8)
    lingering = QueryEmbedder(enc, cache_size=10, max_batch=8, linger_s=0.004)
    assert a.batcher is b.batcher
    assert c.batcher is not a.batcher
    assert other.batcher is not a.batcher
    assert lingering.batcher is not None and lingering.batcher is not a.batcher
    assert (lingering.batcher.linger_s, a.batcher is not None and a.batcher.linger_s) == (0.004, 0.0)
