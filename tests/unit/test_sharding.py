"""Shard sets without a server: the partitioning, global BM25 statistics (against tantivy itself), the
canonical order, tag ranks and behavior tables split by neighbour, and the root's merge of shard lists."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tantivy

from common.catalog import Event, Item
from common.index.behavior import BehaviorIndex
from common.index.text import Analyzer, TextField, build_schema, create_index, item_document
from common.index.textstats import DfTable, collect, idf_correction, phantom_documents, phantom_plan, write_df
from common.ordering import RELATIVE_TIE, best_first, best_first_arrays, canonical, cut_is_settled
from common.profile import TagArrays, TagTable
from common.sharding import ShardPart, shard_of, verify_shard_set
from common.snapshot import SnapshotError, read_manifest
from common.types import Candidate, Ranked, SeedWeights
from common.v1 import search_pb2 as pb
from common.v1 import shard_pb2 as spb
from indexer.build import BuildOptions, build_snapshot
from indexer.sharded import build_sharded, partition
from ranker.schema import AFFINITY_MEMORIES
from retriever.cluster.root import _branch_result, _ShardAnswer, merge_lists
from retriever.cluster.shard import AFFINITY_SEEDS, affinity_seed_lists, affinity_seeds_from
from retriever.core.errors import InvalidArgument

FIELDS = [TextField("name", Analyzer.NAME, 2.0), TextField("body", Analyzer.ENGLISH, 1.0)]
WORDS = [
    "harbour",
    "castle",
    "river",
    "bridge",
    "market",
    "tower",
    "garden",
    "station",
    "museum",
    "cathedral",
]


def _catalog(n: int = 400, seed: int = 0) -> list[Item]:
    """SYNTHETIC items: names and bodies drawn from a small vocabulary, so terms repeat across shards."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        name = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        body = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 30))))
        items.append(
            Item(
                id=f"it{i}",
                text={"name": name, "body": body} if body else {"name": name},
                category=str(rng.choice(["a", "b", "c"])),
                tags=tuple(rng.choice(["x", "y", "z", "w"], size=int(rng.integers(0, 3)), replace=False)),
                lat=float(rng.uniform(-60, 60)),
                lon=float(rng.uniform(-170, 170)),
                attrs={"year": float(rng.integers(1950, 2020))},
            )
        )
    return items


def test_shard_of_is_stable_and_spreads_ids() -> None:
    # Fixed values: the scheme is part of the snapshot contract (a root routes Upserts by it).
    assert [shard_of(f"id-{i}", 4) for i in range(8)] == [shard_of(f"id-{i}", 4) for i in range(8)]
    assert (
        shard_of("1796236", 4)
        == int.from_bytes(__import__("hashlib").blake2b(b"1796236", digest_size=8).digest(), "big") % 4
    )
    counts = Counter(shard_of(f"item-{i}", 8) for i in range(8000))
    assert set(counts) == set(range(8)) and max(counts.values()) < 1.15 * 1000
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_partition_keeps_catalog_order() -> None:
    items = _catalog(100)
    groups = partition(items, 3)
    assert sorted(np.concatenate(groups).tolist()) == list(range(100))
    for s, g in enumerate(groups):
        assert list(g) == sorted(g) and all(shard_of(items[i].id, 3) == s for i in g)


def test_local_of_maps_global_ordinals() -> None:
    part = ShardPart(1, 3, "blake2b64-mod", "set", 10, np.array([1, 4, 7], dtype=np.int64))
    assert part.local_of(np.array([4, 5, 7, 1, 0, 9])).tolist() == [1, -1, 2, 0, -1, -1]


def _index(
    items: list[Item], ords: list[int], tmp: Path, extra: list[tantivy.Document] | None = None
) -> tantivy.Index:
    idx = create_index(tmp, build_schema(FIELDS, []))
    w = idx.writer(heap_size=20_000_000, num_threads=1)
    for o, it in zip(ords, items, strict=True):
        w.add_document(item_document(o, it, FIELDS))
    for d in extra or []:
        w.add_document(d)
    w.commit()
    w.wait_merging_threads()
    idx.reload()
    return idx


