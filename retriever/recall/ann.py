"""ANN (dense) recall: encode the query text with the snapshot's encoder, search the chosen vector index.

Filters are applied inside the index search (faiss IDSelector / hnswlib over-fetch, or exact search over
the allowed items when the filter is selective — see common/index/vectors/), so top-k stays correct under a
filter instead of being post-filtered away. Scores are cosine similarities.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
from pydantic import BaseModel

from common.encoders import QueryEmbeddingCache, TextEncoder, get_encoder
from common.encoders.fingerprint import fingerprint
from common.index.vectors import SearchParams, VectorIndex, load_vector_index
from common.settings import AnnSettings
from common.types import Candidate
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register

log = logging.getLogger(__name__)

# Encoders are large (90 MB session) and stateless: one per (name, threads) per process, shared by
# every collection and generation that uses it.
_encoders: dict[tuple[str, int], tuple[TextEncoder, str]] = {}
_encoders_lock = threading.Lock()


def shared_encoder(name: str, threads: int) -> tuple[TextEncoder, str]:
    key = (name, threads)
    with _encoders_lock:
        if key not in _encoders:
            enc = get_encoder(name, intra_op_threads=threads) if name == "minilm" else get_encoder(name)
            _encoders[key] = (enc, fingerprint(enc))
        return _encoders[key]


@register
class AnnBranch:
    name = "ann"
    options: ClassVar[type[BaseModel] | None] = AnnSettings

    def __init__(self, index: VectorIndex, encoder: TextEncoder, settings: AnnSettings) -> None:
        self.index = index
        self.encoder = encoder
        self.params = SearchParams(
            ef=settings.ef, nprobe=settings.nprobe, exact_threshold=settings.exact_threshold
        )
        self.cache = QueryEmbeddingCache(settings.query_cache_size) if settings.query_cache_size else None

    @classmethod
    def create(cls, generation: Generation, options: AnnSettings) -> Self:
        part = generation.manifest.parts.get("vectors")
        if part is None:
            raise BranchUnavailable("the snapshot has no vectors part (built without an encoder)")
        meta = part["indexes"].get(options.backend)
        if meta is None:
            raise BranchUnavailable(
                f"the snapshot has no {options.backend!r} index (has: {sorted(part['indexes'])})"
            )
        enc_meta = part["encoder"]
        encoder, fp = shared_encoder(enc_meta["name"], options.encoder_threads)
        if enc_meta.get("fingerprint") != fp:
            raise BranchUnavailable(
                f"query encoder {fp} differs from the one that built the item vectors ({enc_meta.get('fingerprint')}); "
                "rebuild the snapshot with this encoder"
            )
        index = load_vector_index(
            Path(generation.root) / part["dir"], meta, mmap=options.mmap, use_gpu=options.use_gpu
        )
        if index.count != len(generation.forward) or index.dim != encoder.dim:
            raise BranchUnavailable(
                f"vector index has {index.count}×{index.dim}, expected {len(generation.forward)}×{encoder.dim}"
            )
        log.info(
            "ann: %s index (%s) over %d items, encoder %s",
            index.kind,
            index.device,
            index.count,
            encoder.name,
        )
        return cls(index, encoder, options)

    def skip_reason(self, request: RecallRequest) -> str | None:
        return None if request.query.text.strip() else "no query text"

    def embed(self, text: str) -> np.ndarray:
        if self.cache is not None:
            return self.cache.get_or_encode(self.encoder, text)
        return self.encoder.encode([text])[0]

    def _recall(self, text: str, allowed: np.ndarray | None, quota: int) -> list[Candidate]:
        vec = self.embed(text)
        ords, scores = self.index.search(vec[None, :], quota, allowed=allowed, params=self.params)
        return [Candidate(o, s) for o, s in zip(ords[0].tolist(), scores[0].tolist(), strict=True) if o >= 0]

    async def recall(self, request: RecallRequest, quota: int) -> list[Candidate]:
        # One hop into the pool for encode + search: both are native and release the GIL.
        return await request.blocking(self._recall, request.query.text, request.allowed, quota)
