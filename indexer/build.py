"""The offline rebuild job: catalog → one snapshot directory (see common/snapshot.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tantivy
from tqdm import tqdm

from common import snapshot
from common.catalog import CatalogError, Event, Item, embed_text
from common.encoders import TextEncoder, get_encoder, thread_options
from common.index.forward import write_forward
from common.index.geo import build_geo
from common.index.ranker_part import write_ranker_part
from common.index.text import Analyzer, TextField, build_schema, create_index, item_document
from common.passages import PassageOptions, passage_texts
from indexer.behavior import BehaviorParams, build_behavior

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    collection: str
    text_fields: Sequence[TextField] | None = None  # None: every text field seen, English analyzer, boost 1
    text_weight_attr: str | None = None
    writer_heap_bytes: int = 256 * 1024 * 1024
    writer_threads: int = 2
    overwrite: bool = False
    progress: bool = True
    #: Text encoder for item vectors ("minilm", "minilm-int8", "use-multilingual"); None builds no vector part. When every
    #: item carries a catalog `embedding`, those are used and `encoder` names the model that made them
    #: (queries are encoded with it).
    encoder: str | None = "minilm"
    #: Text fields joined (". ") into the text that is embedded; None: every searchable text field.
    embed_fields: Sequence[str] | None = None
    #: Vector indexes to build; the collection's settings choose which one serves.
    vector_indexes: Sequence[str] = ("hnsw", "ivf")
    hnsw_params: dict[str, Any] | None = None
    ivf_params: dict[str, Any] | None = None
    encode_batch_size: int = 64
    #: onnxruntime threads for encoding items (0: all cores; a sharded build gives each process its share).
    encoder_threads: int = 0
    #: Item-to-item table parameters (used when events are given).
    behavior_params: BehaviorParams | None = None
    #: A trained ranker model (ONNX + its sidecar) to ship inside the snapshot (the `ranker` part).
    ranker_model: Path | None = None
    #: "static": also distil a static query encoder for this catalog from MiniLM (common.encoders.static)
    #: into the vectors part; a collection serves it with `ann.query_encoder = "static"`.
    query_encoder: Literal["static"] | None = None
    #: Query-sized pieces of the longer item texts encoded to distil it (at most; items whose own text
    #: is query-sized are used as they are, at no cost).
    distill_texts: int = 100_000
    #: Also encode the long items' sentence windows and build, beside each vector index, one over the items
    #: and their windows that scores an item by its best passage (`common.passages`); a collection
    #: serves it with `ann.passages = true` (the default when the snapshot has it).
    passages: PassageOptions | None = None


PASSAGES_DIR = "passages"


def _collect(items: Iterable[Item], progress: bool) -> list[Item]:
    out: list[Item] = []
    seen: set[str] = set()
    for item in tqdm(items, desc="read catalog", unit=" items", disable=not progress, mininterval=0.5):
        if item.id in seen:
            raise CatalogError(f"duplicate item id {item.id!r}")
        seen.add(item.id)
        out.append(item)
    if not out:
        raise CatalogError("the catalog has no items")
    return out


def _text_fields(items: Sequence[Item], declared: Sequence[TextField] | None) -> list[TextField]:
    seen = sorted({name for it in items for name in it.text})
    if declared is None:
        return [TextField(name, Analyzer.ENGLISH, 1.0) for name in seen]
    names = {f.name for f in declared}
    extra = [n for n in seen if n not in names]
    if extra:
        log.warning("text fields %s are not declared for this collection and are not searchable", extra)
    return list(declared)


def build_snapshot(
    items: Iterable[Item],
    out: Path,
    options: BuildOptions,
    source: dict[str, Any],
    events: Iterable[Event] | None = None,
) -> snapshot.Manifest:
    """Build and atomically publish a snapshot of `items` (and behaviour `events`) at `out`."""
    t0 = time.perf_counter()
    catalog = _collect(items, options.progress)
    fields = _text_fields(catalog, options.text_fields)
    attr_names = sorted({name for it in catalog for name in it.attrs})
    if options.text_weight_attr and options.text_weight_attr not in attr_names:
        raise CatalogError(f"text_weight_attr {options.text_weight_attr!r} is not an attribute of any item")

    with snapshot.staging_dir(out, overwrite=options.overwrite) as tmp:
        parts = write_item_parts(tmp, catalog, fields, attr_names, options)
        if events is not None:
            ord_of = {it.id: i for i, it in enumerate(catalog)}
            parts["behavior"] = build_behavior(
                events, ord_of, tmp / "behavior", params=options.behavior_params or BehaviorParams()
            )
        if options.ranker_model is not None:
            parts["ranker"] = write_ranker_part(options.ranker_model, tmp, options.collection)
        counts = {
            "items": len(catalog),
            "with_location": sum(1 for it in catalog if it.lat is not None),
            "with_embedding": sum(1 for it in catalog if it.embedding is not None),
            "categories": len({it.category for it in catalog if it.category is not None}),
        }
        manifest = snapshot.write_manifest(
            tmp,
            collection=options.collection,
            builder={"quarry": _version(), "build_seconds": f"{time.perf_counter() - t0:.1f}"},
            source=source,
            counts=counts,
            parts=parts,
        )
    log.info(
        "snapshot %s: %d items in %.1fs → %s",
        manifest.snapshot_version,
        len(catalog),
        time.perf_counter() - t0,
        out,
    )
    return manifest


def write_item_parts(
    tmp: Path,
    catalog: Sequence[Item],
    fields: Sequence[TextField],
    attr_names: Sequence[str],
    options: BuildOptions,
    *,
    extra_docs: Iterable[tantivy.Document] = (),
    text_extra: dict[str, Any] | None = None,
    vectors: tuple[np.ndarray, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The parts every snapshot of items has — text (tantivy), forward store, vectors, geo — written into
    `tmp`; ordinals are positions in `catalog`. `extra_docs` go into the text index after the items (a
    shard's phantom documents, see common.index.textstats) and `text_extra` into its manifest entry."""
    text_dir = tmp / "text"
    index = create_index(text_dir, build_schema(fields, attr_names))
    writer = index.writer(heap_size=options.writer_heap_bytes, num_threads=options.writer_threads)
    for ordinal, item in enumerate(
        tqdm(catalog, desc="text index", unit=" docs", disable=not options.progress, mininterval=0.5)
    ):
        writer.add_document(item_document(ordinal, item, fields))
    for doc in extra_docs:
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()
    del writer, index
    text_meta: dict[str, Any] = {
        "engine": f"tantivy {tantivy.__version__}" if hasattr(tantivy, "__version__") else "tantivy",
        "dir": "text",
        "fields": [f.to_json() for f in fields],
        "attrs": list(attr_names),
        "weight_by_attr": options.text_weight_attr,
        "bm25": {"k1": 1.2, "b": 0.75},
        **(text_extra or {}),
    }
    forward_meta = write_forward(catalog, tmp, attr_names, [f.name for f in fields])
    parts: dict[str, Any] = {"text": text_meta, "forward": forward_meta}
    if options.encoder is not None:
        parts["vectors"] = build_vectors(catalog, tmp / "vectors", options, [f.name for f in fields], vectors)
    located = [i for i, it in enumerate(catalog) if it.lat is not None]
    if located:
        lat = np.array([np.nan if it.lat is None else it.lat for it in catalog], dtype=np.float64)
        lon = np.array([np.nan if it.lon is None else it.lon for it in catalog], dtype=np.float64)
        parts["geo"] = build_geo(lat, lon, tmp)
    return parts