def _scores(idx: tantivy.Index, term_boosts: list[tuple[str, str, float]]) -> dict[int, float]:
    s = idx.searcher()
    q = tantivy.Query.boolean_query(
        [
            (tantivy.Occur.Should, tantivy.Query.boost_query(tantivy.Query.term_query(idx.schema, f, t), b))
            for f, t, b in term_boosts
            if b > 0
        ]
    )
    hits = s.search(q, 1000).hits
    ords = s.fast_field_values("_ord", [a for _, a in hits])
    return {int(o): float(sc) for (sc, _), o in zip(hits, ords, strict=True)}


def test_phantom_documents_and_idf_rescaling_give_one_nodes_bm25(tmp_path: Path) -> None:
    """The oracle is tantivy on the whole catalog: every shard's score for every document equals it."""
    items = _catalog(300)
    stats = collect(items, FIELDS)
    whole = _index(items, list(range(len(items))), tmp_path / "whole")
    table = DfTable.load(tmp_path / write_df(stats, tmp_path))
    assert table.df("name", "castle") == stats.df["name"]["castle"] > 0 and table.df("name", "nope") == 0
    queries = [["castle", "harbour"], ["museum"], ["tower", "garden", "river"]]
    for s, gords in enumerate(partition(items, 3)):
        own = [items[g] for g in gords]
        local = collect(own, FIELDS)
        n_ph, tokens = phantom_plan(stats, local.docs, local.tokens)
        shard = _index(own, gords.tolist(), tmp_path / f"s{s}", list(phantom_documents(n_ph, tokens, FIELDS)))
        searcher = shard.searcher()
        assert searcher.num_docs == local.docs + n_ph
        for terms in queries:
            want = _scores(whole, [(f.name, t, f.boost) for f in FIELDS for t in terms])
            got = _scores(
                shard,
                [
                    (
                        f.name,
                        t,
                        f.boost * idf_correction(table.df(f.name, t), stats.docs, f.name, t, searcher),
                    )
                    for f in FIELDS
                    for t in terms
                ],
            )
            assert got, terms
            for o, score in got.items():
                assert math.isclose(score, want[o], rel_tol=2e-6), (s, terms, o, score, want[o])


def test_phantom_plan_is_exact_and_never_short() -> None:
    from common.index.textstats import TextStats

    stats = TextStats(docs=1000, tokens={"a": 5123, "b": 77, "c": 0})
    for docs, tokens in ((250, {"a": 2000, "b": 10, "c": 0}), (10, {"a": 1, "b": 70, "c": 0})):
        p, extra = phantom_plan(stats, docs, tokens)
        for f, t in stats.tokens.items():
            assert extra[f] >= 0
            # (shard + phantom tokens) / (shard + phantom docs) is the global average exactly
            assert (tokens[f] + extra[f]) * stats.docs == t * (docs + p)


def test_best_first_orders_near_ties_by_ordinal() -> None:
    ords = np.array([9, 3, 5, 1, 7])
    scores = np.array([1.0, 1.0 + RELATIVE_TIE / 10, 0.5, 1.0 - RELATIVE_TIE / 10, 2.0])
    assert best_first(ords, scores, 5) == [(7, 2.0), (1, scores[3]), (3, scores[1]), (9, 1.0), (5, 0.5)]
    assert [o for o, _ in best_first(ords, scores, 2)] == [7, 1]
    # clear gaps keep score order whatever the ordinals
    assert [o for o, _ in best_first(np.array([1, 2, 3]), np.array([0.1, 0.3, 0.2]), 3)] == [2, 3, 1]
    same = [Candidate(4, 3.0), Candidate(2, 1.0)]
    assert canonical(same) is same
    assert [c.ordinal for c in canonical([Candidate(4, 1.0), Candidate(2, 1.0)])] == [2, 4]


