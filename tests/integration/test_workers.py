"""`quarry serve --workers N`: N processes on one port (SO_REUSEPORT) answer, stop together on SIGTERM,
and follow a Reload answered by any one of them (through the snapshot root's pointer)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from common.snapshot_root import SnapshotRoot
from common.v1 import admin_pb2, admin_pb2_grpc, search_pb2, search_pb2_grpc
from tests.conftest import free_port, wait_serving
from tests.integration.test_lifecycle import AUTH, TOKEN, publish

pytestmark = pytest.mark.integration


def _start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "quarry.cli", "--log-level", "WARNING", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    return proc, wait_serving(proc, f"127.0.0.1:{port}", "tiny")


def _workers(parent: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def _versions(target: str, n: int) -> set[str]:
    seen = set()
    for _ in range(n):  # a fresh connection each time: the kernel spreads them over the workers
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            res = search_pb2_grpc.SearchServiceStub(ch).Search(
                search_pb2.SearchRequest(collection="tiny", query="paris"), timeout=10
            )
            seen.add(res.snapshot_version)
    return seen


def test_workers_share_the_port_and_stop_together(tiny_snapshot: Path) -> None:
    proc, target = _start(["--snapshot", str(tiny_snapshot), "--workers", "2"])
    try:
        workers = _workers(proc.pid)
        assert len(workers) == 2
        cpu0 = {w: _cpu(w) for w in workers}
        assert len(_versions(target, 60)) == 1
        busy = [w for w in workers if _cpu(w) > cpu0[w]]
        assert len(busy) == 2, "both workers answered requests"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def _answering_pids(tiny_snapshot: Path, tmp_path: Path, env: dict[str, str]) -> tuple[int, set[int]]:
    """Searches sent for 4 s over ONE channel to a 2-worker server: how many answered, and the pids of
    the workers that answered them (from their access-log lines)."""
    port = free_port()
    tmp_path.mkdir()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "quarry.cli", "--log-level", "INFO", "serve", "--port", str(port)]
    cmd += ["--snapshot", str(tiny_snapshot), "--workers", "2"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stderr=log)
        try:
            target = wait_serving(proc, f"127.0.0.1:{port}", "tiny")
            mark = log_path.stat().st_size  # the readiness probes' own connections come before
            answered = 0
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = search_pb2_grpc.SearchServiceStub(ch)
                end = time.monotonic() + 4.0
                while time.monotonic() < end:
                    res = stub.Search(search_pb2.SearchRequest(collection="tiny", query="paris"), timeout=10)
                    answered += bool(res.hits)
                    time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    text = log_path.read_bytes()[mark:].decode(errors="replace")
    return answered, {int(p) for p in re.findall(r"quarry\.access\[(\d+)\]: Search OK", text)}


def test_ageing_connections_spreads_one_channel_over_the_workers(tiny_snapshot: Path, tmp_path: Path) -> None:
    """The kernel hands workers connections, not requests: one long-lived channel stays on one worker.
    With server.max_connection_age_s each connection is closed gracefully once that old, the client
    reconnects by itself, and the new connection may land on the other worker; no RPC fails."""
    answered, pids = _answering_pids(tiny_snapshot, tmp_path / "plain", {})
    assert answered > 50 and len(pids) == 1, pids
    aged = {"QUARRY_SERVER__MAX_CONNECTION_AGE_S": "0.3", "QUARRY_SERVER__MAX_CONNECTION_AGE_GRACE_S": "2"}
    answered, pids = _answering_pids(tiny_snapshot, tmp_path / "aged", aged)  # ~13 connection lifetimes
    assert answered > 50 and len(pids) == 2, pids


def _cpu(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_a_reload_reaches_every_worker(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path / "root")
    v1 = publish(root, 1)
    env = {"QUARRY_ADMIN__TOKEN": TOKEN, "QUARRY_ADMIN__WATCH_INTERVAL_S": "0.2"}
    proc, target = _start(["--root", str(root.root), "--workers", "2"], env)
    try:
        assert _versions(target, 20) == {v1}
        v2 = publish(root, 2)
        with grpc.insecure_channel(target) as ch:
            reply = admin_pb2_grpc.AdminServiceStub(ch).Reload(
                admin_pb2.ReloadRequest(collection="tiny"), metadata=AUTH, timeout=60
            )
        assert reply.status.snapshot_version == v2
        deadline = time.monotonic() + 20
        while _versions(target, 20) != {v2}:
            assert time.monotonic() < deadline, "a worker kept serving the old generation"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_workers_need_a_fixed_port(tiny_snapshot: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "quarry.cli",
            "serve",
            "--snapshot",
            str(tiny_snapshot),
            "--workers",
            "2",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "needs a fixed port" in res.stderr
