"""The gRPC transport: a thin layer over retriever.core (convert → core → convert)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from common import heap
from common.index.text import warm_up
from common.logs import LogFormat, configure_logging, current_format
from common.settings import QuarrySettings
from common.sharding import is_shard_set, shard_dir
from common.snapshot import SnapshotError, read_manifest
from common.snapshot_root import SnapshotRoot
from common.v1 import search_pb2 as pb
from retriever.api import convert, reflection
from retriever.api.admin import ADMIN_SERVICE, AdminServicer
from retriever.api.errors import access_log, rpc
from retriever.api.interceptors import MetricsInterceptor
from retriever.api.shard import SHARD_SERVICE, ShardServicer
from retriever.cluster.shard import ShardCore
from retriever.core import metrics
from retriever.generations import Collection, Registry
from retriever.lifecycle import Lifecycle
from retriever.realtime import Realtime, log_location
from retriever.service import SearchService
from retriever.tracing import make_tracer_provider

log = logging.getLogger(__name__)

SEARCH_SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"].full_name


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class SearchServicer:
    """quarry.v1.SearchService. Only converts; the core decides."""

    def __init__(self, core: SearchService) -> None:
        self.core = core

    @rpc("Search", pb.SearchRequest)
    async def search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        result = await self.core.search(convert.search_query(request), _deadline(context))
        return convert.search_response(result, debug=request.debug)

    @rpc("Recommend", pb.RecommendRequest)
    async def recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        result = await self.core.recommend(convert.recommend_query(request), _deadline(context))
        return convert.search_response(result, debug=request.debug)

    @rpc("LogEvents", pb.LogEventsRequest)
    async def log_events(
        self, request: pb.LogEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogEventsResponse:
        result = await self.core.log_events(request.collection, convert.raw_events(request))
        return convert.log_events_response(result)

    def handler(self) -> grpc.GenericRpcHandler:
        # request_deserializer=None hands the handlers raw bytes, so decoding errors are ours to report.
        def unary(fn: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=None, response_serializer=response.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SEARCH_SERVICE,
            {
                "Search": unary(self.search, pb.SearchResponse),
                "Recommend": unary(self.recommend, pb.SearchResponse),
                "LogEvents": unary(self.log_events, pb.LogEventsResponse),
            },
        )


def limit_native_threads() -> None:
    """One BLAS/OpenMP thread per call: the server already runs calls concurrently in its pool, and on
    few cores nested pools for a single query cost far more than they save (seen: 8 ms p50 spikes)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def load_collections(
    settings: QuarrySettings, snapshots: Sequence[Path], root: SnapshotRoot | None = None
) -> Registry:
    """Every snapshot directory, plus the live generation of every collection under `root`. By role
    (cluster.role): whole collections; a root's shard sets (RootCollection); or a shard's own part of
    each shard set (`<set>/shard-NNNN`, a whole snapshot of its items)."""
    role = settings.cluster.role
    registry = Registry(keep_previous=role == "shard")
    locate = shard_locator(settings)

    def put(coll: Any) -> None:
        if registry.put(coll) is not None:
            raise ValueError(f"two snapshots for collection {coll.name!r}")

    def load(path: Path, name: str, generation: str = "") -> Any:
        if role == "root":
            from retriever.cluster.root import RootCollection

            return RootCollection(
                path,
                settings.for_collection(name),
                verify=settings.verify,
                generation=generation,
                shards=len(settings.cluster.shards),
            )
        where = log_location(settings, root if generation else None, name)
        changelog, work_root = where if where is not None else (None, None)
        return Collection(
            locate(path),
            settings.for_collection(name),
            verify=settings.verify,
            generation=generation,
            changelog=changelog,
            work_root=work_root,
        )

    for path in snapshots:
        put(load(path, read_manifest(path).collection))
    if root is not None:
        for name in root.collections():
            live = root.live(name)
            put(load(live, name, live.name))
    return registry


def shard_locator(settings: QuarrySettings) -> Callable[[Path], Path]:
    """Where a server finds its part of a generation: a shard server its shard's directory inside the
    shard set, every other role the directory itself."""
    if settings.cluster.role != "shard":
        return lambda path: path
    index = settings.cluster.shard
    if index is None:
        raise ValueError("role shard needs cluster.shard (which shard of each set this server holds)")

    def locate(path: Path) -> Path:
        manifest = read_manifest(path)
        if not is_shard_set(manifest.parts):
            raise SnapshotError(
                f"{path} is a whole collection, not a shard set: serve it without --role shard"
            )
        count = int(manifest.parts["shards"]["count"])
        if index >= count:
            raise SnapshotError(f"{path} has {count} shards; this server is shard {index}")
        return path / shard_dir(index)

    return locate


