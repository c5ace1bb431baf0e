"""Shard sets served by 4 shards × 2 replicas and a root, each a real `quarry serve` process on 127.0.0.1
(quarry.localcluster), against the same collections served whole by one node.

The root's answers must equal one node's — same ids, same order, scores within 1e-5, same per-branch
provenance — for Search with every branch and for Recommend, with RRF, weighted fusion and an ONNX ranker
(a model trained on SYNTHETIC features: these tests check equality, not quality). Then replicas die under
load: one per shard costs no failed request, both of one shard give degraded answers and no error.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.settings import CollectionSettings, QuarrySettings
from common.sharding import shard_of
from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2 as apb
from common.v1 import search_pb2 as pb
from common.v1 import search_pb2_grpc as pbg
from common.v1 import shard_pb2 as spb
from indexer.build import build_snapshot
from indexer.datasets import geonames, load_dataset
from indexer.sharded import build_sharded
from quarry.localcluster import LocalCluster
from ranker.model import train_synthetic
from ranker.schema import DEFAULT_SCHEMA, ITEM_WINDOW_FEATURES, FeatureSchema
from retriever.core.types import SearchQuery
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration

SHARDS, REPLICAS = 4, 2
PLACES_USERS = 300


def _places() -> tuple[object, object, object]:
    ds = geonames.load(Path("."), variant="cities15000")
    opts = ds.build_options(collection="places", progress=False, encoder=None)
    return ds, opts, lambda: geonames.synthetic_events("cities15000", users=PLACES_USERS)


@pytest.fixture(scope="module")
def places_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GeoNames cities15000 with SYNTHETIC visits (GeoNames has no behaviour data): text, geo, behavior."""
    ds, opts, events = _places()
    out = tmp_path_factory.mktemp("single") / "places"
    build_snapshot(ds.items(), out, opts, ds.source, events())  # type: ignore[attr-defined]
    return out


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A snapshot root holding the three collections as 4-shard sets, built as the single snapshots are."""
    root = tmp_path_factory.mktemp("cluster") / "root"
    store = SnapshotRoot(root)
    sci = load_dataset("scifact", data_dir)
    with store.publish("scifact") as out:
        build_sharded(
            sci.items(), out, sci.build_options(progress=False, encoder=None), sci.source, shards=SHARDS
        )
    ds, opts, events = _places()
    with store.publish("places") as out:
        build_sharded(ds.items(), out, opts, ds.source, events(), shards=SHARDS)  # type: ignore[attr-defined,arg-type]
    ml = load_dataset("movielens", tmp_path_factory.getbasetemp())
    assert ml.events is not None
    with store.publish("movielens") as out:
        build_sharded(
            ml.items(),
            out,
            ml.build_options(progress=False, encoder="minilm"),
            ml.source,
            ml.events(),
            shards=SHARDS,
        )
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, movielens_snapshot: Path) -> Path:
    """An MLP over the serving feature schema, trained on SYNTHETIC features (equality, not quality) —
    all but the items' real-time windows: those decay with the clock and each process caches them for
    up to 5 s, so two servers reading them a moment apart score slightly differently, and near-tied
    hits could swap (a fresh-clone run saw it). Their path is the same code at a root and a node
    (test_recommend_events, test_ranker_serving). The synthetic features take the range of real ones
    (MovieLens Recommend candidates' features), so the model's scores are spread, not saturated: a
    saturated MLP answers float32-quantised scores, and BM25's last-bit differences between a shard and
    one node (common.index.textstats) then swapped hits."""
    schema = DEFAULT_SCHEMA.without(*ITEM_WINDOW_FEATURES)
    mlp, metrics, _, _ = train_synthetic(
        schema, n=3000, max_epochs=5, like=_real_features(movielens_snapshot, schema)
    )
    return mlp.to_onnx(
        tmp_path_factory.mktemp("model") / "model.onnx",
        schema=schema,
        model_version="cluster-test",
        metrics=metrics,
    )


def _real_features(snapshot: Path, schema: FeatureSchema) -> np.ndarray:
    """Model inputs of real requests on `snapshot`: Recommend and Search candidates of a few users, with
    their histories as seeds (no real-time events)."""
    from retriever.features.recent import MemoryRecentStore

    coll = Collection(snapshot, CollectionSettings())
    reg = Registry()
    reg.put(coll)
    svc = SearchService(QuarrySettings(), reg, recent=MemoryRecentStore())
    assert coll.behavior is not None

    async def go() -> np.ndarray:
        rows = []
        for user in coll.behavior.sample_users(20):  # type: ignore[union-attr]
            for text in ("", "star wars", "comedy"):
                q = SearchQuery(collection=coll.name, user_id=user, text=text, top_k=100)
                fused = await svc.candidates(q, recommend=not text)
                rows.append(await svc.candidate_features(coll, user, fused, schema=schema))
        await svc.aclose()
        return np.concatenate(rows)

    return asyncio.run(go())


def _collections(model: Path) -> dict[str, object]:
    # ef above the item count makes HNSW exhaustive: per-shard graphs and one node's graph then find the
    # same neighbours (at the default ef both are approximate, each in its own way; `quarry bench
    # cluster` measures how their top lists overlap).
    return {"movielens": {"ranker": {"model_path": str(model)}, "ann": {"ef": 2000}}}


TOKEN = "cluster-test-token"


@pytest.fixture(scope="module")
def cluster(cluster_root: Path, redis_url: str, model: Path) -> Iterator[LocalCluster]:
    env = {
        "QUARRY_REDIS__URL": redis_url,
        # Nine server processes share the machine's two cores with the test's clients: a Redis reply can
        # wait in the socket for tens of ms while a process's loop is starved, past the default 20 ms
        # timeout (a fresh-clone run failed so: the root's read of a user's recent events timed out, its
        # behavior and preference branches errored, the answer was degraded). These tests are about shards
        # and replicas; a Redis call past its timeout (it fails, counts for the breaker, the branch errs,
        # the answer is degraded) has its own tests (test_recent_redis, test_recent_store, test_executor).
        "QUARRY_REDIS__SOCKET_TIMEOUT_MS": "250",
        "QUARRY_COLLECTIONS": json.dumps(_collections(model)),
        "QUARRY_ADMIN__TOKEN": TOKEN,
    }
    with LocalCluster(cluster_root, SHARDS, REPLICAS, env=env, log_level="ERROR") as c:
        yield c


@pytest.fixture(scope="module")
def single(
    scifact_snapshot: Path, places_snapshot: Path, movielens_snapshot: Path, redis_url: str, model: Path
) -> Iterator[str]:
    srv = ServerThread(
        [scifact_snapshot, places_snapshot, movielens_snapshot], redis_url, collections=_collections(model)
    )
    try:
        yield srv.target
    finally:
        srv.close()


@pytest.fixture(scope="module")
def stubs(
    cluster: LocalCluster, single: str
) -> Iterator[tuple[pbg.SearchServiceStub, pbg.SearchServiceStub]]:
    with grpc.insecure_channel(cluster.target) as r, grpc.insecure_channel(single) as s:
        yield pbg.SearchServiceStub(r), pbg.SearchServiceStub(s)


def assert_same(got: pb.SearchResponse, want: pb.SearchResponse, what: str) -> None:
    assert not got.degraded and not want.degraded, what
    assert [h.id for h in got.hits] == [h.id for h in want.hits], what
    for g, w in zip(got.hits, want.hits, strict=True):
        assert math.isclose(g.score, w.score, rel_tol=1e-5, abs_tol=1e-6), (what, g.id, g.score, w.score)
        assert [(s.branch, s.rank) for s in g.sources] == [(s.branch, s.rank) for s in w.sources], (
            what,
            g.id,
        )
        for gs, ws in zip(g.sources, w.sources, strict=True):
            assert math.isclose(gs.score, ws.score, rel_tol=1e-5, abs_tol=1e-6), (what, g.id, gs.branch)
        assert (g.title, g.category, list(g.tags)) == (w.title, w.category, list(w.tags)), (what, g.id)
        assert dict(g.attributes) == dict(w.attributes) and dict(g.fields) == dict(w.fields), (what, g.id)


def _both(
    stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub], method: str, req: object, what: str
) -> pb.SearchResponse:
    root, one = stubs
    got = getattr(root, method)(req, timeout=30)
    assert_same(got, getattr(one, method)(req, timeout=30), what)
    return got


def test_scifact_search_equals_one_node(
    stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub], data_dir: Path
) -> None:
    claims = [json.loads(line)["text"] for line in (data_dir / "scifact" / "queries.jsonl").open()][:40]
    hits = 0
    for fusion in ("", "weighted"):
        for text in claims:
            req = pb.SearchRequest(collection="scifact", query=text, top_k=20, fusion=fusion)
            hits += len(_both(stubs, "Search", req, f"{fusion or 'rrf'}: {text}").hits)
    assert hits >= 1500  # real answers, not empty lists that agree


def test_places_every_branch_equals_one_node(
    stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub],
) -> None:
    paris = pb.GeoPoint(lat=48.8566, lon=2.3522)
    branches: set[str] = set()
    reqs: list[tuple[str, object]] = []
    for text in ("paris", "springfield", "上海", "san jose", "moscow", "saint petersburg", "新加坡"):
        reqs.append(("Search", pb.SearchRequest(collection="places", query=text, top_k=25)))
        reqs.append(("Search", pb.SearchRequest(collection="places", query=text, top_k=25, location=paris)))
        reqs.append(
            (
                "Search",
                pb.SearchRequest(collection="places", query=text, user_id="u7", top_k=25, fusion="weighted"),
            )
        )
    reqs.append(
        (
            "Search",
            pb.SearchRequest(collection="places", query="city", location=paris, radius_m=300_000, top_k=30),
        )
    )
    flt = pb.Filters(categories=["US"], ranges=[pb.NumericRange(field="population", min=100_000)])
    reqs.append(("Search", pb.SearchRequest(collection="places", query="springfield", filters=flt, top_k=10)))
    for user in ("u1", "u2", "u17", "u123", "no-such-user"):
        reqs.append(("Recommend", pb.RecommendRequest(collection="places", user_id=user, top_k=30)))
        reqs.append(
            (
                "Recommend",
                pb.RecommendRequest(
                    collection="places", user_id=user, location=paris, top_k=30, fusion="weighted"
                ),
            )
        )
    for method, req in reqs:
        res = _both(stubs, method, req, f"{method} {req}")
        branches.update(s.branch for h in res.hits for s in h.sources)
    assert branches == {"inverted", "geo", "behavior", "preference", "popular"}


def test_movielens_ranked_answers_equal_one_node(
    stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub],
) -> None:
    """ANN (the root encodes the query once), behavior and preference from real-time events in Redis plus
    the snapshot's histories, and an ONNX model ranking at the root from the shards' item rows."""
    root, _ = stubs
    events = [
        pb.Event(event_id=f"c{i}", user_id="42", item_id=item, type="click")
        for i, item in enumerate(("50", "181", "1", "98"))
    ]
    assert root.LogEvents(pb.LogEventsRequest(collection="movielens", events=events)).accepted == len(events)
    branches: set[str] = set()
    for user in ("42", "1", "7", "500"):
        for text in ("star wars", "toy story", "a film about the mafia", "romantic comedy in paris"):
            res = _both(
                stubs,
                "Search",
                pb.SearchRequest(collection="movielens", query=text, user_id=user, top_k=20),
                f"{user} {text}",
            )
            branches.update(s.branch for h in res.hits for s in h.sources)
        res = _both(
            stubs,
            "Recommend",
            pb.RecommendRequest(collection="movielens", user_id=user, top_k=20),
            f"recommend {user}",
        )
        branches.update(s.branch for h in res.hits for s in h.sources)
    assert {"inverted", "ann", "behavior", "preference"} <= branches
    debug = root.Search(pb.SearchRequest(collection="movielens", query="star wars", user_id="42", debug=True))
    assert debug.debug.ranker.startswith("onnx:") and debug.hits[0].debug.features
    # The features only the shards can compute reached the root's model, equal to one node's: the i2i
    # affinities (the root sent the user's seeds; each shard holds its items' share of the tables) and
    # the items' mean rating. Compared by value, not only through equal scores.
    _, one = stubs
    single = one.Search(pb.SearchRequest(collection="movielens", query="star wars", user_id="42", debug=True))
    at_root = {h.id: dict(h.debug.features) for h in debug.hits}
    at_node = {h.id: dict(h.debug.features) for h in single.hits}
    assert at_root.keys() == at_node.keys()
    for name in (
        "user_swing_affinity",
        "user_itemcf_affinity_long",
        "user_ease_affinity_all",
        "item_avg_weight",
    ):
        got = [at_root[i][name] for i in at_root]
        assert got == pytest.approx([at_node[i][name] for i in at_root], rel=1e-9), name
        assert max(got) > 0, name


def test_bad_requests_are_refused_at_the_root(
    stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub],
) -> None:
    root, _ = stubs
    cases = [
        (
            pb.SearchRequest(collection="places", query="x", radius_m=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "location",
        ),
        (pb.SearchRequest(collection="nope", query="x"), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            pb.SearchRequest(
                collection="places", query="x", filters=pb.Filters(ranges=[pb.NumericRange(field="height")])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "height",
        ),
        (
            pb.SearchRequest(collection="places", query="x", branches=["vectors"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "vectors",
        ),
    ]
    for req, code, word in cases:
        with pytest.raises(grpc.RpcError) as err:
            root.Search(req, timeout=10)
        assert err.value.code() is code and word in err.value.details()


def test_query_then_fetch_answers_the_same(
    cluster: LocalCluster, stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub]
) -> None:
    """With cluster.display = fetch, shards send no display fields and the root fetches its hits' (all
    candidates' for debug answers) after ranking: the same answers, titles and fields included."""
    cluster.restart_root({"QUARRY_CLUSTER__DISPLAY": "fetch"})
    try:
        paris = pb.GeoPoint(lat=48.8566, lon=2.3522)
        for req in (
            pb.SearchRequest(collection="places", query="springfield", top_k=20),
            pb.SearchRequest(collection="places", query="paris", user_id="u3", location=paris, top_k=20),
            pb.SearchRequest(collection="scifact", query="vitamin D deficiency and bone loss", top_k=10),
        ):
            _both(stubs, "Search", req, f"fetch: {req}")
        _both(
            stubs,
            "Recommend",
            pb.RecommendRequest(collection="movielens", user_id="7", top_k=20),
            "fetch rec",
        )
        root, one = stubs
        req = pb.SearchRequest(collection="places", query="san jose", debug=True, top_k=5)
        got, want = root.Search(req), one.Search(req)
        assert [(b.branch, [(c.id, c.title) for c in b.candidates]) for b in got.debug.branches] == [
            (b.branch, [(c.id, c.title) for c in b.candidates]) for b in want.debug.branches
        ]
    finally:
        cluster.restart_root()


SHARD_ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@st.composite
def shard_requests(draw: st.DrawFn, set_ids: list[str]) -> bytes:
    """Hostile ShardService.Recall requests: real and made-up sets, branches, quotas, seeds, profiles,
    vectors and document frequencies (a root is trusted, but a shard must not crash on garbage)."""
    text = st.one_of(st.text(max_size=40), st.sampled_from(["paris", "上海", "", "\x00"]))
    num = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e9]))
    req = spb.ShardRecallRequest(
        collection=draw(st.sampled_from(["places", "scifact", "movielens", "", "nope"])),
        set_id=draw(st.one_of(st.sampled_from(set_ids), text)),
        query=pb.SearchRequest(query=draw(text), user_id=draw(text), radius_m=draw(num)),
        profile=draw(st.lists(num, max_size=30)),
        query_vector=draw(st.binary(max_size=1600)),
        with_display=draw(st.booleans()),
    )
    if draw(st.booleans()):
        req.query.location.lat, req.query.location.lon = draw(num), draw(num)
    names = st.sampled_from(["inverted", "ann", "geo", "behavior", "preference", "popular", "", "x"])
    for _ in range(draw(st.integers(0, 6))):
        req.branches.add(name=draw(names), quota=draw(st.integers(-5, 200_000)), timeout_ms=draw(num))
    for _ in range(draw(st.integers(0, 3))):
        req.seeds.add(
            branch=draw(names),
            ordinals=draw(st.lists(st.integers(-(2**40), 2**40), max_size=20)),
            weights=draw(st.lists(num, max_size=20)),
        )
    for _ in range(draw(st.integers(0, 5))):
        req.term_df.add(
            field=draw(st.sampled_from(["name", "alt_names", "body", ""])),
            term=draw(text),
            df=draw(st.integers(-10, 10**9)),
        )
    body = req.SerializeToString()
    return (
        body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8)) if draw(st.booleans()) else body
    )