@pytest.mark.parametrize("seed", range(40))
def test_canonical_equals_best_first_on_any_list(seed: int) -> None:
    """canonical's shortcuts (clear gaps; near ties already by ordinal) agree with best_first on lists
    with exact ties, near ties, rising scores and repeated ordinals, and return the list itself only when
    best_first would not change it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    base = np.sort(rng.choice([1.0, 2.0, 3.0, 0.5], n) if seed % 2 else rng.random(n))[::-1]
    scores = base * (1 + rng.choice([0.0, RELATIVE_TIE / 4, -RELATIVE_TIE / 4], n))
    if seed % 5 == 0:
        scores = rng.permutation(scores)  # not even best first
    ords = rng.integers(0, 12 if seed % 3 else 1000, n)
    cands = [Candidate(int(o), float(v)) for o, v in zip(ords, scores, strict=True)]
    want = best_first(ords, scores, n)
    got = canonical(cands)
    assert [(c.ordinal, c.score) for c in got] == want
    assert (got is cands) == ([(c.ordinal, c.score) for c in cands] == want)
    # The same list as arrays (what the serving branches return): the same order, still arrays, and the
    # very object when nothing changes.
    arrays = Ranked.of(cands)
    got_arrays = canonical(arrays)
    assert isinstance(got_arrays, Ranked) and list(got_arrays) == want
    assert (got_arrays is arrays) == (got is cands)
    for k in (0, 1, n // 2, n, n + 3):
        o, v = best_first_arrays(ords, scores, k)
        assert o.dtype == np.int64 and v.dtype == np.float64
        assert list(zip(o.tolist(), v.tolist(), strict=True)) == want[:k]


def test_cut_is_settled_only_when_the_tie_at_the_cut_ends() -> None:
    assert cut_is_settled(np.array([5.0, 4.0, 3.0]), 3)  # no more hits than asked
    assert cut_is_settled(np.array([5.0, 4.0, 4.0, 3.0]), 2)  # the tie at the cut ends inside
    assert not cut_is_settled(np.array([5.0, 4.0, 4.0, 4.0]), 2)  # it may go on past what was fetched
    near = 4.0 * (1 - RELATIVE_TIE / 2)
    assert not cut_is_settled(np.array([5.0, 4.0, near, near]), 2)


def test_inverted_recall_cuts_large_ties_by_ordinal(tmp_path: Path) -> None:
    """Hundreds of documents with one identical score: the branch's top-k are the lowest ordinals,
    whatever order tantivy's segments hold them in (four writer threads)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from common.settings import QuarrySettings
    from retriever.core.types import SearchQuery
    from retriever.generations import Collection
    from retriever.recall.base import RecallRequest, analyze_query

    items = [Item(id=f"t{i}", text={"name": "harbour"}) for i in range(600)]
    opts = BuildOptions(collection="ties", text_fields=FIELDS, encoder=None, progress=False, writer_threads=4)
    build_snapshot(items, tmp_path / "ties", opts, {"dataset": "synthetic"})
    coll = Collection(tmp_path / "ties", QuarrySettings().for_collection("ties"))
    q = SearchQuery(collection="ties", text="harbour")
    with ThreadPoolExecutor(1) as pool:
        req = RecallRequest(
            query=q, collection=coll, pool=pool, terms=analyze_query(q.text, coll.analyzers, 64)
        )
        got = asyncio.run(coll.branches["inverted"].recall(req, 100))
    assert [c.ordinal for c in got] == list(range(100))


def test_tag_ranks_make_a_shards_lists_its_share_of_the_whole() -> None:
    items = _catalog(200)
    tags = pa.array([list(it.tags) for it in items], pa.list_(pa.string()))
    cats = pa.array([it.category for it in items], pa.string())
    pop = np.random.default_rng(1).integers(0, 5, len(items)).astype(np.float32)  # many ties
    arrays = TagArrays.build(tags, cats, pop)
    whole = TagTable.from_arrays(arrays, per_tag=7)
    for gords in partition(items, 3):
        shard = TagTable.from_arrays(arrays.take(gords), per_tag=7)
        for t in range(len(arrays.vocab)):
            want = [int(o) for o in whole.items_of(t) if o in set(gords.tolist())]
            assert [int(gords[o]) for o in shard.items_of(t)] == want
        # item → tags survive the renumbering
        for local, g in enumerate(gords.tolist()):
            assert shard.tags_of(local).tolist() == whole.tags_of(g).tolist()


