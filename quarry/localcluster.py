"""A shard set served on one machine as real separate processes: N shards × R replicas (`quarry serve
--role shard`) and a root (`--role root`) on free 127.0.0.1 ports, over one snapshot root.

The loopback stand-in for a Kubernetes deployment (deploy/k8s/cluster/), used by the tests and by
`quarry bench cluster`: replicas can be killed, restarted or paused (SIGSTOP/SIGCONT: a stalled process,
like a long GC pause or a noisy neighbour) to see what the root does about it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SHARD_SERVICE = "quarry.v1.ShardService"
SEARCH_SERVICE = "quarry.v1.SearchService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    args: list[str]
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([*self.args, "--port", str(self.port)], env=self.env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.send(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.send(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)


@dataclass
class LocalCluster:
    """`shards` × `replicas` shard servers and one root over the snapshot root `root`."""

    root: Path
    shards: int
    replicas: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "WARNING"
    root_args: Sequence[str] = ()
    shard_args: Sequence[str] = ()
    procs: list[list[Process]] = field(default_factory=list)
    root_proc: Process | None = None
    _pausers: dict[tuple[int, int], threading.Event] = field(default_factory=dict)

    def _cmd(self) -> list[str]:
        return [sys.executable, "-m", "quarry.cli", "--log-level", self.log_level, "serve"]

    def start(self, timeout_s: float = 180.0) -> LocalCluster:
        env = {**os.environ, **self.env}
        for s in range(self.shards):
            group = []
            for _r in range(self.replicas):
                args = [*self._cmd(), "--root", str(self.root), "--role", "shard", "--shard", str(s)]
                group.append(Process([*args, *self.shard_args], free_port(), env))
            self.procs.append(group)
        shards = ";".join(",".join(p.target for p in group) for group in self.procs)
        root_args = [*self._cmd(), "--root", str(self.root), "--role", "root", "--shards", shards]
        self.root_proc = Process([*root_args, *self.root_args], free_port(), env)
        replicas = [p for group in self.procs for p in group]
        for p in replicas:
            p.start()
        try:
            for p in replicas:
                wait_healthy(p, SHARD_SERVICE, timeout_s)
            # The root after its shards: its first calls would otherwise meet refused connections (and
            # gRPC's reconnect backoff), as a root rolled out before its shards would.
            self.root_proc.start()
            wait_healthy(self.root_proc, SEARCH_SERVICE, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def target(self) -> str:
        assert self.root_proc is not None
        return self.root_proc.target

    def replica(self, shard: int, replica: int) -> Process:
        return self.procs[shard][replica]

    def kill(self, shard: int, replica: int) -> None:
        """SIGKILL: the replica vanishes mid-request, as a crashed pod does."""
        p = self.replica(shard, replica)
        p.stop(signal.SIGKILL)

    def restart(self, shard: int, replica: int, timeout_s: float = 120.0) -> None:
        p = self.replica(shard, replica)
        p.stop()
        p.start()
        wait_healthy(p, SHARD_SERVICE, timeout_s)

    def restart_root(self, env: Mapping[str, str] | None = None, timeout_s: float = 120.0) -> None:
        """Restart the root, with `env` over its environment (e.g. another setting)."""
        assert self.root_proc is not None
        self.root_proc.stop()
        self.root_proc.env = {**self.root_proc.env, **(env or {})}
        self.root_proc.start()
        wait_healthy(self.root_proc, SEARCH_SERVICE, timeout_s)

    def pause(self, shard: int, replica: int, stopped_ms: float, every_ms: float) -> None:
        """Stall a replica `stopped_ms` out of every `every_ms` (SIGSTOP/SIGCONT) until `resume`."""
        stop = threading.Event()
        self._pausers[(shard, replica)] = stop
        p = self.replica(shard, replica)

        def run() -> None:
            while not stop.is_set():
                p.send(signal.SIGSTOP)
                time.sleep(stopped_ms / 1000)
                p.send(signal.SIGCONT)
                stop.wait((every_ms - stopped_ms) / 1000)

        threading.Thread(target=run, daemon=True, name=f"pause-{shard}-{replica}").start()

    def resume(self, shard: int, replica: int) -> None:
        stop = self._pausers.pop((shard, replica), None)
        if stop is not None:
            stop.set()
            time.sleep(0.05)
            self.replica(shard, replica).send(signal.SIGCONT)

    def pids(self) -> dict[str, int]:
        out = {}
        for s, group in enumerate(self.procs):
            for r, p in enumerate(group):
                if p.proc is not None:
                    out[f"shard{s}.{r}"] = p.proc.pid
        if self.root_proc is not None and self.root_proc.proc is not None:
            out["root"] = self.root_proc.proc.pid
        return out

    def stop(self) -> None:
        for key in list(self._pausers):
            self.resume(*key)
        for p in ([self.root_proc] if self.root_proc else []) + [p for g in self.procs for p in g]:
            p.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_healthy(p: Process, service: str, timeout_s: float) -> None:
    """Until `p` reports SERVING for `service` (grpc.health.v1); raises if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not p.alive():
            code = p.proc.returncode if p.proc is not None else None
            raise RuntimeError(f"{' '.join(p.args[3:])} exited with {code}")
        try:
            with grpc.insecure_channel(p.target) as ch:
                res = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            if res.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.25)
    p.stop(signal.SIGKILL)
    raise TimeoutError(f"{p.target} did not report {service} SERVING within {timeout_s:.0f} s")
