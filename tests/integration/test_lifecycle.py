"""Generations in a running server, over real gRPC: hot swap under continuous load, refusal of corrupt
generations, rollback, release of the old generation, and the admin token. Snapshots are real builds of
the tiny synthetic catalog (text + geo + forward), one extra item per generation so versions differ."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.catalog import Item
from common.settings import CollectionSettings, QuarrySettings, RankerSettings
from common.snapshot import read_manifest
from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
from indexer.build import BuildOptions, build_snapshot
from retriever.core.errors import FailedPrecondition
from retriever.generations import Collection, Registry
from retriever.lifecycle import Lifecycle
from tests.conftest import TINY_FIELDS, TINY_ITEMS, ServerThread

pytestmark = pytest.mark.integration
TOKEN = "s3cret-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def publish(root: SnapshotRoot, n: int) -> str:
    items = [*TINY_ITEMS, Item(id=f"g{n}", text={"name": f"Generation {n}"}, lat=10.0, lon=float(n))]
    with root.publish("tiny") as out:
        m = build_snapshot(
            items,
            out,
            BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder=None),
            {},
        )
    return m.snapshot_version


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, SnapshotRoot, dict[str, int]]]:
    root = SnapshotRoot(tmp_path / "root")
    versions = {publish(root, 1): 1}
    srv = ServerThread([], root=root.root, admin_token=TOKEN)
    try:
        yield srv, root, versions
    finally:
        srv.close()


class Load:
    """Client threads sending Search and Recommend back to back, recording every answer's version."""

    def __init__(self, target: str, threads: int = 4) -> None:
        self.stop = threading.Event()
        self.seen: list[list[str]] = [[] for _ in range(threads)]
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(target, i)) for i in range(threads)]

    def _run(self, target: str, i: int) -> None:
        with grpc.insecure_channel(target) as ch:
            stub = search_pb2_grpc.SearchServiceStub(ch)
            search = search_pb2.SearchRequest(collection="tiny", query="paris generation", top_k=5)
            recommend = search_pb2.RecommendRequest(collection="tiny", top_k=5)
            recommend.location.lat, recommend.location.lon = 48.85, 2.35
            k = 0
            while not self.stop.is_set():
                try:
                    res = (
                        stub.Search(search, timeout=10)
                        if k % 2 == 0
                        else stub.Recommend(recommend, timeout=10)
                    )
                    self.seen[i].append(res.snapshot_version)
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
                k += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)


def admin(target: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target))


def test_hot_swap_under_load_never_fails_or_mixes(
    served: tuple[ServerThread, SnapshotRoot, dict[str, int]],
) -> None:
    srv, root, versions = served
    stub = admin(srv.target)
    with Load(srv.target) as load:
        for n in (2, 3, 4):
            versions[publish(root, n)] = n
            reply = stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60)
            assert reply.status.generation == f"gen-00000{n}" and versions[reply.status.snapshot_version] == n
            assert not reply.unchanged and reply.load_ms > 0
            time.sleep(0.3)
    assert load.errors == [], load.errors[:5]
    for seen in load.seen:
        assert seen, "every client got answers"
        gens = [versions[v] for v in seen]  # KeyError = a version that is no whole generation
        assert gens == sorted(gens), "a client saw an older generation after a newer one"
    assert {versions[s[-1]] for s in load.seen} == {4}
    again = stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60)
    assert again.unchanged
    from prometheus_client import REGISTRY

    for v, n in versions.items():
        labels = {"collection": "tiny", "snapshot_version": v, "generation": f"gen-00000{n}"}
        # The gauge names the serving generation only: each swap removed the one it replaced.
        assert REGISTRY.get_sample_value("quarry_generation_info", labels) == (1.0 if n == 4 else None)


def test_rollback_under_load_and_the_pointer_follows(
    served: tuple[ServerThread, SnapshotRoot, dict[str, int]],
) -> None:
    srv, root, versions = served
    stub = admin(srv.target)
    versions[publish(root, 2)] = 2
    stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60)
    with Load(srv.target) as load:
        reply = stub.Rollback(admin_pb2.RollbackRequest(collection="tiny"), metadata=AUTH, timeout=60)
        assert reply.status.generation == "gen-000001" and versions[reply.previous_version] == 2
    assert load.errors == []
    for seen in load.seen:
        gens = [versions[v] for v in seen]
        first_old = gens.index(1) if 1 in gens else len(gens)
        assert all(g == 1 for g in gens[first_old:]), "after the rollback a client saw the newer one again"
    assert root.live_number("tiny") == 1, "a rollback moves the root's live pointer (a restart serves it too)"
    status = stub.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10).collections[0]
    assert (status.generation, status.root_live, list(status.generations)) == (
        "gen-000001",
        "gen-000001",
        ["gen-000001", "gen-000002"],
    )
    # Roll forward by name.
    reply = stub.Reload(admin_pb2.ReloadRequest(collection="tiny", generation="2"), metadata=AUTH, timeout=60)
    assert reply.status.generation == "gen-000002" and root.live_number("tiny") == 2


