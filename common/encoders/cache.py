"""Bounded, thread-safe LRU cache of query embeddings.

Why: query encoding is ~60% of a Search request's CPU (MiniLM p50 ≈ 3.7 ms of ≈ 6 ms), and real query
streams repeat heavily, so a hit removes most of a request's cost. Plain ``OrderedDict`` + ``Lock``
instead of ``functools.lru_cache``: the key must be normalised, counters must be readable for metrics,
and misses in a batch should be encoded together in one model call.

The lock is never held while encoding, so a slow encode does not block hits on other threads. Two
threads missing the same key at the same moment both encode it (identical result, last write wins):
cheaper than single-flight bookkeeping at a few ms per encode.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import TextEncoder

_WS = re.compile(r"\s+")


def normalize_query(text: str, *, lowercase: bool = False) -> str:
    """Canonical cache-key form of a query: NFKC, whitespace collapsed and stripped, optionally lowercased.

    The cache encodes this normalised text (not the caller's spelling), so a cached vector depends only
    on its key and does not vary with whichever variant happened to arrive first. Lowercasing is off by
    default: MiniLM is uncased (no effect on its vectors) but USE is cased.
    """
    text = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return text.lower() if lowercase else text


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    maxsize: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class QueryEmbeddingCache:
    """LRU map (encoder name, normalised text) -> read-only float32 vector.

    Args:
        maxsize: entries kept; a 384-d float32 vector is 1.5 KiB, so the default 10,000 is ~15 MiB.
        lowercase: fold case in keys (and in the text that gets encoded); see :func:`normalize_query`.
    """

    def __init__(self, maxsize: int = 10_000, *, lowercase: bool = False) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.lowercase = lowercase
        self._data: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def key(self, encoder_name: str, text: str) -> tuple[str, str]:
        return encoder_name, normalize_query(text, lowercase=self.lowercase)

    def get(self, encoder_name: str, text: str) -> np.ndarray | None:
        """Cached vector (read-only) or None; counts a hit or a miss."""
        return self.lookup(encoder_name, text)[1]

    def lookup(self, encoder_name: str, text: str) -> tuple[tuple[str, str], np.ndarray | None]:
        """``text``'s key and its cached vector (read-only) or None; counts a hit or a miss. On a miss,
        encode the key's text (``key[1]``) and :meth:`remember` it under that key."""
        k = self.key(encoder_name, text)
        return k, self._lookup(k)

    def _lookup(self, k: tuple[str, str]) -> np.ndarray | None:
        with self._lock:
            vec = self._data.get(k)
            if vec is None:
                self._misses += 1
                return None
            self._data.move_to_end(k)
            self._hits += 1
            return vec

    def put(self, encoder_name: str, text: str, vector: np.ndarray) -> None:
        self.remember(self.key(encoder_name, text), vector)

    def remember(self, k: tuple[str, str], vector: np.ndarray) -> np.ndarray:
        """Store ``vector`` under the key :meth:`lookup` gave; returns the cached (read-only) copy."""
        # Copy and freeze: callers share the cached array, and a caller mutating it in place would
        # silently corrupt every later hit.
        vec = np.array(vector, dtype=np.float32, copy=True).reshape(-1)
        vec.setflags(write=False)
        with self._lock:
            self._data[k] = vec
            self._data.move_to_end(k)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return vec

    def get_or_encode(self, encoder: TextEncoder, text: str) -> np.ndarray:
        """The (dim,) embedding of one query, encoding it on a miss. The result is read-only."""
        k, vec = self.lookup(encoder.name, text)
        if vec is None:
            vec = self.remember(k, encoder.encode([k[1]])[0])
        return vec

    def encode_many(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings; all misses are encoded together in one ``encoder.encode`` call."""
        keys = [self.key(encoder.name, t) for t in texts]
        out = np.empty((len(keys), encoder.dim), dtype=np.float32)
        missing: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            for i, k in enumerate(keys):
                vec = self._data.get(k)
                if vec is None:
                    missing.setdefault(k, []).append(i)
                else:
                    self._data.move_to_end(k)
                    out[i] = vec
            self._hits += len(keys) - sum(len(v) for v in missing.values())
            self._misses += sum(len(v) for v in missing.values())
        if missing:
            miss_keys = list(missing)
            vecs = encoder.encode([k[1] for k in miss_keys])
            for k, vec in zip(miss_keys, vecs, strict=True):
                out[missing[k]] = vec
                self.remember(k, vec)
        return out

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._data), self.maxsize)

    def clear(self) -> None:
        """Drop entries and reset counters (e.g. after swapping the encoder's model)."""
        with self._lock:
            self._data.clear()
            self._hits = self._misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
