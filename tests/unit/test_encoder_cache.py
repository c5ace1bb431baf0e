"""Query-embedding LRU cache and the encoder registry, with a fake encoder (no model needed)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from common.encoders import QueryEmbeddingCache, TextEncoder, get_encoder, known_encoders, normalize_query


class FakeEncoder:
    """Deterministic text -> unit vector; records what it was asked to encode."""

    name = "fake"
    dim = 8

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        with self._lock:
            self.calls.append(list(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            rng = np.random.default_rng(abs(hash(t)) % 2**32)
            v = rng.standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def test_fake_encoder_satisfies_protocol() -> None:
    assert isinstance(FakeEncoder(), TextEncoder)


def test_normalize_query() -> None:
    assert normalize_query("  hello \t  world\n") == "hello world"
    assert normalize_query("ＡＢＣ１２３") == "ABC123"  # NFKC folds full-width forms
    assert normalize_query("Café", lowercase=True) == "café"
    assert normalize_query("Café") == "Café"


def test_hit_miss_counters_and_normalised_keys() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache(maxsize=10)
    a = cache.get_or_encode(enc, "cheap  hotels ")
    b = cache.get_or_encode(enc, "cheap hotels")
    assert a is b
    assert enc.calls == [["cheap hotels"]]  # the normalised text is what gets encoded
    s = cache.stats()
    assert (s.hits, s.misses, s.size, s.maxsize) == (1, 1, 1, 10)
    assert s.hit_rate == pytest.approx(0.5)


def test_cached_vectors_are_read_only() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache()
    v = cache.get_or_encode(enc, "q")
    with pytest.raises(ValueError):
        v[0] = 1.0
    cache.put("fake", "r", np.ones(8, dtype=np.float32))
    got = cache.get("fake", "r")
    assert got is not None and not got.flags.writeable


def test_lru_eviction_order() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache(maxsize=2)
    cache.get_or_encode(enc, "a")
    cache.get_or_encode(enc, "b")
    cache.get_or_encode(enc, "a")  # a is now most recent
    cache.get_or_encode(enc, "c")  # evicts b
    assert len(cache) == 2
    assert cache.get("fake", "a") is not None
    assert cache.get("fake", "b") is None
    assert cache.get("fake", "c") is not None


def test_keys_are_per_encoder() -> None:
    cache = QueryEmbeddingCache()
    cache.put("minilm", "paris", np.zeros(4, dtype=np.float32))
    assert cache.get("use-multilingual", "paris") is None
    assert cache.get("minilm", "paris") is not None


def test_lowercase_option() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache(lowercase=True)
    assert cache.get_or_encode(enc, "Paris") is cache.get_or_encode(enc, "PARIS")
    assert enc.calls == [["paris"]]


def test_encode_many_batches_only_the_misses() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache()
    cache.get_or_encode(enc, "b")
    out = cache.encode_many(enc, ["a", "b", "c", "a ", "b"])
    assert enc.calls[-1] == ["a", "c"]  # one call; duplicates and hits not re-encoded
    assert out.shape == (5, 8)
    np.testing.assert_array_equal(out[0], out[3])
    np.testing.assert_array_equal(out[1], cache.get("fake", "b"))
    np.testing.assert_array_equal(out, FakeEncoder().encode(["a", "b", "c", "a", "b"]))
    assert cache.encode_many(enc, []).shape == (0, 8)


def test_clear_resets() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache()
    cache.get_or_encode(enc, "x")
    cache.clear()
    assert len(cache) == 0 and cache.stats().hits == cache.stats().misses == 0


def test_invalid_maxsize() -> None:
    with pytest.raises(ValueError):
        QueryEmbeddingCache(maxsize=0)


def test_thread_safety_under_contention() -> None:
    enc, cache = FakeEncoder(), QueryEmbeddingCache(maxsize=50)
    texts = [f"q{i % 80}" for i in range(4000)]
    expected = {t: FakeEncoder().encode([t])[0] for t in set(texts)}

    def work(t: str) -> bool:
        return bool(np.array_equal(cache.get_or_encode(enc, t), expected[t]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(work, texts))
    s = cache.stats()
    assert s.hits + s.misses == len(texts)
    assert s.size <= 50 and len(cache) == s.size


def test_registry_names_and_errors() -> None:
    assert known_encoders() == ("minilm", "minilm-int8", "use-multilingual")
    with pytest.raises(ValueError, match="minilm, minilm-int8, use-multilingual"):
        get_encoder("bert-large")
