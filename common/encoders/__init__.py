"""Text encoders for dense (ANN) recall.

Importing this package is cheap: it exposes the contract, the registry and the query cache; the
onnxruntime- and USE-backed implementations are imported only when ``get_encoder`` asks for them.
"""

from .base import DEFAULT_ENCODER, ONNX_ENCODERS, TextEncoder, get_encoder, known_encoders, thread_options
from .cache import CacheStats, QueryEmbeddingCache, normalize_query

__all__ = [
    "DEFAULT_ENCODER",
    "ONNX_ENCODERS",
    "CacheStats",
    "QueryEmbeddingCache",
    "TextEncoder",
    "get_encoder",
    "known_encoders",
    "normalize_query",
    "thread_options",
]