class QuarryServer:
    """Owns the grpc.aio server, the health service and the core."""

    def __init__(
        self,
        settings: QuarrySettings,
        registry: Registry,
        root: SnapshotRoot | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        #: Spans go to this provider (tests pass one with an in-memory exporter), else OTLP when configured.
        self.tracer_provider = tracer_provider or make_tracer_provider(settings.tracing)
        self.role = settings.cluster.role
        self.shard_core: ShardCore | None = None
        self.lifecycle: Any
        self.realtime: Any
        if self.role == "root":
            from retriever.cluster.admin import RootLifecycle, RootRealtime
            from retriever.cluster.root import Fanout, RootSearchService

            fanout = Fanout.from_settings(settings.cluster)
            self.core: SearchService = RootSearchService(
                settings, registry, fanout, tracer_provider=self.tracer_provider
            )
            self.lifecycle = RootLifecycle(settings, registry, root, fanout)
            self.realtime = RootRealtime(settings, registry, self.lifecycle.shards)
        else:
            self.core = SearchService(settings, registry, tracer_provider=self.tracer_provider)
            self.realtime = Realtime(settings, registry)
            self.lifecycle = Lifecycle(
                settings, registry, root, self.realtime, locate=shard_locator(settings)
            )
            if self.role == "shard":
                self.shard_core = ShardCore(settings, registry, self.core.pool)
        self._stop_watch = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int = 0

    async def start(self) -> int:
        s = self.settings.server
        access_log.configure(enabled=s.access_log, sample=s.access_log_sample)
        warm_up()
        limit_native_threads()
        heap.settle()  # the loaded generations out of the collector's way (common.heap)
        if s.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(s.metrics_port, addr=s.host)
            log.info("metrics on http://%s:%d/metrics", s.host, s.metrics_port)
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
        if self.tracer_provider is not None:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            interceptors.append(aio_server_interceptor(tracer_provider=self.tracer_provider))
        options: list[tuple[str, int]] = [
            # Shared only between this server's own workers; else never share a port silently.
            ("grpc.so_reuseport", 1 if s.workers > 1 else 0),
            ("grpc.max_receive_message_length", s.max_receive_message_bytes),
        ]
        if s.max_connection_age_s is not None:
            options += [
                ("grpc.max_connection_age_ms", round(s.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", round(s.max_connection_age_grace_s * 1000)),
            ]
        server = grpc.aio.server(
            interceptors=interceptors, maximum_concurrent_rpcs=s.max_concurrent_rpcs, options=options
        )
        services = [health.SERVICE_NAME]
        if self.shard_core is not None:
            # A shard answers its root only: its collections are parts of shard sets, not whole ones.
            server.add_generic_rpc_handlers((ShardServicer(self.shard_core).handler(),))
            services.append(SHARD_SERVICE)
        else:
            server.add_generic_rpc_handlers((SearchServicer(self.core).handler(),))
            services.append(SEARCH_SERVICE)
        token = self.settings.admin.token.get_secret_value() if self.settings.admin.token else ""
        if token:
            admin = AdminServicer(self.lifecycle, self.realtime, token)
            server.add_generic_rpc_handlers((admin.handler(),))
            services.append(ADMIN_SERVICE)
        else:
            log.info("admin service off (no admin.token configured)")
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.reflection:
            reflection.enable(server, services)
        address = f"{s.host}:{s.port}"
        if s.tls_cert is not None and s.tls_key is not None:
            ca = s.tls_client_ca.read_bytes() if s.tls_client_ca is not None else None
            credentials = grpc.ssl_server_credentials(
                [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            try:
                self.port = server.add_secure_port(address, credentials)
            except RuntimeError:
                self.port = 0
            log.info("TLS on (%s)", "client certificates required" if ca else "server certificate only")
        else:
            try:
                self.port = server.add_insecure_port(address)
            except RuntimeError:
                self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind {address}: the port is in use or the address is not local")
        await server.start()
        self.server = server
        if self.role == "root":
            await self.core.fanout.start()  # type: ignore[attr-defined]
        serving = (
            health_pb2.HealthCheckResponse.SERVING
            if len(self.registry)
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SHARD_SERVICE if self.shard_core is not None else SEARCH_SERVICE):
            await self.health.set(name, serving)
        if self.settings.admin.watch and self.lifecycle.root is not None:
            self._watch = asyncio.create_task(self.lifecycle.watch(self._stop_watch))
        if any(self.registry.get(n).changelog is not None for n in self.registry.names()):
            # Changes appended by other processes (workers, a second server on the root) show up here.
            self._follow = asyncio.create_task(self.realtime.follow(self._stop_watch))
        log.info("serving %s on %s:%d", self.registry.names(), s.host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self.server is None:
            return
        self._stop_watch.set()
        for task in (self._watch, self._follow):
            if task is not None:
                await task
        self._watch = self._follow = None
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.server.shutdown_grace_s if grace is None else grace)
        await self.core.aclose()
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        self.server = None

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()


def serve_workers(settings: QuarrySettings, snapshots: Sequence[Path], root: Path | None = None) -> None:
    """`server.workers` processes on one port (SO_REUSEPORT), each a whole server over the same
    memory-mapped snapshots; this process supervises them: SIGINT/SIGTERM stop them all gracefully, and
    one dying stops the rest (a supervisor such as Kubernetes restarts the pod). With a snapshot root the
    workers follow its live pointer (admin.watch is forced on): a Reload or Rollback answered by one
    worker moves the pointer or finds it moved, and the others converge within admin.watch_interval_s.
    With server.metrics_port, this process serves the workers' metrics added up (`WorkerMetrics`)."""
    if settings.server.workers == 1:
        asyncio.run(serve(settings, snapshots, root))
        return
    if settings.server.port == 0:
        raise ValueError("server.workers > 1 needs a fixed port (0 would give each worker its own)")
    if root is not None:
        settings = settings.model_copy(update={"admin": settings.admin.model_copy(update={"watch": True})})
    if settings.server.metrics_port is None:
        _supervise(settings, snapshots, root, None)
        return
    with WorkerMetrics(settings.server.host, settings.server.metrics_port) as metrics_dir:
        # The workers expose nothing themselves: they write their values where this process reads them.
        worker_settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"metrics_port": None})}
        )
        _supervise(worker_settings, snapshots, root, metrics_dir)


class WorkerMetrics:
    """`serve --workers N`'s one /metrics endpoint: prometheus_client's multiprocess mode. Each worker
    (spawned with PROMETHEUS_MULTIPROC_DIR set) writes its values to memory-mapped files in a private
    directory; this process serves them added up: counters and histograms summed over every worker that
    ever ran, gauges by their `multiprocess_mode` over the live ones. The directory is new for each run
    (stale files would add a previous run's counts) and removed at the end."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.path: Path | None = None
        self._httpd: Any = None
        self._env: str | None = None

    def __enter__(self) -> Path:
        import tempfile

        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = Path(tempfile.mkdtemp(prefix="quarry-metrics-"))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.path))
        try:
            self._httpd, _ = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        # Spawned workers start with a copy of this environment.
        self._env = os.environ.get(metrics.MULTIPROC_ENV)
        os.environ[metrics.MULTIPROC_ENV] = str(self.path)
        log.info("metrics of all workers on http://%s:%d/metrics", self.host, self.port)
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self._env is None:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
        else:
            os.environ[metrics.MULTIPROC_ENV] = self._env
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def _supervise(
    settings: QuarrySettings, snapshots: Sequence[Path], root: Path | None, metrics_dir: Path | None
) -> None:
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no inherited threads or native state
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(settings, list(snapshots), root, current_format()),
            name=f"quarry-worker-{i}",
        )
        for i in range(settings.server.workers)
    ]
    for p in procs:
        p.start()
    log.info(
        "%d workers on %s:%d: pids %s",
        len(procs),
        settings.server.host,
        settings.server.port,
        [p.pid for p in procs],
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    from multiprocessing.connection import wait

    alive = list(procs)
    while alive:
        wait([p.sentinel for p in alive])
        for p in [p for p in alive if not p.is_alive()]:
            alive.remove(p)
            if metrics_dir is not None:
                from prometheus_client.multiprocess import mark_process_dead

                mark_process_dead(p.pid, str(metrics_dir))  # its live gauges no longer count
            if not stopping:
                log.error("worker %s exited with %s: stopping the others", p.pid, p.exitcode)
                stop()
    failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise SystemExit(f"workers failed with exit codes {failed}")


def _worker_main(
    settings: QuarrySettings, snapshots: list[Path], root: Path | None, log_format: LogFormat
) -> None:
    configure_logging(settings.log_level, log_format)
    asyncio.run(serve(settings, snapshots, root))


async def serve(settings: QuarrySettings, snapshots: Sequence[Path], root: Path | None = None) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully."""
    import signal

    store = SnapshotRoot(root) if root is not None else None
    registry = load_collections(settings, snapshots, store)
    server = QuarryServer(settings, registry, store)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
