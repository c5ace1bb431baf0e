"""The text-encoder contract used by ANN recall, and a by-name registry.

Why a Protocol rather than a base class: the implementations wrap unrelated engines (onnxruntime,
pure-numpy USE) and share no code; structural typing lets tests and callers supply any object with the
right shape (e.g. a fake encoder) without inheritance.

The registry imports implementations lazily so that ``import common.encoders`` never pulls in
onnxruntime or the USE weights for a process that uses only one encoder (or none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_ENCODER = "minilm"


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to unit-length float32 vectors, so that inner product == cosine similarity.

    Implementations must be safe to call from several threads at once: the service encodes queries on
    a thread pool.
    """

    #: Stable identifier; part of cache keys and index metadata, so it must change when the vectors do.
    name: str
    #: Embedding dimension (number of columns returned by ``encode``).
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Return a C-contiguous float32 array of shape ``(len(texts), dim)`` with L2-normalised rows,
        in the order of ``texts``. An empty input returns shape ``(0, dim)``."""
        ...


def _make_minilm(**opts: Any) -> TextEncoder:
    from .minilm import MiniLMEncoder

    return MiniLMEncoder(**opts)


def _make_minilm_int8(**opts: Any) -> TextEncoder:
    from .minilm import MiniLMEncoder

    return MiniLMEncoder(precision="int8", **opts)


def _make_use_multilingual(**opts: Any) -> TextEncoder:
    from .multilingual import MultilingualUSEEncoder

    return MultilingualUSEEncoder(**opts)


_REGISTRY: dict[str, Callable[..., TextEncoder]] = {
    "minilm": _make_minilm,
    "minilm-int8": _make_minilm_int8,
    "use-multilingual": _make_use_multilingual,
}
#: Encoders run by onnxruntime, whose constructors take ``intra_op_threads``.
ONNX_ENCODERS = frozenset({"minilm", "minilm-int8"})


def thread_options(name: str, threads: int) -> dict[str, int]:
    """Constructor options giving an onnxruntime encoder ``threads`` intra-op threads; none for others
    (the USE encoder keeps its own default)."""
    return {"intra_op_threads": threads} if name.strip().lower() in ONNX_ENCODERS else {}


def known_encoders() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_encoder(name: str = DEFAULT_ENCODER, **opts: Any) -> TextEncoder:
    """Construct the encoder registered as ``name``; ``opts`` go to its constructor.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names, because this is
            usually reached from a config value typed by a person).
    """
    key = name.strip().lower()
    try:
        factory = _REGISTRY[key]
    except KeyError:
        raise ValueError(f"unknown text encoder {name!r}; known encoders: {', '.join(_REGISTRY)}") from None
    return factory(**opts)
