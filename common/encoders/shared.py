"""One encoder per (name, threads) per process, shared by every collection, generation and caller (ANN
recall encodes queries, real-time Upserts encode items): a MiniLM session is ~90 MB and stateless."""

from __future__ import annotations

import threading

from .base import TextEncoder, get_encoder
from .fingerprint import fingerprint

_encoders: dict[tuple[str, int], tuple[TextEncoder, str]] = {}
_lock = threading.Lock()


def shared_encoder(name: str, threads: int) -> tuple[TextEncoder, str]:
    """The process's encoder `name` (onnxruntime intra-op `threads` for MiniLM) and its fingerprint."""
    key = (name, threads)
    with _lock:
        if key not in _encoders:
            enc = get_encoder(name, intra_op_threads=threads) if name == "minilm" else get_encoder(name)
            _encoders[key] = (enc, fingerprint(enc))
        return _encoders[key]
