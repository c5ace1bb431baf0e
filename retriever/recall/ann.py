"""ANN (dense) recall: encode the query text with the snapshot's encoder, search the chosen vector index.

Filters are applied inside the index search (faiss IDSelector / hnswlib over-fetch, or exact search over
the allowed items when the filter is selective — see common/index/vectors/), so top-k stays correct under a
filter instead of being post-filtered away. Scores are cosine similarities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel

from common.encoders import TextEncoder
from common.encoders.query import QueryEmbedder
from common.encoders.shared import int8_query_encoder, shared_encoder
from common.encoders.static import StaticQueryEncoder
from common.index.vectors import PassageIndex, SearchParams, VectorIndex, load_vector_index
from common.settings import AnnSettings
from common.types import Ranked
from retriever.core.metrics import encode_batch_observer
from retriever.live import merge
from retriever.recall.base import BranchUnavailable, Generation, RecallRequest
from retriever.recall.registry import register

log = logging.getLogger(__name__)


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
        self.query = QueryEmbedder(
            encoder,
            cache_size=settings.query_cache_size,
            max_batch=settings.query_batch,
            batch_threads=settings.query_batch_threads,
            observe=encode_batch_observer(encoder.name),
            linger_s=settings.query_batch_linger_ms / 1000,
        )

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
        encoder: TextEncoder
        if options.query_encoder == "int8":
            try:
                encoder = int8_query_encoder(
                    enc_meta["name"], enc_meta.get("fingerprint"), options.encoder_threads
                )
            except ValueError as exc:
                raise BranchUnavailable(str(exc)) from None
        else:
            encoder, fp = shared_encoder(enc_meta["name"], options.encoder_threads)
            if enc_meta.get("fingerprint") != fp:
                raise BranchUnavailable(
                    f"query encoder {fp} differs from the one that built the item vectors ({enc_meta.get('fingerprint')}); "
                    "rebuild the snapshot with this encoder"
                )
            if options.query_encoder == "static":
                encoder = _static_encoder(generation, part, encoder, fp)
        directory = Path(generation.root) / part["dir"]
        passages = part.get("passages") if options.passages else None
        if passages is not None and options.backend in passages["indexes"]:
            # Items scored by their best passage: the same contract over item ordinals.
            directory, meta = directory / passages["dir"], passages["indexes"][options.backend]
        index = load_vector_index(directory, meta, mmap=options.mmap, use_gpu=options.use_gpu)
        n = len(generation.base_forward)
        if index.count != n or index.dim != encoder.dim:
            raise BranchUnavailable(f"vector index has {index.count}×{index.dim}, expected {n}×{encoder.dim}")
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
        return self.query.embed(text)

    def _recall(self, request: RecallRequest, quota: int, vec: np.ndarray | None = None) -> Ranked:
        if vec is None:
            given = request.root.vector if request.root is not None else None
            vec = self.embed(request.query.text) if given is None else given  # a shard: the root encoded it
        live, allowed = request.live, request.allowed
        mask, k = live.plan(allowed, request.restricts, quota)
        ords, scores = self.index.search(vec[None, :], k, allowed=mask, params=self.params)
        found = ords[0] >= 0  # the engine pads a short answer with -1
        base = Ranked(ords[0][found], scores[0][found])
        delta = live.delta_vectors(vec, allowed, quota, passages=isinstance(self.index, PassageIndex))
        return merge(live.alive(base, quota), delta, quota)

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        vec = None
        query = self.query
        if request.root is None and not query.inline and (request.inline or query.batcher is not None):
            # A model's encoding (milliseconds, GIL released) leaves the event loop even when recall runs
            # inline: batched with other requests' queries, or alone in the pool; a cached vector is
            # taken here without a hop.
            vec = await query.aembed(request.query.text, request.offload)
        # Otherwise one call for encode + search: inline, or one hop into the pool for both.
        return await request.blocking(self._recall, request, quota, vec)


def _static_encoder(
    generation: Generation, part: dict[str, Any], model: TextEncoder, fp: str
) -> StaticQueryEncoder:
    """The generation's distilled query encoder (ann.query_encoder = "static"), checked against the model
    that encoded its items; it tokenizes with that model's tokenizer."""
    entry = part.get("query_encoders", {}).get("static")
    if entry is None:
        raise BranchUnavailable(
            "ann.query_encoder is 'static' but this snapshot has no static query encoder "
            "(build it with `quarry index build --query-encoder static`)"
        )
    if entry.get("teacher") != fp:
        raise BranchUnavailable(
            f"the static query encoder was distilled from {entry.get('teacher')}, not {fp}"
        )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise BranchUnavailable(f"encoder {model.name!r} has no tokenizer to drive a static query encoder")
    return StaticQueryEncoder.load(Path(generation.root) / part["dir"], tokenizer)