def test_fuzz_a_shard(cluster: LocalCluster) -> None:
    admin, auth = _admin(cluster.target)
    set_ids = [c.set_id for c in admin.Status(apb.StatusRequest(), metadata=auth).collections]
    target = cluster.replica(0, 1).target

    @settings(max_examples=int(os.environ.get("QUARRY_FUZZ_EXAMPLES", "100")), deadline=None)
    @given(body=shard_requests(set_ids), fetch=st.binary(max_size=200))
    def one(body: bytes, fetch: bytes) -> None:
        with grpc.insecure_channel(target) as ch:
            for method, payload in (
                ("Recall", body),
                (
                    "Fetch",
                    spb.ShardFetchRequest(
                        collection="places", set_id=set_ids[0], ordinals=fetch
                    ).SerializeToString(),
                ),
            ):
                try:
                    ch.unary_unary(f"/quarry.v1.ShardService/{method}")(payload, timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() in SHARD_ALLOWED, (
                        f"{method} answered {exc.code().name}: {exc.details()}"
                    )
                    assert exc.details()

    one()
    assert cluster.replica(0, 1).alive()


def test_a_shard_refuses_bad_affinity_seeds(cluster: LocalCluster) -> None:
    """The i2i affinity seeds a root sends (named seed lists): an ordinal past the set's items or a
    negative one is INVALID_ARGUMENT saying which, and the shard keeps serving."""
    admin, auth = _admin(cluster.target)
    set_id = next(
        c.set_id
        for c in admin.Status(apb.StatusRequest(), metadata=auth).collections
        if c.collection == "movielens"
    )
    target = cluster.replica(0, 0).target

    def recall(ordinals: list[int]) -> spb.ShardRecallResponse:
        req = spb.ShardRecallRequest(
            collection="movielens",
            set_id=set_id,
            query=pb.SearchRequest(collection="movielens", user_id="42"),
            branches=[spb.BranchCall(name="popular", quota=20, timeout_ms=5000)],
            seeds=[spb.SeedList(branch="affinity", ordinals=ordinals, weights=[1.0] * len(ordinals))],
        )
        with grpc.insecure_channel(target) as ch:
            stub = ch.unary_unary(
                "/quarry.v1.ShardService/Recall",
                request_serializer=spb.ShardRecallRequest.SerializeToString,
                response_deserializer=spb.ShardRecallResponse.FromString,
            )
            return stub(req, timeout=30)

    for bad, words in (([1, 10_000_000], "past this set's"), ([-3, 1], "negative ordinal")):
        with pytest.raises(grpc.RpcError) as e:
            recall(bad)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and words in (e.value.details() or "")
    import pyarrow.ipc as ipc

    rows = ipc.open_stream(recall([1, 2]).rows).read_all()  # good seeds: rows carry the affinities
    assert rows.num_rows and {"_user_swing_affinity", "_user_itemcf_affinity_long"} <= set(rows.column_names)
    assert cluster.replica(0, 0).alive()


def _admin(target: str) -> tuple[Any, tuple[tuple[str, str], ...]]:
    from common.v1 import admin_pb2_grpc

    return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target)), (
        ("authorization", f"Bearer {TOKEN}"),
    )


