"""The ranker part of a generation: the trained ONNX model and its sidecar (schema, version, collection),
copied into the generation so the model swaps together with the indexes it was trained against.

Layout: ``<generation>/ranker/model.onnx`` and ``model.onnx.json``; the manifest part records the model
version and the collection it was trained for. The files are covered by the manifest's checksums like
every other part; the retriever loads and checks the model (schema, collection) at load and refuses a
reload whose model cannot serve.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

DIR = "ranker"
MODEL = "model.onnx"


def sidecar_path(onnx_path: str | Path) -> Path:
    """Where a model's metadata lives: beside it, named after it (model.onnx → model.onnx.json)."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def write_ranker_part(model: Path, snapshot_dir: Path, collection: str) -> dict[str, Any]:
    """Copy `model` and its sidecar into the snapshot being built; returns the manifest part."""
    side = sidecar_path(model)
    if not model.is_file() or not side.is_file():
        raise ValueError(f"ranker model {model} needs its sidecar {side.name} beside it")
    meta = json.loads(side.read_text(encoding="utf-8"))
    trained_for = meta.get("collection")
    if trained_for is not None and trained_for != collection:
        raise ValueError(
            f"ranker model {model} was trained for collection {trained_for!r}, not {collection!r}"
        )
    out = snapshot_dir / DIR
    out.mkdir()
    shutil.copyfile(model, out / MODEL)
    shutil.copyfile(side, sidecar_path(out / MODEL))
    return {
        "dir": DIR,
        "model": MODEL,
        "model_version": meta.get("model_version", ""),
        "collection": trained_for,
    }


def model_path(snapshot_dir: Path, part: dict[str, Any]) -> Path:
    return snapshot_dir / part["dir"] / part["model"]
