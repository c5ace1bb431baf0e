"""Real-time Upsert and Delete over real gRPC: visible in every branch that should find the item (inverted,
ann, geo; behavior and popularity follow an updated item), hidden from all of them when deleted, rejected
record by record, durable across a restart and a kill -9, folded into the next build, never touching the
generation's files. The catalog is the tiny synthetic one (with MiniLM vectors) plus SYNTHETIC events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.catalog import Event, write_jsonl
from common.snapshot import read_manifest, verify_files
from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
from indexer.build import BuildOptions, build_snapshot
from tests.conftest import TINY_FIELDS, TINY_ITEMS, ServerThread, free_port

pytestmark = pytest.mark.integration
TOKEN = "realtime-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)

# Synthetic events: users who visit Shanghai and Beijing, and Paris; Shanghai is the most popular.
EVENTS = [
    Event(user=f"u{u}", item=item, type="view", ts=1_700_000_000 + 10 * u + i)
    for u in range(6)
    for i, item in enumerate(["sh", "bj", "pa"] if u < 4 else ["sh", "zu"])
]


def build(root: SnapshotRoot, encoder: str | None = "minilm") -> Path:
    with root.publish("tiny") as out:
        build_snapshot(
            TINY_ITEMS,
            out,
            BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder=encoder),
            {},
            EVENTS,
        )
    return root.live("tiny")


@pytest.fixture(scope="module")
def pristine_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = SnapshotRoot(tmp_path_factory.mktemp("rt") / "root")
    build(root)
    return root.root


@pytest.fixture
def root(pristine_root: Path, tmp_path: Path) -> Path:
    """A private copy of the built root (a test's changes never leak into another's)."""
    import shutil

    dst = tmp_path / "root"
    shutil.copytree(pristine_root, dst)
    return dst


@pytest.fixture
def srv(root: Path) -> Iterator[ServerThread]:
    s = ServerThread([], root=root, admin_token=TOKEN)
    try:
        yield s
    finally:
        s.close()


def admin(target: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target))


def search(target: str, **kw: object) -> search_pb2.SearchResponse:
    loc = kw.pop("location", None)
    req = search_pb2.SearchRequest(collection="tiny", top_k=20, debug=True, **kw)  # type: ignore[arg-type]
    if loc is not None:
        req.location.lat, req.location.lon = loc  # type: ignore[misc]
    with grpc.insecure_channel(target) as ch:
        return search_pb2_grpc.SearchServiceStub(ch).Search(req, timeout=10)


def recommend(
    target: str, user: str = "", location: tuple[float, float] | None = None
) -> search_pb2.SearchResponse:
    req = search_pb2.RecommendRequest(collection="tiny", user_id=user, top_k=20, debug=True)
    if location is not None:
        req.location.lat, req.location.lon = location
        req.radius_m = 3_000_000
    with grpc.insecure_channel(target) as ch:
        return search_pb2_grpc.SearchServiceStub(ch).Recommend(req, timeout=10)


def branches_of(res: search_pb2.SearchResponse, item_id: str) -> set[str]:
    return {s.branch for h in res.hits if h.id == item_id for s in h.sources}


def ids(res: search_pb2.SearchResponse) -> list[str]:
    return [h.id for h in res.hits]


NEW = admin_pb2.Item(
    id="qv",
    text={"name": "Quarryville", "alt": "Quarry Ville 采石场"},
    category="FR",
    tags=["town"],
    lat=48.80,
    lon=2.30,
    attrs={"population": 4_321},
)


def test_upsert_is_visible_in_every_branch_at_once(srv: ServerThread, root: Path) -> None:
    stub = admin(srv.target)
    res = stub.Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[NEW]), metadata=AUTH)
    assert res.accepted == 1 and not res.rejected and res.log_seq == 1
    # Inverted and ANN find it by its name, the moment Upsert returned.
    found = search(srv.target, query="Quarryville")
    assert found.hits[0].id == "qv"
    assert {"inverted", "ann"} <= branches_of(found, "qv")
    hit = found.hits[0]
    assert hit.title == "Quarryville" and hit.category == "FR" and hit.attributes["population"] == 4321
    # Chinese alternate name through the CJK analyzer.
    assert "qv" in ids(search(srv.target, query="采石场"))
    # Geo: the nearest place to its own coordinates; filters see its category, tags and attributes.
    near = search(srv.target, location=(48.80, 2.30), radius_m=20_000)
    assert ids(near)[0] == "qv" and "geo" in branches_of(near, "qv")
    assert near.hits[0].distance_m < 1.0
    f = search_pb2.Filters(categories=["FR"], tags=["town"])
    f.ranges.add(field="population", max=5000)
    assert ids(search(srv.target, query="Quarryville", filters=f)) == ["qv"]
    f2 = search_pb2.Filters(categories=["US"])
    assert "qv" not in ids(search(srv.target, query="Quarryville", filters=f2))
    status = stub.Status(admin_pb2.StatusRequest(collection="tiny"), metadata=AUTH).collections[0]
    assert (status.items, status.upserts, status.deletes, status.log_seq) == (len(TINY_ITEMS) + 1, 1, 0, 1)


def test_delete_hides_the_item_from_every_branch(srv: ServerThread) -> None:
    before_user, before_pop = recommend(srv.target, "u4"), recommend(srv.target)
    assert "sh" in ids(search(srv.target, query="Shanghai"))
    assert "sh" in ids(before_pop), "popularity recalls Shanghai (the most visited)"
    # u4 saw Shanghai and Zürich; those who saw Shanghai also saw Beijing and Paris.
    assert "bj" in ids(before_user) or "pa" in ids(before_user)
    assert not {"sh", "zu"} & set(ids(before_user)), "Recommend never returns what the user saw"
    assert not {"sh", "bj", "pa"} & set(ids(recommend(srv.target, "u0")))
    res = admin(srv.target).Delete(
        admin_pb2.DeleteRequest(collection="tiny", ids=["sh", "bj", "nope"]), metadata=AUTH
    )
    assert res.accepted == 2 and list(res.not_found) == ["nope"]
    for r in (
        search(srv.target, query="Shanghai 上海 Beijing"),
        search(srv.target, location=(31.22, 121.46), radius_m=5_000_000),
        search(srv.target, query="Shanghai", user_id="u4", location=(31.2, 121.4)),
        recommend(srv.target, "u0"),
        recommend(srv.target, "u4", location=(31.22, 121.46)),
        recommend(srv.target),
    ):
        assert not {"sh", "bj"} & set(ids(r)), (ids(r), [b.branch for b in r.branch_stats])
    # A deleted id can come back.
    again = admin_pb2.Item(id="sh", text={"name": "Shanghai"}, lat=31.22, lon=121.46)
    assert (
        admin(srv.target)
        .Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[again]), metadata=AUTH)
        .accepted
        == 1
    )
    assert "sh" in ids(search(srv.target, query="Shanghai"))
    # A second delete of the same id reports it not found.
    admin(srv.target).Delete(admin_pb2.DeleteRequest(collection="tiny", ids=["bj"]), metadata=AUTH)


def test_replacing_an_item_keeps_its_behavior_and_popularity(srv: ServerThread) -> None:
    renamed = admin_pb2.Item(id="sh", text={"name": "Shanghai Pudong"}, category="CN", lat=31.22, lon=121.46)
    admin(srv.target).Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[renamed]), metadata=AUTH)
    assert "sh" in ids(search(srv.target, query="Pudong"))
    assert "inverted" not in branches_of(search(srv.target, query="上海"), "sh"), "the old text is gone"
    pop = recommend(srv.target)
    assert "sh" in ids(pop) and "popular" in branches_of(pop, "sh")
    user = recommend(srv.target, "u4")  # visited sh and zu: behavior recalls the co-visited ones
    assert user.hits
    # Filters judge the current version: sh lost its tags (city, port) with the replacement.
    f = search_pb2.Filters(tags=["port"])
    assert "sh" not in ids(search(srv.target, query="Shanghai Pudong", filters=f))


def test_replaced_item_keeps_its_ranking_features_from_behavior(srv: ServerThread) -> None:
    """The ranker's behavior-derived item features follow an updated item like popularity does: a new
    version of "sh" has its mean event strength and i2i affinities; a new id has the mean over all items
    and no affinity."""
    import numpy as np

    from common.types import SeedWeights
    from ranker.schema import AFFINITY_MEMORIES

    coll = srv.server.registry.get("tiny")
    base = coll.forward.ord_of
    sh, pa = base["sh"], base["pa"]
    weights_before = coll.item_weight
    # One seed, weighed differently under each memory.
    seeds = SeedWeights(
        np.array([base["bj"]]), np.array([[1.0 / (k + 1)] for k in range(len(AFFINITY_MEMORIES))])
    )
    before = coll.i2i_affinity(seeds, np.array([sh, pa]))
    assert weights_before is not None and before and all(v.max() > 0 for v in before.values())
    items = [
        admin_pb2.Item(id="sh", text={"name": "Shanghai Pudong"}, category="CN", lat=31.22, lon=121.46),
        admin_pb2.Item(id="fresh", text={"name": "Freshtown"}),
    ]
    admin(srv.target).Upsert(admin_pb2.UpsertRequest(collection="tiny", items=items), metadata=AUTH)
    now = coll.forward.ord_of
    assert now["sh"] != sh and now["sh"] >= len(weights_before)  # a delta ordinal
    weights = coll.item_weight
    assert weights is not None
    prior = coll.manifest.parts["behavior"]["item_weight"]["prior"]
    assert weights[now["sh"]] == weights_before[sh] and weights[now["fresh"]] == np.float32(prior)
    after = coll.i2i_affinity(seeds, np.array([now["sh"], now["fresh"], pa]))
    assert after.keys() == before.keys()
    for name, values in after.items():
        assert values.tolist() == [before[name][0], 0.0, before[name][1]], name


def test_bad_records_are_rejected_one_by_one(srv: ServerThread) -> None:
    items = [
        admin_pb2.Item(id="ok1", text={"name": "Goodtown"}),
        admin_pb2.Item(id="", text={"name": "No id"}),
        admin_pb2.Item(id="geo", text={"name": "Half"}, lat=10.0),
        admin_pb2.Item(id="attr", text={"name": "X"}, attrs={"height": 3.0}),
        admin_pb2.Item(id="field", text={"body": "unknown field"}),
        admin_pb2.Item(id="emb", text={"name": "Y"}, embedding=[0.1] * 384),
        admin_pb2.Item(id="far", text={"name": "Z"}, lat=95.0, lon=0.0),
        admin_pb2.Item(id="ok2", text={"name": "Goodville"}, attrs={"population": float("nan")}),
        admin_pb2.Item(id="ok3", text={"name": "Goodville"}),
    ]
    res = admin(srv.target).Upsert(admin_pb2.UpsertRequest(collection="tiny", items=items), metadata=AUTH)
    rejected = {r.index: r.reason for r in res.rejected}
    assert res.accepted == 2 and sorted(rejected) == [1, 2, 3, 4, 5, 6, 7], rejected
    assert "id" in rejected[1] and "height" in rejected[3] and "body" in rejected[4]
    assert "embedding" in rejected[5] and "lat" in rejected[6] and "finite" in rejected[7]
    assert {"ok1", "ok3"} <= set(ids(search(srv.target, query="Goodtown Goodville")))
    too_many = admin_pb2.UpsertRequest(
        collection="tiny", items=[admin_pb2.Item(id=str(i)) for i in range(1001)]
    )
    with pytest.raises(grpc.RpcError) as e:
        admin(srv.target).Upsert(too_many, metadata=AUTH)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "1000" in (e.value.details() or "")


def test_admin_token_and_changelog_are_required(srv: ServerThread, tiny_snapshot: Path) -> None:
    req = admin_pb2.UpsertRequest(collection="tiny", items=[NEW])
    for md in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as e:
            admin(srv.target).Upsert(req, metadata=md)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        admin(srv.target).Upsert(admin_pb2.UpsertRequest(collection="nope", items=[NEW]), metadata=AUTH)
    assert e.value.code() is grpc.StatusCode.NOT_FOUND
    plain = ServerThread([tiny_snapshot], admin_token=TOKEN)  # a plain snapshot, no realtime.log_dir
    try:
        with pytest.raises(grpc.RpcError) as e:
            admin(plain.target).Upsert(req, metadata=AUTH)
        assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "log_dir" in (e.value.details() or "")
    finally:
        plain.close()


def test_changes_survive_a_restart_and_leave_the_generation_intact(root: Path) -> None:
    s = ServerThread([], root=root, admin_token=TOKEN)
    try:
        admin(s.target).Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[NEW]), metadata=AUTH)
        admin(s.target).Delete(admin_pb2.DeleteRequest(collection="tiny", ids=["pa"]), metadata=AUTH)
    finally:
        s.close()
    gen = SnapshotRoot(root).live("tiny")
    verify_files(gen, read_manifest(gen), full=True)  # the generation's files are as built
    s = ServerThread([], root=root, admin_token=TOKEN)
    try:
        assert ids(search(s.target, query="Quarryville"))[0] == "qv"
        assert "pa" not in ids(search(s.target, query="Paris"))
        st = admin(s.target).Status(admin_pb2.StatusRequest(collection="tiny"), metadata=AUTH).collections[0]
        assert (st.upserts, st.deletes, st.log_seq, st.generation_log_seq) == (1, 1, 2, 0)
    finally:
        s.close()


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "QUARRY_ADMIN__TOKEN": TOKEN}
    cmd = [
        sys.executable,
        "-m",
        "quarry.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, env=env)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            search(target, query="paris")
            return proc, target
        except grpc.RpcError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not start")


def test_acknowledged_changes_survive_kill_9_and_fold_into_the_next_build(root: Path, tmp_path: Path) -> None:
    proc, target = _serve(root)
    try:
        stub = admin(target)
        for i in range(20):
            item = admin_pb2.Item(id=f"k{i}", text={"name": f"Killtown {i}"}, lat=1.0, lon=float(i))
            assert (
                stub.Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[item]), metadata=AUTH).accepted
                == 1
            )
        stub.Delete(admin_pb2.DeleteRequest(collection="tiny", ids=["k3", "zu"]), metadata=AUTH)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc, target = _serve(root)
    try:
        got = {i for i in ids(search(target, query="Killtown")) if i.startswith("k")}
        assert got == {f"k{i}" for i in range(20)} - {"k3"}
        assert "zu" not in ids(search(target, query="Zürich"))
        # A rebuild into the root folds the log in and records its position; the server replays only
        # later entries over it (nothing twice, nothing lost).
        catalog = tmp_path / "tiny.jsonl"
        write_jsonl(catalog, TINY_ITEMS)
        write_jsonl(tmp_path / "events.jsonl", EVENTS)
        fields = [f"{f.name}:{f.analyzer.value}:{f.boost}" for f in TINY_FIELDS]
        cmd = [
            sys.executable,
            "-m",
            "quarry.cli",
            "index",
            "build",
            "--root",
            str(root),
            "--collection",
            "tiny",
            "--catalog",
            str(catalog),
            "--encoder",
            "minilm",
            "--no-progress",
            "--events",
            str(tmp_path / "events.jsonl"),
        ]
        for f in fields:
            cmd += ["--text-field", f]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "folding 22 change-log entries (up to seq 22)" in out.stdout
        gen = SnapshotRoot(root).live("tiny")
        m = read_manifest(gen)
        assert m.source["changelog_seq"] == 22 and m.counts["items"] == len(TINY_ITEMS) + 19 - 1
        stub = admin(target)
        stub.Upsert(
            admin_pb2.UpsertRequest(
                collection="tiny", items=[admin_pb2.Item(id="late", text={"name": "Latecomer"})]
            ),
            metadata=AUTH,
        )
        res = stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH)
        assert res.status.generation == "gen-000002"
        assert (res.status.generation_log_seq, res.status.log_seq, res.status.upserts) == (22, 23, 1)
        assert "late" in ids(search(target, query="Latecomer"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    s = ServerThread([], root=root, admin_token=TOKEN)
    try:
        st = admin(s.target).Status(admin_pb2.StatusRequest(collection="tiny"), metadata=AUTH).collections[0]
        assert (st.generation_log_seq, st.log_seq, st.upserts, st.deletes) == (22, 23, 1, 0)
        assert {i for i in ids(search(s.target, query="Killtown Latecomer")) if i[0] in "kl"} == (
            {f"k{i}" for i in range(20)} - {"k3"}
        ) | {"late"}
    finally:
        s.close()


def test_reload_replays_the_log_over_the_new_generation(srv: ServerThread, root: Path) -> None:
    stub = admin(srv.target)
    stub.Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[NEW]), metadata=AUTH)
    stub.Delete(admin_pb2.DeleteRequest(collection="tiny", ids=["pt"]), metadata=AUTH)
    build(SnapshotRoot(root))  # a generation built without folding (as by an older indexer): seq 0
    res = stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH)
    assert res.status.generation == "gen-000002" and res.status.log_seq == 2
    assert ids(search(srv.target, query="Quarryville"))[0] == "qv"
    assert "pt" not in ids(search(srv.target, query="Paris Texas"))
    rb = stub.Rollback(admin_pb2.RollbackRequest(collection="tiny"), metadata=AUTH)
    assert rb.status.generation == "gen-000001" and rb.status.upserts == 1
    assert ids(search(srv.target, query="Quarryville"))[0] == "qv"


def test_admin_cli_upserts_a_catalog_file_and_deletes(srv: ServerThread, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    catalog = tmp_path / "changes.jsonl"
    catalog.write_text(
        '{"id": "c1", "text": {"name": "Clitown"}, "lat": 5.0, "lon": 5.0}\n'
        '{"id": "c2", "text": {"name": "Badtown"}, "lat": 5.0}\n'
        '{"id": "c3", "text": {"name": "Clitown Heights"}, "attrs": {"population": 12}}\n',
        encoding="utf-8",
    )
    base = ["admin", "upsert", "--target", srv.target, "--token", TOKEN, "--collection", "tiny"]
    res = CliRunner().invoke(main, [*base, str(catalog)])
    assert res.exit_code == 1, res.output
    assert "2 upserted, 1 rejected" in res.output and "changes.jsonl:2" in res.output
    assert {"c1", "c3"} <= set(ids(search(srv.target, query="Clitown")))
    res = CliRunner().invoke(
        main,
        ["admin", "delete", "--target", srv.target, "--token", TOKEN, "--collection", "tiny", "c1", "zz"],
    )
    assert res.exit_code == 0 and "1 deleted, not found: zz" in res.output, res.output
    res = CliRunner().invoke(main, ["admin", "status", "--target", srv.target, "--token", TOKEN])
    assert "real-time: 2 upserts, 1 deletes" in res.output, res.output


def test_every_worker_sees_a_change_within_the_poll_interval(root: Path) -> None:
    """SO_REUSEPORT workers: the worker that took the Upsert answers with it at once; the others follow
    the change log every realtime.poll_interval_s (0.2 s): every fresh connection sees it within 1 s."""
    port = free_port()
    env = {**os.environ, "QUARRY_ADMIN__TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "quarry.cli", "--log-level", "WARNING", "serve", "--root", str(root)]
    proc = subprocess.Popen([*cmd, "--port", str(port), "--workers", "2"], env=env)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                search(target, query="paris")
                break
            except grpc.RpcError:
                time.sleep(0.3)
        admin(target).Upsert(admin_pb2.UpsertRequest(collection="tiny", items=[NEW]), metadata=AUTH)
        t0 = time.monotonic()
        seen_all_at = None
        while time.monotonic() - t0 < 5:
            found = []
            for _ in range(8):  # fresh connections: the kernel spreads them over both workers
                with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    res = search_pb2_grpc.SearchServiceStub(ch).Search(
                        search_pb2.SearchRequest(collection="tiny", query="Quarryville", top_k=1), timeout=10
                    )
                    found.append(bool(res.hits) and res.hits[0].id == "qv")
            if all(found):
                seen_all_at = time.monotonic() - t0
                break
        assert seen_all_at is not None and seen_all_at < 1.0, seen_all_at
    finally:
        proc.terminate()
        proc.wait(timeout=30)
