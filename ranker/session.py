"""Serving the exported MLP: a verified onnxruntime session, plus optional request micro-batching.

Loading is strict because a wrong model scores every request wrongly and silently: the .onnx bytes must
match the sidecar's sha256, and the model's feature schema (in the sidecar, fingerprinted there and in the
graph metadata) must be served by the server's: every feature it reads computed, and defined the same way
(a model may read a subset of the server's features, in its own order; it is vectorised with its own). Either failure raises a `ModelLoadError` subclass before any
session exists, so a hot-reloading caller simply keeps serving its previous model.

`MicroBatcher` trades a few ms of queueing for fewer, larger inference calls. On CPU with one intra-op
thread a 200-row call costs tens of µs, so the thread hop and the window usually cost more than they
save -- hence off by default there (`window_ms=0` calls straight through). It pays off where each call
has a large fixed cost, e.g. a CUDA launch + host/device copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from ranker.metrics import RANK_BATCH_ROWS
from ranker.model import INPUT_NAME, OUTPUT_NAME, sidecar_path
from ranker.schema import FeatureSchema

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(RuntimeError):
    """The model files cannot be served; the caller should keep its previous model."""


class ModelMismatch(ModelLoadError):
    """The model was trained against a different feature schema than the one this server runs."""


class ModelIntegrityError(ModelLoadError):
    """The .onnx bytes do not match the sidecar's sha256 (truncated, corrupted or half-replaced)."""


def default_providers() -> list[str]:
    if CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


class OnnxRanker:
    """A loaded, verified ranking model. `score` is thread-safe (onnxruntime's `run` is)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        schema: FeatureSchema,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
    ) -> None:
        self.path = Path(path)
        side_file = sidecar_path(self.path)
        try:
            sidecar: dict[str, Any] = json.loads(side_file.read_text())
            data = self.path.read_bytes()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read model {self.path} / {side_file}: {exc}") from exc

        digest = hashlib.sha256(data).hexdigest()
        if digest != sidecar.get("onnx_sha256"):
            raise ModelIntegrityError(
                f"{self.path}: sha256 {digest} != sidecar's {sidecar.get('onnx_sha256')}; refusing to load"
            )
        model_schema = self._model_schema(sidecar, schema)
        expected = model_schema.fingerprint()
        meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        if meta.get("schema_fingerprint") != expected:
            raise ModelMismatch(
                f"{self.path}: graph metadata schema fingerprint {meta.get('schema_fingerprint')} "
                f"!= the sidecar's {expected}"
            )
        schema = model_schema

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        # One request = one call; parallelism comes from concurrent requests, not from inter-op threads.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        requested = list(providers) if providers is not None else default_providers()
        # Build from the verified bytes, not the path, so a file swapped after hashing is never served.
        self.session = ort.InferenceSession(data, sess_options=opts, providers=requested)
        self.providers: list[str] = list(self.session.get_providers())
        if requested and requested[0] not in self.providers:
            # A CPU-only onnxruntime build only warns when asked for CUDA; make that loud and visible.
            log.warning(
                "ranker %s: requested providers %s but running on %s", self.path, requested, self.providers
            )
        self.schema = schema
        self.dim = schema.dim
        self.model_version: str = str(sidecar.get("model_version"))
        self.schema_fingerprint = expected
        self.metrics: dict[str, Any] = dict(sidecar.get("metrics") or {})
        self._calls = 0
        self._lock = threading.Lock()
        log.info(
            "ranker loaded: %s version=%s schema=%s providers=%s threads=%d",
            self.path,
            self.model_version,
            expected[:12],
            self.providers,
            intra_op_threads,
        )

    def _model_schema(self, sidecar: dict[str, Any], server: FeatureSchema) -> FeatureSchema:
        """The features the model reads: its sidecar's schema, when the server computes each of them the
        same way; a sidecar without one (older exports) must name the server's schema exactly."""
        got = sidecar.get("schema_fingerprint")
        if "schema" not in sidecar:
            if got != server.fingerprint():
                raise ModelMismatch(
                    f"{self.path}: model was trained on feature schema {sidecar.get('schema_version')!r} "
                    f"(fingerprint {got}) but this server runs schema {server.version!r} "
                    f"(fingerprint {server.fingerprint()}); refusing to load"
                )
            return server
        try:
            mine = FeatureSchema.from_dict(sidecar["schema"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelMismatch(f"{self.path}: the sidecar's feature schema is malformed: {exc}") from exc
        if mine.fingerprint() != got:
            raise ModelMismatch(
                f"{self.path}: the sidecar's schema has fingerprint {mine.fingerprint()}, "
                f"but the sidecar names {got}; refusing to load"
            )
        try:
            mine.check_served_by(server)
        except ValueError as exc:
            raise ModelMismatch(
                f"{self.path}: model schema {mine.version!r} cannot be served by this server's schema "
                f"{server.version!r}: {exc}; refusing to load"
            ) from exc
        return mine

    @property
    def calls(self) -> int:
        """Inference calls made so far (what micro-batching reduces)."""
        return self._calls

    def score(self, X: np.ndarray) -> np.ndarray:
        """float32 (n, dim) -> float32 (n,) in one inference call."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (n, {self.dim}), got {X.shape}")
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        with self._lock:
            self._calls += 1
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: X})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


class SupportsScore(Protocol):
    def score(self, X: np.ndarray) -> np.ndarray: ...


class MicroBatcher:
    """Coalesce concurrent `score` calls arriving within `window_ms` into one inference call.

    The first request of a batch starts the window; the batch is flushed when the window ends or as soon
    as it holds `max_batch_rows` rows (a single larger request is run alone, never split). Inference runs
    in `executor` (the loop's default when None) so the event loop keeps accepting requests meanwhile.
    Results are split back per caller in order; an inference error is raised to every caller in the batch.
    """

    def __init__(
        self,
        ranker: SupportsScore,
        window_ms: float = 0.0,
        max_batch_rows: int = 4096,
        *,
        executor: Executor | None = None,
    ) -> None:
        if window_ms < 0:
            raise ValueError("window_ms must be >= 0")
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be >= 1")
        self.ranker = ranker
        self.window_s = window_ms / 1000.0
        self.max_batch_rows = max_batch_rows
        self.executor = executor
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._pending_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    async def score(self, X: np.ndarray) -> np.ndarray:
        if not self.enabled:
            # Inline: a sub-ms CPU call is cheaper than any thread hop.
            self.batches += 1
            RANK_BATCH_ROWS.observe(X.shape[0])
            return self.ranker.score(X)
        X = np.ascontiguousarray(X, dtype=np.float32)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        n = X.shape[0]
        if self._pending and self._pending_rows + n > self.max_batch_rows:
            self._flush()
        self._pending.append((X, fut))
        self._pending_rows += n
        if self._pending_rows >= self.max_batch_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if not batch:
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        # The loop holds tasks weakly; keep a reference until it finishes.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            X = batch[0][0] if len(batch) == 1 else np.concatenate([x for x, _ in batch], axis=0)
            RANK_BATCH_ROWS.observe(X.shape[0])
            scores = await loop.run_in_executor(self.executor, self.ranker.score, X)
            if scores.shape[0] != X.shape[0]:
                raise RuntimeError(f"ranker returned {scores.shape[0]} scores for {X.shape[0]} rows")
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for x, fut in batch:
            end = start + x.shape[0]
            if not fut.done():  # the caller may have been cancelled meanwhile
                fut.set_result(scores[start:end])
            start = end

    async def aclose(self) -> None:
        """Flush what is queued and wait for in-flight batches (for shutdown / model swap)."""
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
