"""Shared fixtures: small real-engine snapshots, a real gRPC server on a free port, a real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.catalog import Item
from common.index.text import Analyzer, TextField
from indexer.build import BuildOptions, build_snapshot
from indexer.datasets import DatasetUnavailable, default_data_dir, load_dataset

ROOT = Path(__file__).resolve().parent.parent

# A tiny hand-made catalog (synthetic, for unit tests): English, Chinese and numeric/category data.
TINY_ITEMS = [
    Item(
        id="sh",
        text={"name": "Shanghai", "alt": "上海 上海市 沪 Shang-hai"},
        category="CN",
        tags=("city", "port"),
        lat=31.22,
        lon=121.46,
        attrs={"population": 24_874_500},
    ),
    Item(
        id="bj",
        text={"name": "Beijing", "alt": "北京 Peking"},
        category="CN",
        tags=("city", "capital"),
        lat=39.91,
        lon=116.40,
        attrs={"population": 18_960_744},
    ),
    Item(
        id="pa",
        text={"name": "Paris", "alt": "Lutèce Parigi"},
        category="FR",
        tags=("city", "capital"),
        lat=48.85,
        lon=2.35,
        attrs={"population": 2_138_551},
    ),
    Item(
        id="pt",
        text={"name": "Paris", "alt": "Paris Texas"},
        category="US",
        tags=("town",),
        lat=33.66,
        lon=-95.55,
        attrs={"population": 24_171},
    ),
    Item(
        id="sf",
        text={"name": "San Francisco", "alt": "SF Frisco 旧金山"},
        category="US",
        tags=("city", "port"),
        lat=37.77,
        lon=-122.42,
        attrs={"population": 827_526},
    ),
    Item(
        id="zu",
        text={"name": "Zürich", "alt": "Zurich Zurigo 苏黎世"},
        category="CH",
        tags=("city",),
        lat=47.37,
        lon=8.54,
        attrs={"population": 341_730},
    ),
    Item(id="nl", text={"name": "Null Island"}, category=None, tags=(), attrs={}),
]
TINY_FIELDS = [TextField("name", Analyzer.NAME, 3.0), TextField("alt", Analyzer.NAME, 1.0)]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "scifact").is_dir():
        pytest.fail(
            f"SciFact data not found under {d}: set QUARRY_DATA_DIR to the folder holding scifact/ (../shared/data)"
        )
    return d


@pytest.fixture(scope="session")
def tiny_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("snap") / "tiny"
    build_snapshot(
        TINY_ITEMS,
        out,
        BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder="minilm"),
        {"dataset": "tiny (synthetic)"},
    )
    return out


@pytest.fixture(scope="session")
def scifact_snapshot(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    ds = load_dataset("scifact", data_dir)
    out = tmp_path_factory.mktemp("snap") / "scifact"
    build_snapshot(
        ds.items(),
        out,
        # No vectors: encoding 5,183 abstracts takes minutes on 2 cores (`quarry eval` covers ANN on SciFact).
        ds.build_options(progress=False, encoder=None),
        ds.source,
    )
    return out


@pytest.fixture(scope="session")
def movielens_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real MovieLens-100K items (1,682 titles + genres) with MiniLM vectors: the ANN integration corpus."""
    try:
        ds = load_dataset("movielens", tmp_path_factory.getbasetemp())
    except DatasetUnavailable as exc:
        pytest.fail(str(exc))
    out = tmp_path_factory.mktemp("snap") / "movielens"
    assert ds.events is not None
    build_snapshot(
        ds.items(), out, ds.build_options(progress=False, encoder="minilm"), ds.source, ds.events()
    )
    return out