def test_tag_arrays_round_trip(tmp_path: Path) -> None:
    items = _catalog(50)
    arrays = TagArrays.build(
        pa.array([list(it.tags) for it in items], pa.list_(pa.string())),
        pa.array([it.category for it in items], pa.string()),
        None,
    )
    meta = arrays.write(tmp_path / "tags")
    back = TagArrays.read(tmp_path / "tags", meta)
    assert back.vocab == arrays.vocab
    for a, b in (
        (back.item_indptr, arrays.item_indptr),
        (back.tag_ids, arrays.tag_ids),
        (back.tag_rank, arrays.tag_rank),
    ):
        assert a.tolist() == b.tolist()


def _events(items: list[Item], users: int = 60, seed: int = 2) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [
        Event(user=f"u{u}", item=items[int(i)].id, type="click", ts=1_700_000_000.0 + 60 * k)
        for u in range(users)
        for k, i in enumerate(rng.choice(len(items), size=12, replace=False))
    ]


def test_sharded_build_splits_behavior_by_neighbour_and_verifies(tmp_path: Path) -> None:
    items = _catalog(150)
    events = _events(items)
    opts = BuildOptions(collection="syn", text_fields=FIELDS, encoder=None, progress=False)
    build_snapshot(items, tmp_path / "one", opts, {"dataset": "synthetic"}, events)
    build_sharded(items, tmp_path / "set", opts, {"dataset": "synthetic"}, events, shards=3, processes=1)
    assert len(verify_shard_set(tmp_path / "set")) == 3
    one_meta = read_manifest(tmp_path / "one").parts["behavior"]
    one = BehaviorIndex.load(tmp_path / "one" / "behavior", one_meta)
    seeds = [(0, 1.0), (5, 0.5), (17, 0.25)]
    for s in range(3):
        d = tmp_path / "set" / f"shard-{s:04d}"
        part = read_manifest(d).parts
        gord = np.load(d / "shard" / "gord.npy")
        shard = BehaviorIndex.load(d / "behavior", part["behavior"])
        assert shard.num_rows == len(items) and shard.num_items == len(gord)
        for method in one.methods:
            want = [(o, sc) for o, sc in one.expand(method, seeds, 500) if o in set(gord.tolist())]
            local = ShardPart(s, 3, "blake2b64-mod", "x", len(items), gord).local_of(
                np.array([o for o, _ in seeds])
            )
            got = shard.expand(method, seeds, 500, seed_items=local[local >= 0])
            assert [(int(gord[o]), sc) for o, sc in got] == want
        assert np.array_equal(shard.popularity, one.popularity[gord])
    # a shard of another build is refused
    other = tmp_path / "other"
    build_sharded(items, other, opts, {"dataset": "synthetic"}, events, shards=3, processes=1)
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    manifest["parts"]["shards"]["versions"][1] = read_manifest(other / "shard-0001").snapshot_version
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError):
        verify_shard_set(tmp_path / "set")


def _branch(
    name: str, status: int, ords: list[int], scores: list[float], detail: str = ""
) -> spb.ShardBranch:
    return spb.ShardBranch(
        branch=name,
        status=status,
        detail=detail,
        ordinals=np.asarray(ords, "<i8").tobytes(),
        scores=np.asarray(scores, "<f8").tobytes(),
    )


def test_merge_lists_takes_the_top_quota_of_the_union() -> None:
    lists = [(np.array([1, 8]), np.array([5.0, 2.0])), (np.array([4, 3]), np.array([4.0, 2.0]))]
    assert merge_lists(lists, 3) == [(1, 5.0), (4, 4.0), (3, 2.0)]  # the tie at 2.0 by global ordinal


