"""`quarry serve --workers N`: N processes on one port (SO_REUSEPORT) answer, stop together on SIGTERM,
and follow a Reload answered by any one of them (through the snapshot root's pointer)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
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
    target = wait_serving(proc, f"127.0.0.1:{port}", "tiny")
    if "--workers" in args:
        # One worker answering is not all: the kernel deals connections to the listening ones only.
        n = int(args[args.index("--workers") + 1])
        deadline = time.monotonic() + 60
        while sum(_listens(w, port) for w in _workers(proc.pid)) < n:
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not all listen"
            time.sleep(0.1)
    return proc, target


def _listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (its own, under SO_REUSEPORT)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                return True
    return False


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


def test_workers_metrics_are_served_added_up(tiny_snapshot: Path, tmp_path: Path) -> None:
    """With server.metrics_port, the supervisor serves one /metrics for all workers: their counters
    summed, a gauge once (the live workers' largest), and the workers' files removed at the end."""
    mport = free_port()
    env = {"QUARRY_SERVER__METRICS_PORT": str(mport), "TMPDIR": str(tmp_path)}
    proc, target = _start(["--snapshot", str(tiny_snapshot), "--workers", "2"], env)
    url = f"http://127.0.0.1:{mport}/metrics"
    try:
        workers = _workers(proc.pid)
        assert len(workers) == 2
        (files,) = tmp_path.glob("quarry-metrics-*")  # the private directory the workers write to
        ok = ("quarry_grpc_requests_total", (("code", "OK"), ("method", "Search"), ("service", SEARCH)))
        before = _families(url).get(ok, 0.0)
        sent = 0
        while not all(_searches(files, w) for w in workers):  # until both workers answered Searches
            assert sent < 400, "one worker never answered"
            sent += 20
            assert len(_versions(target, 20)) == 1
        after = _families(url)
        assert after[ok] - before == sent  # every Search counted once, whichever worker answered it
        assert sum(_searches(files, w) for w in workers) == after[ok]
        generation = [k for k in after if k[0] == "quarry_generation_info"]
        assert len(generation) == 1 and after[generation[0]] == 1.0  # livemax: one series, no pid
        assert dict(generation[0][1])["collection"] == "tiny"
        items = ("quarry_collection_items", (("collection", "tiny"),))
        assert after[items] > 0
        branches = [v for (name, _), v in after.items() if name == "quarry_branch_results_total"]
        assert sum(branches) >= 60
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not files.exists()


SEARCH = "quarry.v1.SearchService"


def _generations(mport: int) -> dict[str, float]:
    """quarry_generation_info of the collection tiny by snapshot version, as the supervisor serves it."""
    return {
        dict(labels)["snapshot_version"]: v
        for (name, labels), v in _families(f"http://127.0.0.1:{mport}/metrics").items()
        if name == "quarry_generation_info" and dict(labels)["collection"] == "tiny"
    }


def _searches(files: Path, pid: int) -> float:
    """The Searches one worker counted, read from its own file (what the supervisor adds up)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    path = files / f"counter_{pid}.db"
    if not path.exists():  # created with the worker's first counted request
        return 0.0
    return sum(
        s.value
        for m in MultiProcessCollector.merge([str(path)])
        for s in m.samples
        if s.name == "quarry_grpc_requests_total" and s.labels.get("method") == "Search"
    )


def _families(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text endpoint: (name, sorted labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


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
    mport = free_port()
    env = {"QUARRY_ADMIN__TOKEN": TOKEN, "QUARRY_ADMIN__WATCH_INTERVAL_S": "0.2"}
    env["QUARRY_SERVER__METRICS_PORT"] = str(mport)
    proc, target = _start(["--root", str(root.root), "--workers", "2"], env)
    try:
        assert _versions(target, 20) == {v1}
        assert _generations(mport) == {v1: 1.0}
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
        # The old generation's series cannot be removed from the workers' files: it reads 0.
        assert _generations(mport) == {v1: 0.0, v2: 1.0}
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