def _flip_byte(gen: Path) -> None:
    m = read_manifest(gen)
    rel = max(m.files, key=lambda r: m.files[r].bytes)
    data = bytearray((gen / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (gen / rel).write_bytes(bytes(data))


def _truncate(gen: Path) -> None:
    m = read_manifest(gen)
    rel = max(m.files, key=lambda r: m.files[r].bytes)
    (gen / rel).write_bytes((gen / rel).read_bytes()[:-10])


def _future_format(gen: Path) -> None:
    raw = json.loads((gen / "manifest.json").read_text())
    raw["format_version"] = 99
    (gen / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(_flip_byte, "sha256"), (_truncate, "truncated"), (_future_format, "format_version 99")],
    ids=["flipped-byte", "truncated", "format-version"],
)
def test_a_corrupt_generation_is_refused_and_the_old_keeps_serving(
    served: tuple[ServerThread, SnapshotRoot, dict[str, int]], damage: object, reason: str
) -> None:
    srv, root, versions = served
    stub = admin(srv.target)
    publish(root, 2)
    damage(root.live("tiny"))  # type: ignore[operator]
    with Load(srv.target, threads=2) as load, pytest.raises(grpc.RpcError) as info:
        stub.Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert reason in info.value.details() and "gen-000002" in info.value.details()  # type: ignore[attr-defined]
    assert load.errors == []
    assert {v for seen in load.seen for v in seen} == set(versions), "only generation 1 answered"


def test_the_replaced_generation_is_released(
    served: tuple[ServerThread, SnapshotRoot, dict[str, int]],
) -> None:
    srv, root, _ = served
    old = weakref.ref(srv.server.registry.get("tiny"))
    publish(root, 2)
    admin(srv.target).Reload(admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60)
    with grpc.insecure_channel(srv.target) as ch:  # a request after the swap runs on the new one
        search_pb2_grpc.SearchServiceStub(ch).Search(
            search_pb2.SearchRequest(collection="tiny", query="paris")
        )
    gc.collect()
    assert old() is None, "nothing may keep a replaced generation alive once its requests are done"


def test_admin_needs_the_token_and_search_does_not(
    served: tuple[ServerThread, SnapshotRoot, dict[str, int]],
) -> None:
    srv, _, _ = served
    stub = admin(srv.target)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(admin_pb2.StatusRequest(), metadata=metadata, timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert (
        stub.Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10).collections[0].collection == "tiny"
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Reload(admin_pb2.ReloadRequest(collection="nope"), metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        stub.Reload(
            admin_pb2.ReloadRequest(collection="tiny", generation="gen-000042"), metadata=AUTH, timeout=10
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    with grpc.insecure_channel(srv.target) as ch:
        assert (
            search_pb2_grpc.SearchServiceStub(ch)
            .Search(search_pb2.SearchRequest(collection="tiny", query="paris"))
            .hits
        )


def test_without_a_token_the_admin_service_is_off(server: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        admin(server).Status(admin_pb2.StatusRequest(), metadata=AUTH, timeout=10)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_a_ranker_model_for_another_schema_refuses_the_reload(tmp_path: Path) -> None:
    from ranker.model import train_synthetic
    from ranker.schema import DEFAULT_SCHEMA, Feature, FeatureSchema

    other = FeatureSchema("v2", (*DEFAULT_SCHEMA.features[:-1], Feature("fused_score", "query_item", 0.5)))
    model, metrics, _, _ = train_synthetic(other, n=2000, max_epochs=3)
    model_path = tmp_path / "model.onnx"
    model.to_onnx(model_path, schema=other, model_version="other-schema", metrics=metrics)

    root = SnapshotRoot(tmp_path / "root")
    publish(root, 1)
    registry = Registry()
    registry.put(Collection(root.live("tiny"), CollectionSettings(), generation="gen-000001"))
    publish(root, 2)
    settings = QuarrySettings(defaults=CollectionSettings(ranker=RankerSettings(model_path=model_path)))
    with pytest.raises(FailedPrecondition, match=r"ranker model .* schema"):
        asyncio.run(Lifecycle(settings, registry, root).reload("tiny"))
    assert registry.get("tiny").generation == "gen-000001"


def test_quarry_admin_cli(served: tuple[ServerThread, SnapshotRoot, dict[str, int]]) -> None:
    from click.testing import CliRunner

    from quarry.cli import main

    srv, root, _ = served
    publish(root, 2)
    runner = CliRunner()
    base = ["--target", srv.target, "--token", TOKEN]
    res = runner.invoke(main, ["admin", "status", *base])
    assert res.exit_code == 0 and "tiny gen-000001" in res.output and "live gen-000002" in res.output, (
        res.output
    )
    res = runner.invoke(main, ["admin", "reload", *base, "--collection", "tiny"])
    assert res.exit_code == 0 and "tiny gen-000002" in res.output, res.output
    res = runner.invoke(main, ["admin", "rollback", *base, "--collection", "tiny"])
    assert res.exit_code == 0 and "tiny gen-000001" in res.output, res.output
    res = runner.invoke(main, ["admin", "status", "--target", srv.target, "--token", "nope"])
    assert res.exit_code != 0 and "UNAUTHENTICATED" in res.output


def test_watch_follows_the_root_pointer(tmp_path: Path) -> None:
    """admin.watch: a server follows published generations (and rollbacks in the root) by itself."""
    root = SnapshotRoot(tmp_path / "root")
    publish(root, 1)
    registry = Registry()
    registry.put(Collection(root.live("tiny"), CollectionSettings(), generation="gen-000001"))
    lifecycle = Lifecycle(QuarrySettings(admin={"watch": True, "watch_interval_s": 0.05}), registry, root)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(lifecycle.watch(stop))
        assert await lifecycle.refresh() == []  # nothing moved
        for step in ("2", "1"):  # a new generation, then a rollback done in the root only
            if step == "2":
                publish(root, 2)
            else:
                root.activate("tiny", "1")
            for _ in range(200):
                if registry.get("tiny").generation == f"gen-00000{step}":
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the watch loop did not load gen-00000{step}")
        stop.set()
        await task

    asyncio.run(run())


def test_the_ranker_model_ships_inside_the_generation_and_swaps_with_it(tmp_path: Path) -> None:
    """A generation is whole: its own ranker model (the `ranker` part) serves with it, wins over
    settings, is checked at reload (a model for another schema is refused), and a rollback restores the
    previous model together with the previous indexes."""
    from ranker.model import train_synthetic
    from ranker.schema import DEFAULT_SCHEMA, Feature, FeatureSchema

    def model(schema: FeatureSchema, version: str) -> Path:
        m, metrics, _, _ = train_synthetic(schema, n=2000, max_epochs=3)
        path = tmp_path / version / "model.onnx"
        path.parent.mkdir()
        m.to_onnx(path, schema=schema, model_version=version, metrics=metrics)
        return path

    good = model(DEFAULT_SCHEMA, "tiny-ranker-v1")
    other = FeatureSchema("v2", (*DEFAULT_SCHEMA.features[:-1], Feature("fused_score", "query_item", 0.5)))
    bad = model(other, "other-schema")
    root = SnapshotRoot(tmp_path / "root")
    opts = BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder=None)

    def build(ranker_model: Path | None) -> None:
        with root.publish("tiny") as out:
            build_snapshot(TINY_ITEMS, out, dataclasses.replace(opts, ranker_model=ranker_model), {})

    build(None)
    registry = Registry()
    registry.put(Collection(root.live("tiny"), CollectionSettings(), generation="gen-000001"))
    lifecycle = Lifecycle(QuarrySettings(), registry, root)
    build(good)
    assert read_manifest(root.live("tiny")).parts["ranker"]["model_version"] == "tiny-ranker-v1"
    out = asyncio.run(lifecycle.reload("tiny"))
    assert out.status.ranker == "tiny-ranker-v1" and out.status.generation == "gen-000002"
    build(bad)
    with pytest.raises(FailedPrecondition, match=r"ranker model .* schema"):
        asyncio.run(lifecycle.reload("tiny"))
    assert registry.get("tiny").generation == "gen-000002"
    back = asyncio.run(lifecycle.rollback("tiny", "gen-000001"))
    assert back.status.ranker == "fused"
