"""One encoder per (name, threads) per process, shared by every collection, generation and caller (ANN
recall encodes queries, real-time Upserts encode items): a MiniLM session is ~90 MB and stateless. Likewise
one query-encode batcher per encoder, so every collection's queries batch together."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .base import TextEncoder, get_encoder, thread_options
from .batching import EncodeBatcher
from .fingerprint import fingerprint, source_fingerprint

_encoders: dict[tuple[str, int], tuple[TextEncoder, str]] = {}
_lock = threading.Lock()


def shared_encoder(name: str, threads: int) -> tuple[TextEncoder, str]:
    """The process's encoder `name` (onnxruntime intra-op `threads` for MiniLM) and its fingerprint."""
    key = (name, threads)
    with _lock:
        if key not in _encoders:
            enc = get_encoder(name, **thread_options(name, threads))
            _encoders[key] = (enc, fingerprint(enc))
        return _encoders[key]


_batchers: dict[tuple[int, int, int, float], tuple[TextEncoder, EncodeBatcher]] = {}
_batchers_lock = threading.Lock()


def shared_batcher(
    encoder: TextEncoder,
    max_batch: int,
    threads: int,
    observe: Callable[[int, float], None] | None = None,
    linger_s: float = 0.0,
) -> EncodeBatcher:
    """The process's batcher for ``encoder`` (one per encoder object and shape), shared by every
    collection and generation that encodes with it, so their queries batch together."""
    key = (id(encoder), max_batch, threads, linger_s)
    with _batchers_lock:
        entry = _batchers.get(key)
        if entry is None:
            # The entry keeps the encoder alive, so its id cannot be reused by another object.
            batcher = EncodeBatcher(
                encoder, max_batch=max_batch, threads=threads, observe=observe, linger_s=linger_s
            )
            entry = (encoder, batcher)
            _batchers[key] = entry
        return entry[1]


#: The int8 twin of each ONNX encoder (``ann.query_encoder = "int8"``): its query vectors lie within a mean
#: cosine of 0.996 of the fp32 graph's (min ~0.99 on SciFact titles and GeoNames names), so fp32 item vectors
#: answer them; docs/benchmarks.md has the SciFact figures.
INT8_TWINS = {"minilm": "minilm-int8", "minilm-int8": "minilm-int8"}


def int8_query_encoder(item_encoder: str, item_fingerprint: str | None, threads: int) -> TextEncoder:
    """The process's int8 encoder for queries against items encoded by ``item_encoder`` (whose vectors have
    ``item_fingerprint``): the int8 encoder itself, or the twin quantised from that very fp32 graph. The
    fp32 graph is not loaded for it.

    Raises:
        ValueError: ``item_encoder`` has no int8 twin, or the twin was not made from the items' graph
            (the message says which).
    """
    twin = INT8_TWINS.get(item_encoder)
    if twin is None:
        raise ValueError(
            f"ann.query_encoder 'int8' needs items encoded by {' or '.join(INT8_TWINS)}, not {item_encoder!r}"
        )
    enc, fp = shared_encoder(twin, threads)
    made_from = fp if item_encoder == twin else source_fingerprint(enc)
    if made_from != item_fingerprint:
        raise ValueError(
            f"int8 query encoder {fp} was not made from the graph that encoded the items "
            f"({item_fingerprint}); rebuild the snapshot with this encoder"
        )
    return enc