def test_branch_results_combine_over_shards() -> None:
    from common.settings import BranchSpec
    from retriever.core.types import BranchStatus

    spec = BranchSpec(quota=3)
    ok = pb.BRANCH_STATUS_OK
    a = _ShardAnswer(0, spb.ShardRecallResponse(branches=[_branch("geo", ok, [2, 6], [-5.0, -9.0])]))
    b = _ShardAnswer(1, spb.ShardRecallResponse(branches=[_branch("geo", ok, [3], [-1.0])]))
    res, degraded, merged = _branch_result("geo", spec, [a, b], 2)
    assert res.status is BranchStatus.OK and not degraded and merged == [(3, -1.0), (2, -5.0), (6, -9.0)]
    missing = _ShardAnswer(1, None, error="shard 1 unavailable")
    res, degraded, merged = _branch_result("geo", spec, [a, missing], 2)
    assert res.status is BranchStatus.OK and degraded and "1 of 2 shards answered" in res.detail
    t = pb.BRANCH_STATUS_TIMEOUT
    c = _ShardAnswer(0, spb.ShardRecallResponse(branches=[_branch("geo", t, [], [], "timed out")]))
    res, degraded, _ = _branch_result("geo", spec, [c], 1)
    assert res.status is BranchStatus.TIMEOUT and degraded
    sk = pb.BRANCH_STATUS_SKIPPED
    d = _ShardAnswer(0, spb.ShardRecallResponse(branches=[_branch("geo", sk, [], [], "no location")]))
    res, degraded, _ = _branch_result("geo", spec, [d], 1)
    assert res.status is BranchStatus.SKIPPED and res.detail == "no location" and not degraded


def test_affinity_seed_lists_round_trip_and_send_only_weighed_seeds() -> None:
    # Three memories: two weigh the recent seeds (decayed), the whole-history one only history items.
    per = [{5: 1.0, 9: 0.5}, {5: 1.0, 9: 0.8, 11: 0.1}, {9: 1.0, 40: 1.0, 41: 1.0}]
    assert len(per) == len(AFFINITY_MEMORIES)
    seeds = SeedWeights.of(per)
    lists = affinity_seed_lists(seeds)
    assert [dict(v) for v in lists.values()] == per  # no zero-weight entries on the wire
    assert set(lists) == {AFFINITY_SEEDS + s for s in AFFINITY_MEMORIES}
    back = affinity_seeds_from(lists, 100)
    assert back is not None
    np.testing.assert_array_equal(back.ordinals, seeds.ordinals)
    np.testing.assert_array_equal(back.weights, seeds.weights)
    assert affinity_seeds_from({}, 100) is None
    with pytest.raises(InvalidArgument, match="past this set's 41 items"):
        affinity_seeds_from(lists, 41)  # seed 41 is one past the last row
    with pytest.raises(InvalidArgument, match="negative ordinal -3"):
        affinity_seeds_from({AFFINITY_SEEDS: {-3: 1.0}}, 100)


def test_a_root_encodes_queries_with_the_int8_twin_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ann.query_encoder = "int8" at a shard set's root: its query encoder is MiniLM's int8 twin, checked
    against the shards' fp32 graph; with vectors it was not made from, the root says so and falls back to
    the model check, which refuses the set."""
    import json
    import logging

    from common.settings import AnnSettings, CollectionSettings
    from common.snapshot import SnapshotError
    from retriever.cluster.root import RootCollection
    from tests.conftest import TINY_FIELDS, TINY_ITEMS

    opts = BuildOptions(collection="tiny", text_fields=TINY_FIELDS, encoder="minilm", progress=False)
    build_sharded(
        TINY_ITEMS, tmp_path / "set", opts, {"dataset": "tiny (synthetic)"}, None, shards=2, processes=1
    )
    int8 = CollectionSettings(ann=AnnSettings(query_encoder="int8"))
    root = RootCollection(tmp_path / "set", int8)
    assert root.encoder is not None and root.encoder.name == "minilm-int8"
    assert RootCollection(tmp_path / "set", CollectionSettings()).encoder.name == "minilm"  # type: ignore[union-attr]

    man = tmp_path / "set" / "manifest.json"
    raw = json.loads(man.read_text())
    raw["parts"]["global"]["encoder"]["fingerprint"] = "minilm:onnx-sha256:" + "0" * 64
    man.write_text(json.dumps(raw))
    # The handler goes on the module's logger itself, enabled: a library that configured logging earlier in
    # the session (dictConfig disables the loggers that exist then) must not hide the warning.
    log = logging.getLogger("retriever.cluster.root")
    log.addHandler(caplog.handler)
    was_disabled, log.disabled = log.disabled, False
    try:
        with (
            caplog.at_level(logging.WARNING, logger=log.name),
            pytest.raises(SnapshotError, match="differs from the one that built the shards"),
        ):
            RootCollection(tmp_path / "set", int8, verify="size")
    finally:
        log.removeHandler(caplog.handler)
        log.disabled = was_disabled
    assert "was not made from the graph" in caplog.text
