"""One encoder per (name, threads) per process, shared by every collection, generation and caller (ANN
recall encodes queries, real-time Upserts encode items): a MiniLM session is ~90 MB and stateless."""

from __future__ import annotations

import threading

from .base import TextEncoder, get_encoder, thread_options
from .fingerprint import fingerprint

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
