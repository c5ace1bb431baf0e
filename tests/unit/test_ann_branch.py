"""The ANN branch over a real (tiny) snapshot: backends, filters, and refusal of a mismatched encoder."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from common.settings import AnnSettings, CollectionSettings
from retriever.core.types import BranchResult, BranchStatus, Filters, SearchQuery, SearchResult
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from retriever.settings import load_settings


def _service(snapshot: Path, **ann: object) -> SearchService:
    settings = load_settings()
    reg = Registry()
    cs = CollectionSettings(ann=AnnSettings(**ann))  # type: ignore[arg-type]
    reg.put(Collection(snapshot, cs))
    return SearchService(settings, reg)


def _with_encoder(tiny_snapshot: Path, tmp_path: Path, **encoder: str) -> Path:
    """A copy of the snapshot whose manifest says its vectors came from ``encoder`` (name, fingerprint)."""
    snap = tmp_path / "s"
    if not snap.exists():
        shutil.copytree(tiny_snapshot, snap)
    man = snap / "manifest.json"
    raw = json.loads(man.read_text())
    raw["parts"]["vectors"]["encoder"].update(encoder)
    man.write_text(json.dumps(raw))
    return snap


def _ann_stats(svc: SearchService, text: str) -> tuple[SearchResult, BranchResult]:
    res = _search(svc, text)
    return res, next(b for b in res.branch_stats if b.branch == "ann")


def _search(svc: SearchService, text: str, **kw: object) -> SearchResult:
    return asyncio.run(svc.search(SearchQuery(collection="tiny", text=text, **kw)))  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["hnsw", "ivf"])
def test_both_backends_serve_and_agree(tiny_snapshot: Path, backend: str) -> None:
    svc = _service(tiny_snapshot, backend=backend)
    res = _search(svc, "Frisco bay area", top_k=7)
    ann = next(b for b in res.branch_stats if b.branch == "ann")
    assert ann.status is BranchStatus.OK and len(ann.candidates) == 7  # every item, ranked
    assert res.hits[0].id == "sf"
    scores = [c.score for c in ann.candidates]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)


def test_filters_apply_inside_ann(tiny_snapshot: Path) -> None:
    svc = _service(tiny_snapshot)
    res = _search(svc, "a big city", filters=Filters(categories=("CN",)), top_k=10)
    ann = next(b for b in res.branch_stats if b.branch == "ann")
    ords = {c.ordinal for c in ann.candidates}
    assert len(ords) == 2 and {h.id for h in res.hits} == {"sh", "bj"}


def test_query_cache_hits(tiny_snapshot: Path) -> None:
    svc = _service(tiny_snapshot, query_cache_size=10)
    coll = svc.registry.get("tiny")
    branch = coll.branches["ann"]
    for _ in range(3):
        _search(svc, "harbour city")
    stats = branch.query.cache.stats()  # type: ignore[attr-defined]
    assert stats.misses == 1 and stats.hits == 2


def test_mismatched_encoder_disables_ann_with_reason(tiny_snapshot: Path, tmp_path: Path) -> None:
    snap = _with_encoder(tiny_snapshot, tmp_path, fingerprint="minilm:onnx-sha256:" + "0" * 64)
    res, ann = _ann_stats(_service(snap), "paris")
    assert (
        ann.status is BranchStatus.DISABLED
        and "differs from the one that built the item vectors" in ann.detail
    )
    assert res.hits and not res.degraded  # text recall still answers


def test_catalog_supplied_embeddings(tmp_path: Path) -> None:
    """A catalog may carry its own vectors; queries are then encoded with the encoder it names."""
    from common.catalog import CatalogError, Item
    from common.encoders import get_encoder
    from indexer.build import BuildOptions, build_snapshot

    texts = {"a": "harbour city with a big port", "b": "mountain village", "c": "desert oasis town"}
    vecs = get_encoder("minilm").encode(list(texts.values()))
    items = [
        Item(id=k, text={"name": k}, embedding=tuple(float(x) for x in v))
        for k, v in zip(texts, vecs, strict=True)
    ]
    out = tmp_path / "s"
    m = build_snapshot(items, out, BuildOptions(collection="tiny", encoder="minilm", progress=False), {})
    assert m.parts["vectors"]["encoder"]["source"] == "catalog"
    svc = _service(out)
    res = _search(svc, "seaport")
    assert res.hits[0].id == "a" and res.hits[0].sources[0].branch == "ann"

    with pytest.raises(CatalogError, match="give all items one, or none"):
        build_snapshot(
            [*items, Item(id="d", text={"name": "d"})],
            tmp_path / "t",
            BuildOptions(collection="t", progress=False),
            {},
        )
    short = [Item(id="x", text={"name": "x"}, embedding=(1.0, 0.0))]
    with pytest.raises(CatalogError, match="2-d but encoder 'minilm' makes 384-d"):
        build_snapshot(short, tmp_path / "u", BuildOptions(collection="u", progress=False), {})


def test_int8_query_encoder_over_fp32_items(tiny_snapshot: Path) -> None:
    """ann.query_encoder = "int8": the fp32 snapshot's queries go through MiniLM's int8 twin, checked
    against the items' graph by the hash the twin's sidecar records; the answers stay those of fp32."""
    from common.encoders import get_encoder

    svc = _service(tiny_snapshot, query_encoder="int8")
    branch = svc.registry.get("tiny").branches["ann"]
    assert branch.encoder.name == "minilm-int8"  # type: ignore[attr-defined]
    model = _service(tiny_snapshot)
    for text in ("Frisco bay area", "a big city in China", "harbour city"):
        got = next(b for b in _search(svc, text, top_k=7).branch_stats if b.branch == "ann")
        want = next(b for b in _search(model, text, top_k=7).branch_stats if b.branch == "ann")
        assert got.status is BranchStatus.OK and len(got.candidates) == 7
        assert got.candidates[0].ordinal == want.candidates[0].ordinal
        diffs = [abs(a.score - b.score) for a, b in zip(got.candidates, want.candidates, strict=True)]
        assert max(diffs) < 0.05 and any(d > 0 for d in diffs)  # close, not the same model
    q8 = get_encoder("minilm-int8").encode(["harbour city"])
    fp = get_encoder("minilm").encode(["harbour city"])
    assert 0.98 < float((q8 * fp).sum()) < 1.0


def test_int8_query_encoder_refuses_items_it_was_not_made_from(tiny_snapshot: Path, tmp_path: Path) -> None:
    snap = _with_encoder(tiny_snapshot, tmp_path, fingerprint="minilm:onnx-sha256:" + "0" * 64)
    _, ann = _ann_stats(_service(snap, query_encoder="int8"), "paris")
    assert ann.status is BranchStatus.DISABLED and "was not made from the graph" in ann.detail
    _with_encoder(tiny_snapshot, tmp_path, name="use-multilingual")
    res, ann = _ann_stats(_service(snap, query_encoder="int8"), "paris")
    assert ann.status is BranchStatus.DISABLED and "needs items encoded by minilm" in ann.detail
    assert res.hits and not res.degraded