def test_root_status_shows_the_set_and_every_replica(cluster: LocalCluster) -> None:
    admin, auth = _admin(cluster.target)
    status = {c.collection: c for c in admin.Status(apb.StatusRequest(), metadata=auth).collections}
    assert set(status) == {"scifact", "places", "movielens"}
    places = status["places"]
    assert places.set_id and places.generation == "gen-000001" and places.items > 30000
    assert [len(s.replicas) for s in places.shards] == [REPLICAS] * SHARDS
    assert {r.address for s in places.shards for r in s.replicas} == {
        p.target for group in cluster.procs for p in group
    }


# The tests below change the cluster's collections (real-time changes, generations, dead replicas): the
# equality tests above must run first.
def test_upserts_and_deletes_route_to_the_owning_shard(
    cluster: LocalCluster, stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub]
) -> None:
    root, _ = stubs
    admin, auth = _admin(cluster.target)
    ids = [f"cluster-new-{i}" for i in range(8)]
    items = [
        apb.Item(id=i, text={"name": f"Quarryville {n}"}, category="ZZ", lat=10.0 + n, lon=20.0)
        for n, i in enumerate(ids)
    ]
    bad = apb.Item(id="cluster-bad", text={"name": "x"}, lat=10.0)  # half a location
    res = admin.Upsert(
        apb.UpsertRequest(collection="places", items=[*items[:3], bad, *items[3:]]), metadata=auth
    )
    assert res.accepted == len(ids)
    assert [(r.index, r.id) for r in res.rejected] == [(3, "cluster-bad")]
    assert len({shard_of(i, SHARDS) for i in ids}) > 1  # the batch really spans shards

    def found() -> set[str]:
        req = pb.SearchRequest(collection="places", query="quarryville", top_k=50)
        return {h.id for h in root.Search(req, timeout=10).hits}

    def settles_on(want: set[str]) -> bool:
        """Every answer shows `want` for 20 answers in a row (the root picks either replica of a shard;
        the one that did not take the change follows its shard's log within realtime.poll_interval_s)."""
        deadline, streak = time.monotonic() + 5, 0
        while time.monotonic() < deadline and streak < 20:
            streak = streak + 1 if found() == want else 0
        return streak >= 20

    assert settles_on(set(ids))
    gone = admin.Delete(apb.DeleteRequest(collection="places", ids=[*ids[:4], "no-such-id"]), metadata=auth)
    assert gone.accepted == 4 and list(gone.not_found) == ["no-such-id"]
    assert settles_on(set(ids[4:]))