def build_vectors(
    catalog: Sequence[Item],
    directory: Path,
    options: BuildOptions,
    text_fields: Sequence[str],
    given: tuple[np.ndarray, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Embed the catalog (or take its embeddings, or `given` (vectors, encoder entry) already made) and
    build the configured vector indexes."""

    t0 = time.perf_counter()
    encoder: TextEncoder | None = None
    if given is not None:
        vectors, encoder_meta = given
    else:
        vectors, encoder_meta, encoder = embed_catalog(catalog, options, text_fields)
    encode_s = time.perf_counter() - t0
    part = write_vector_indexes(vectors, encoder_meta, directory, options, encode_s)
    if options.query_encoder == "static":
        if encoder is None or encoder_meta.get("source") != "encoded":
            raise ValueError(
                "a static query encoder is distilled from item vectors this build encodes itself "
                "(not catalog embeddings, not a shard set's)"
            )
        static = distill_query_encoder(catalog, vectors, encoder, encoder_meta, directory, options)
        part["query_encoders"] = {"static": static}
        part["files"] = sorted([*part["files"], *(f"vectors/{f}" for f in static["files"])])
    if options.passages is not None:
        if encoder is None or encoder_meta.get("source") != "encoded":
            raise ValueError(
                "passage vectors are encoded by the model that encodes the items in this build: "
                "not with catalog embeddings (build without passages)"
            )
        passages = write_passage_indexes(catalog, vectors, encoder, encoder_meta, directory, options)
        part["passages"] = passages
        part["files"] = sorted([*part["files"], *(f"vectors/{f}" for f in passages["files"])])
    return part


def write_passage_indexes(
    catalog: Sequence[Item],
    vectors: np.ndarray,
    encoder: TextEncoder,
    encoder_meta: dict[str, Any],
    directory: Path,
    options: BuildOptions,
) -> dict[str, Any]:
    """Encode the long items' sentence windows and build, for each configured vector index kind, one over
    the items' vectors and their windows (`common.index.vectors.passages`) under ``directory/passages``."""
    from common.index.vectors.passages import build_passage_index

    assert options.passages is not None
    t0 = time.perf_counter()
    texts, owner = passage_texts(catalog, encoder_meta["fields"], options.passages)
    if texts:
        windows = encoder.encode(texts, batch_size=options.encode_batch_size, progress=options.progress)
    else:
        windows = np.empty((0, vectors.shape[1]), dtype=np.float32)
    encode_s = time.perf_counter() - t0
    sub = directory / PASSAGES_DIR
    indexes: dict[str, Any] = {}
    for kind in options.vector_indexes:
        params = _index_params(options, kind)
        index = build_passage_index(kind, vectors, windows, owner, params, progress=options.progress)
        indexes[kind] = index.save(sub)
        del index
    files = sorted({f"{PASSAGES_DIR}/{f}" for m in indexes.values() for f in m["files"].values()})
    long_items = len(np.unique(owner))
    log.info(
        "passages: %d windows of %d long items (of %d) encoded in %.1fs; indexes %s",
        len(texts),
        long_items,
        len(catalog),
        encode_s,
        list(indexes),
    )
    return {
        "dir": PASSAGES_DIR,
        **options.passages.as_dict(),
        "windows": len(texts),
        "items_with_windows": long_items,
        "indexes": indexes,
        "files": files,
        "encode_seconds": round(encode_s, 1),
    }


def distill_query_encoder(
    catalog: Sequence[Item],
    vectors: np.ndarray,
    encoder: TextEncoder,
    encoder_meta: dict[str, Any],
    directory: Path,
    options: BuildOptions,
) -> dict[str, Any]:
    """Distil the static query encoder (common.encoders.static) on the catalog's own texts, with the item
    vectors as the teacher's answers for query-sized items and `encoder` — the one that just encoded the
    items — encoding pieces of the longer ones."""
    from common.encoders import static
    from common.encoders.minilm import MiniLMEncoder

    if not isinstance(encoder, MiniLMEncoder):
        raise ValueError(f"a static query encoder is distilled from MiniLM, not {encoder_meta['name']!r}")
    t0 = time.perf_counter()
    texts = [embed_text(it, encoder_meta["fields"]) for it in catalog]
    short, extra = static.training_texts(texts, encoder.token_lengths(texts), max_extra=options.distill_texts)
    extra_vectors = encoder.encode(extra, batch_size=options.encode_batch_size, progress=options.progress)
    encode_s = time.perf_counter() - t0
    table, report = static.distill(
        encoder.token_table(),
        encoder.tokenizer,
        [*(texts[i] for i in short), *extra],
        np.concatenate([vectors[short], extra_vectors]),
        items=vectors,
    )
    files = static.save(
        directory,
        table,
        {
            "teacher": encoder_meta["fingerprint"],
            "from_items": len(short),
            "encoded": len(extra),
            **report.as_dict(),
        },
    )
    log.info(
        "static query encoder: %d item texts + %d encoded pieces (%.1fs), held-out cosine to MiniLM %.3f",
        len(short),
        len(extra),
        encode_s,
        report.cosine_final,
    )
    return {
        "name": static.StaticQueryEncoder.name,
        "teacher": encoder_meta["fingerprint"],
        "table": static.TABLE_FILE,
        "meta": static.META_FILE,
        "files": files,
        "held_out_cosine": round(report.cosine_final, 4),
        "encode_seconds": round(encode_s, 1),
        "fit_seconds": round(report.seconds, 1),
    }


def embed_catalog(
    catalog: Sequence[Item], options: BuildOptions, text_fields: Sequence[str]
) -> tuple[np.ndarray, dict[str, Any], TextEncoder]:
    """Unit vectors of the catalog's items (their own embeddings, or encoded text), the encoder entry of
    the vectors part, and the encoder (queries' model; it encoded the items unless the catalog did)."""
    from common.encoders.fingerprint import fingerprint

    assert options.encoder is not None
    supplied = [it.embedding is not None for it in catalog]
    if any(supplied) and not all(supplied):
        raise CatalogError(
            f"{sum(supplied)} of {len(catalog)} items carry an embedding: give all items one, or none"
        )
    fields = list(options.embed_fields or text_fields)
    if all(supplied):
        vectors = np.asarray([it.embedding for it in catalog], dtype=np.float32)
        dims = {len(it.embedding or ()) for it in catalog}
        if len(dims) != 1:
            raise CatalogError(f"catalog embeddings have different lengths: {sorted(dims)}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise CatalogError("a catalog embedding is all zeros")
        vectors /= norms
        encoder_meta = {"name": options.encoder, "source": "catalog", "dim": int(vectors.shape[1])}
        encoder = get_encoder(options.encoder)
        if encoder.dim != vectors.shape[1]:
            raise CatalogError(
                f"catalog embeddings are {vectors.shape[1]}-d but encoder {options.encoder!r} makes {encoder.dim}-d query vectors"
            )
        encoder_meta["fingerprint"] = fingerprint(encoder)
    else:
        encoder = get_encoder(options.encoder, **thread_options(options.encoder, options.encoder_threads))
        texts = [embed_text(it, fields) for it in catalog]
        vectors = encoder.encode(texts, batch_size=options.encode_batch_size, progress=options.progress)
        encoder_meta = {
            "name": encoder.name,
            "source": "encoded",
            "dim": encoder.dim,
            "fingerprint": fingerprint(encoder),
            "fields": fields,
        }
    return vectors, encoder_meta, encoder


def write_vector_indexes(
    vectors: np.ndarray,
    encoder_meta: dict[str, Any],
    directory: Path,
    options: BuildOptions,
    encode_s: float,
) -> dict[str, Any]:
    from common.index.vectors import build_vector_index

    directory.mkdir(parents=True, exist_ok=True)
    indexes: dict[str, Any] = {}
    for kind in options.vector_indexes:
        t1 = time.perf_counter()
        index = build_vector_index(kind, vectors, _index_params(options, kind), progress=options.progress)  # type: ignore[arg-type]
        meta = index.save(directory)
        meta["build_seconds"] = round(time.perf_counter() - t1, 2)
        indexes[kind] = meta
        del index
    files = sorted({f"vectors/{f}" for m in indexes.values() for f in m["files"].values()})
    log.info(
        "vectors: %d × %d (%s) encoded in %.1fs; indexes %s",
        *vectors.shape,
        encoder_meta["name"],
        encode_s,
        list(indexes),
    )
    return {
        "dir": "vectors",
        "encoder": encoder_meta,
        "indexes": indexes,
        "files": files,
        "encode_seconds": round(encode_s, 1),
    }


def _index_params(options: BuildOptions, kind: str) -> dict[str, Any]:
    """The configured build parameters of one vector index kind (its own, or over passages)."""
    return dict((options.hnsw_params if kind == "hnsw" else options.ivf_params) or {})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quarry")
    except PackageNotFoundError:
        return "0+unknown"
