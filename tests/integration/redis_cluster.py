"""A real Redis Cluster for tests: three masters (no replicas) on free loopback ports.

`start_redis_cluster` is the importable helper; the `redis_cluster` fixture shares one cluster per session
(tests must not break it), and `private_redis_cluster` gives a test its own cluster that it may damage
(kill or stop a master). Both skip with a reason when `redis-server` / `redis-cli` are not installed. A
test module uses them by importing `redis_cluster_fixture` / `private_redis_cluster_fixture`.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import free_port

HOST = "127.0.0.1"


@dataclass
class RedisClusterProcs:
    """Running cluster nodes: `ports[i]` is a master served by `procs[i]`, its files under `dir`."""

    dir: Path
    ports: list[int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _clients: dict[int, redis.Redis] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """One node's URL: a cluster client discovers the others from it."""
        return f"redis://{HOST}:{self.ports[0]}"

    def node(self, port: int) -> redis.Redis:
        """A plain client for one node (CLUSTER commands, DBSIZE, EXISTS on that node only)."""
        if port not in self._clients:
            # No retries: redis-py's default backs off for seconds on a node that is gone (SHUTDOWN
            # closes the connection it was sent on).
            no_retry = Retry(NoBackoff(), 0)
            self._clients[port] = redis.Redis(host=HOST, port=port, socket_timeout=2.0, retry=no_retry)
        return self._clients[port]

    def port_of(self, key: str) -> int:
        """The master that owns `key`'s slot, as the cluster itself reports it."""
        any_node = self.node(self.ports[0])
        slot = int(any_node.execute_command("CLUSTER KEYSLOT", key))
        for start, end, master, *_replicas in any_node.execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise AssertionError(f"slot {slot} of {key!r} is not served by any node")

    def state_ok(self, port: int) -> bool:
        """Whether the node says `cluster_state:ok` (it serves keys) rather than `fail`."""
        return _cluster_ok(self.node(port))

    def proc(self, port: int) -> subprocess.Popen[bytes]:
        return self.procs[self.ports.index(port)]

    def kill(self, port: int) -> None:
        """SIGKILL one node: no goodbye to clients or to the other nodes, as a crashed host would do."""
        proc = self.proc(port)
        proc.kill()
        proc.wait(timeout=10)

    def pause(self, port: int) -> None:
        """SIGSTOP one node: the kernel still accepts its connections, nothing ever answers (a hung host)."""
        self.proc(port).send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.proc(port).send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for port, proc in zip(self.ports, self.procs, strict=False):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused node could not act on SHUTDOWN
                with contextlib.suppress(redis.RedisError):
                    self.node(port).shutdown(nosave=True)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for client in self._clients.values():
            client.close()


def _cluster_ok(r: redis.Redis) -> bool:
    try:
        info = r.execute_command("CLUSTER INFO")
    except redis.RedisError:
        return False
    # redis-py parses CLUSTER INFO into a dict of its `field:value` lines.
    return isinstance(info, dict) and info.get("cluster_state") == "ok"


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def _poll(ready: Callable[[], bool], attempts: int = 1000) -> bool:
    """True once `ready()` is; a bounded wait (≈ 20 s) so a broken start fails the test, never hangs it."""
    for _ in range(attempts):
        if ready():
            return True
        time.sleep(0.02)
    return False


def require_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip(
            "Redis Cluster tests need the redis-server and redis-cli binaries (apt-get install redis-server)"
        )
    return server, cli


def start_redis_cluster(d: Path, masters: int = 3, extra: Sequence[str] = ()) -> RedisClusterProcs:
    """Start `masters` cluster-enabled redis-servers under `d`, join them with `redis-cli --cluster
    create` (no replicas) and wait until every node says cluster_state:ok. `extra` is appended to every
    server's command line. The caller stops it (`stop`)."""
    server, cli = require_binaries()
    # Each node also listens on a cluster bus port (default: port + 10000, which may be taken, or past
    # 65535 for an ephemeral port), so both are picked free and named explicitly.
    ports = [free_port() for _ in range(masters)]
    procs = RedisClusterProcs(d, ports)
    try:
        for port in ports:
            # Not daemonized: the test process stays the parent and reaps the node when it exits
            # (a daemonized server is re-parented to PID 1, which need not reap it).
            procs.procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port", str(port),
                        "--cluster-port", str(free_port()),
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", str(d / f"nodes-{port}.conf"),
                        "--bind", HOST,
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        "--dir", str(d),
                        "--pidfile", str(d / f"redis-{port}.pid"),
                        "--logfile", str(d / f"redis-{port}.log"),
                        *extra,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in ports:
            if not _poll(lambda port=port: _ping(procs.node(port))):
                raise RuntimeError(f"redis-server on {port} did not start: see {d / f'redis-{port}.log'}")
        nodes = [f"{HOST}:{p}" for p in ports]
        create = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        for port in ports:
            if not _poll(lambda port=port: procs.state_ok(port)):
                raise RuntimeError(f"node {port} never reported cluster_state:ok: see {d}")
    except BaseException:
        procs.stop()
        raise
    return procs


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """One 3-master cluster shared by the session's tests (do not kill its nodes)."""
    require_binaries()
    procs = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(name="private_redis_cluster")
def private_redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A 3-master cluster of the test's own, which it may damage. The surviving masters keep serving
    their slots when one dies (full coverage not required), as a fail-open deployment would configure it."""
    require_binaries()
    procs = start_redis_cluster(
        tmp_path_factory.mktemp("redis-cluster-private"), extra=["--cluster-require-full-coverage", "no"]
    )
    try:
        yield procs
    finally:
        procs.stop()