def test_coordinated_reload_and_rollback_under_load(cluster: LocalCluster, data_dir: Path) -> None:
    """A new generation of the scifact set (with one extra document) goes live across all shards at one
    instant for the root: before the switch no answer has it, after it every answer does; 0 failed RPCs."""
    from common.catalog import Item

    store = SnapshotRoot(cluster.root)
    sci = load_dataset("scifact", data_dir)
    marker = Item(id="cluster-marker", text={"title": "Zyzzyva marker", "body": "zyzzyva"})
    with store.publish("scifact") as out:
        build_sharded(
            [*sci.items(), marker],
            out,
            sci.build_options(progress=False, encoder=None),
            sci.source,
            shards=SHARDS,
        )
    admin, auth = _admin(cluster.target)
    seen: list[tuple[str, bool]] = []
    errors: list[str] = []
    stop = threading.Event()

    def query() -> None:
        with grpc.insecure_channel(cluster.target) as ch:
            stub = pbg.SearchServiceStub(ch)
            while not stop.is_set():
                try:
                    res = stub.Search(pb.SearchRequest(collection="scifact", query="zyzzyva"), timeout=10)
                except grpc.RpcError as exc:
                    errors.append(exc.code().name)
                    continue
                seen.append((res.snapshot_version, any(h.id == "cluster-marker" for h in res.hits)))

    threads = [threading.Thread(target=query, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        out = admin.Reload(apb.ReloadRequest(collection="scifact"), metadata=auth, timeout=300)
        assert out.status.generation == "gen-000002" and not out.unchanged
        time.sleep(0.5)
        back = admin.Rollback(apb.RollbackRequest(collection="scifact"), metadata=auth, timeout=300)
        assert back.status.generation == "gen-000001"
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    by_version: dict[str, set[bool]] = {}
    for version, has in seen:
        by_version.setdefault(version, set()).add(has)
    new = out.status.snapshot_version
    assert by_version[new] == {True} and by_version[out.previous_version] == {False}, by_version
    assert store.live_number("scifact") == 1  # the rollback moved the pointer back
    # A set of another shard count is refused; the serving one stays.
    with store.publish("scifact") as out3:
        build_sharded(
            sci.items(), out3, sci.build_options(progress=False, encoder=None), sci.source, shards=2
        )
    with pytest.raises(grpc.RpcError) as err:
        admin.Reload(apb.ReloadRequest(collection="scifact"), metadata=auth, timeout=300)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "2 shards" in err.value.details()
    assert (
        admin.Status(apb.StatusRequest(collection="scifact"), metadata=auth).collections[0].generation
        == "gen-000001"
    )
    store.activate("scifact", "gen-000001")  # publishing moved the pointer to the refused set; undo that


class Load:
    """Closed-loop Search traffic from a few client threads, counting failures by status code."""

    def __init__(self, target: str, threads: int = 4, *, debug: bool = False) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.degraded = 0
        self.errors: dict[str, int] = {}
        # With debug answers (branch_stats), why each degraded answer was degraded: the branches that
        # were not OK with their status and detail, so a failure names the shard and branch at fault.
        self.debug = debug
        self.why: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(target, i), daemon=True) for i in range(threads)
        ]

    def _run(self, target: str, i: int) -> None:
        texts = ["paris", "london", "springfield", "上海", "berlin", "madrid", "tokyo"]
        with grpc.insecure_channel(target) as ch:
            stub = pbg.SearchServiceStub(ch)
            n = 0
            while not self.stop.is_set():
                req = pb.SearchRequest(
                    collection="places",
                    query=texts[(n + i) % len(texts)],
                    user_id=f"u{n % 50}",
                    debug=self.debug,
                )
                n += 1
                try:
                    res = stub.Search(req, timeout=5)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
                    continue
                with self._lock:
                    self.ok += 1
                    self.degraded += res.degraded
                    if res.degraded and self.debug:
                        self.why.append(
                            "; ".join(
                                f"{b.branch} {pb.BranchStatus.Name(b.status)}: {b.detail}"
                                for b in res.branch_stats
                                if b.status != pb.BRANCH_STATUS_OK or b.detail
                            )
                            or "no branch failed (a display fetch?)"
                        )

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)


