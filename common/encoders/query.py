"""A query's vector on the serving path: the LRU cache, else the encoder, batched with concurrent queries.

One object for what the ANN branch and a shard set's root both do before they search: look the text up
in the query-embedding cache, encode it on a miss — coalesced with other requests' misses into one model
call when batching is on (:mod:`common.encoders.batching`), else alone on the caller's blocking pool — and
remember the vector. A static query encoder (~0.05 ms a query) is cheaper than the cache's own lookup and
than any hand-off, so it is neither cached nor batched: callers run it inline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import numpy as np

from .base import TextEncoder
from .cache import QueryEmbeddingCache
from .shared import shared_batcher
from .static import StaticQueryEncoder

#: How a caller runs a blocking call off its event loop: ``await offload(fn, arg)``.
Offload = Callable[[Callable[[str], np.ndarray], str], Awaitable[np.ndarray]]


class QueryEmbedder:
    """Query text -> (dim,) float32 vector for one collection's serving path.

    Args:
        encoder: the query encoder.
        cache_size: query embeddings kept (0: no cache).
        max_batch: most queries in one model call (1: no batching; each miss is encoded alone on the
            caller's pool).
        batch_threads: threads running the batched calls (see :class:`EncodeBatcher`).
        observe: per batched call, its size and seconds (a metric).
        linger_s: under load, how long a batch waits for more queries (see :class:`EncodeBatcher`).
    """

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        cache_size: int,
        max_batch: int = 1,
        batch_threads: int = 1,
        linger_s: float = 0.0,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.encoder = encoder
        #: Cheap enough to run on the caller's thread, uncached (a static encoder).
        self.inline = isinstance(encoder, StaticQueryEncoder)
        self.cache = QueryEmbeddingCache(cache_size) if cache_size and not self.inline else None
        self.batcher = (
            shared_batcher(encoder, max_batch, batch_threads, observe, linger_s)
            if max_batch > 1 and not self.inline
            else None
        )

    def embed(self, text: str) -> np.ndarray:
        """On the caller's thread: cached, else encoded alone now (and remembered)."""
        if self.cache is not None:
            return self.cache.get_or_encode(self.encoder, text)
        return self._encode_one(text)

    async def aembed(self, text: str, offload: Offload) -> np.ndarray:
        """Awaitable: cached, else encoded — in a batch when batching is on, else alone via ``offload``.
        Cancelling the awaiting task before an encoder thread took the text withdraws it."""
        if self.inline:
            return self._encode_one(text)
        key = None
        if self.cache is not None:
            key, vec = self.cache.lookup(self.encoder.name, text)
            if vec is not None:
                return vec
            text = key[1]  # the cache encodes its key's form of the text: a vector depends on its key alone
        if self.batcher is not None:
            vec = await self.batcher.encode(text)
        else:
            vec = await offload(self._encode_one, text)
        if self.cache is not None and key is not None:
            vec = self.cache.remember(key, vec)
        return vec

    def _encode_one(self, text: str) -> np.ndarray:
        return self.encoder.encode([text])[0]