@pytest.fixture(scope="session")
def geonames_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real GeoNames cities15000 set (~33k places; cities500 is exercised by the demo)."""
    try:
        from indexer.datasets import geonames

        ds = geonames.load(Path("."), variant="cities15000")
    except DatasetUnavailable as exc:
        pytest.fail(str(exc))
    out = tmp_path_factory.mktemp("snap") / "geonames"
    build_snapshot(ds.items(), out, ds.build_options(progress=False, encoder=None), ds.source)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(
    proc: subprocess.Popen[bytes], target: str, collection: str, query: str = "paris", timeout_s: float = 120
) -> str:
    """`target` once the `quarry serve` subprocess `proc` answers a Search on `collection`; fails (killing
    it) if it exits or does not answer within timeout_s."""
    import grpc

    from common.v1 import search_pb2, search_pb2_grpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            with grpc.insecure_channel(target) as ch:
                search_pb2_grpc.SearchServiceStub(ch).Search(
                    search_pb2.SearchRequest(collection=collection, query=query), timeout=2
                )
            return target
        except grpc.RpcError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"the server did not answer on {target} within {timeout_s:.0f} s")


class ServerThread:
    """A real QuarryServer on a free port, running its own event loop in a background thread, so both
    sync and async tests (and any client library) can talk to it."""

    def __init__(
        self,
        snapshots: list[Path],
        redis_url: str = "",
        *,
        root: Path | None = None,
        admin_token: str = "",
        tracer_provider: object = None,
        **settings_update: object,
    ) -> None:
        import asyncio
        import threading

        from retriever.api.server import QuarryServer, load_collections
        from retriever.settings import load_settings

        settings = load_settings()
        settings = settings.model_copy(
            update={
                "server": settings_update.pop("server", None)
                or settings.server.model_copy(update={"port": 0}),
                "redis": settings.redis.model_copy(update={"url": redis_url, "socket_timeout_ms": 500}),
                "admin": settings.admin.model_copy(
                    update={"token": SecretStr(admin_token) if admin_token else None}
                ),
                **settings_update,
            }
        )
        from common.snapshot_root import SnapshotRoot

        store = SnapshotRoot(root) if root is not None else None
        self.server = QuarryServer(
            settings, load_collections(settings, snapshots, store), store, tracer_provider=tracer_provider
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="quarry-test-server", daemon=True)
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=60)
        self.target = f"127.0.0.1:{port}"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(grace=0.5), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(
    tiny_snapshot: Path,
    scifact_snapshot: Path,
    geonames_snapshot: Path,
    movielens_snapshot: Path,
    redis_url: str,
) -> Iterator[str]:
    """Target address of a real grpc.aio Quarry server (tiny, scifact, geonames, movielens) backed by a
    real Redis for real-time behaviour."""
    srv = ServerThread([tiny_snapshot, scifact_snapshot, geonames_snapshot, movielens_snapshot], redis_url)
    try:
        yield srv.target
    finally:
        srv.close()


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free port (never the shared one's data); fails loudly if impossible."""
    exe = shutil.which("redis-server")
    if exe is None:
        if _redis_ping(6379):
            yield "redis://127.0.0.1:6379/15"
            return
        pytest.fail(
            "no redis-server binary and nothing answers on 127.0.0.1:6379: install Redis (apt-get install redis-server)"
        )
    d = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
            "--logfile",
            str(d / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if _redis_ping(port):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"redis-server did not start on port {port}: see {d / 'redis.log'}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_bare_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny catalog with only a text index and a forward store: no vectors, no locations, no events."""
    out = tmp_path_factory.mktemp("snap") / "tiny-bare"
    items = [it.model_copy(update={"lat": None, "lon": None}) for it in TINY_ITEMS]
    build_snapshot(
        items,
        out,
        BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder=None),
        {"dataset": "tiny (synthetic)"},
    )
    return out


@pytest.fixture(scope="session")
def tiny_bare_generation(tiny_bare_snapshot: Path) -> object:
    from common.settings import CollectionSettings
    from retriever.generations import Collection

    return Collection(tiny_bare_snapshot, CollectionSettings())