def test_one_replica_of_every_shard_killed_under_load(cluster: LocalCluster) -> None:
    with Load(cluster.target, debug=True) as load:
        time.sleep(1.0)
        before = load.ok
        for s in range(SHARDS):
            cluster.kill(s, 0)
            time.sleep(0.3)
        time.sleep(1.5)
    assert load.errors == {}, load.errors
    assert load.ok > before + 20, "traffic kept flowing after the kills"
    assert load.degraded == 0, f"every shard still had a replica: answers stay whole; {load.why[:5]}"
    for s in range(SHARDS):
        cluster.restart(s, 0)


def test_both_replicas_of_one_shard_down_gives_degraded_answers(
    cluster: LocalCluster, stubs: tuple[pbg.SearchServiceStub, pbg.SearchServiceStub]
) -> None:
    root, one = stubs
    lost = 2
    cluster.kill(lost, 0)
    cluster.kill(lost, 1)
    try:
        with Load(cluster.target, threads=2) as load:
            time.sleep(2.0)
        assert load.errors == {}, load.errors
        assert load.ok > 0 and load.degraded == load.ok
        req = pb.SearchRequest(collection="places", query="san", top_k=50)
        res, whole = root.Search(req, timeout=10), one.Search(req, timeout=10)
        assert res.degraded and res.hits
        assert all(shard_of(h.id, SHARDS) != lost for h in res.hits)
        kept = [h.id for h in whole.hits if shard_of(h.id, SHARDS) != lost]
        assert [h.id for h in res.hits][: len(kept) // 2] == kept[: len(kept) // 2]
        stats = {
            b.branch: b
            for b in root.Search(
                pb.SearchRequest(collection="places", query="paris", debug=True)
            ).branch_stats
        }
        assert "3 of 4 shards answered" in stats["inverted"].detail
    finally:
        cluster.restart(lost, 0)
        cluster.restart(lost, 1)
    # Back to whole answers once the root reaches the restarted replicas again (they were ejected and
    # gRPC's reconnect backoff is capped at max(eject_s, 0.1 s), 5 s at most).
    deadline = time.monotonic() + 10
    while root.Search(pb.SearchRequest(collection="places", query="paris"), timeout=10).degraded:
        assert time.monotonic() < deadline, "answers still degraded 10 s after the shard came back"
        time.sleep(0.2)
