"""ReplicaSet against real grpc.aio servers on loopback: each replica serves grpc.health.v1.Health through a
servicer whose delay, failure status or whole server the test controls, and every call goes through
`ReplicaSet.call`. Assertions are on outcomes and counters, never on durations."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health_pb2 import HealthCheckResponse as Response
from prometheus_client import REGISTRY

from retriever.cluster.replicas import Outcome, ReplicaPolicy, ReplicaSet, ShardUnavailable
from retriever.core.errors import Unavailable

pytestmark = pytest.mark.integration

STALL_S = 30.0  # far beyond any timeout in this file: a stalled replica answers only by being cancelled


class Replica(health_pb2_grpc.HealthServicer):
    """One replica: a real grpc.aio server on 127.0.0.1 whose Check the test steers."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.code: grpc.StatusCode | None = None
        self.calls = 0
        self.cancelled = 0
        self.peers: set[str] = set()
        self.reached: dict[int, asyncio.Event] = {}
        self.port = 0
        self.server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"could not bind 127.0.0.1:{port}"
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)  # no grace: in-flight calls are cut off, like a killed process
            self.server = None

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> Response:
        self.calls += 1
        self.peers.add(context.peer())
        if self.calls in self.reached:
            self.reached[self.calls].set()
        if self.code is not None:
            await context.abort(self.code, f"told to answer {self.code.name}")
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Response(status=Response.SERVING)


Cluster = Callable[[int], Awaitable[list[Replica]]]


@pytest_asyncio.fixture(loop_scope="session")
async def cluster() -> AsyncIterator[Cluster]:
    """Starts n replicas on free loopback ports; stops them all after the test."""
    started: list[Replica] = []

    async def make(n: int) -> list[Replica]:
        fresh = [Replica() for _ in range(n)]
        for r in fresh:
            await r.start()
        started.extend(fresh)
        return fresh

    yield make
    for r in started:
        await r.stop()


def check(
    seen: list[grpc.aio.Channel] | None = None,
) -> Callable[[grpc.aio.Channel, float], Awaitable[Response]]:
    def fn(channel: grpc.aio.Channel, timeout: float) -> Awaitable[Response]:
        if seen is not None:
            seen.append(channel)
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)

    return fn


def metric(name: str, shard: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"quarry_cluster_{name}_total", {"shard": shard, **labels}) or 0.0


def by_address(rs: ReplicaSet) -> dict[str, dict[str, Any]]:
    return {s["address"]: s for s in rs.status()}


async def calls(rs: ReplicaSet, n: int, *, batch: int = 10) -> list[Outcome[Response]]:
    """n calls, `batch` at a time; any failed call fails the test."""
    out: list[Outcome[Response]] = []
    for i in range(0, n, batch):
        out += await asyncio.gather(*(rs.call(check(), 10.0) for _ in range(min(batch, n - i))))
    return out


async def eventually(cond: Callable[[], bool], what: str, *, tries: int = 500) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_policy_and_targets_are_validated() -> None:
    with pytest.raises(ValueError, match="hedge_quantile"):
        ReplicaPolicy(hedge_quantile=1.5)
    with pytest.raises(ValueError, match="hedge_max_ms"):
        ReplicaPolicy(hedge_min_ms=5, hedge_max_ms=1)
    for bad in ("no-port", "unix:///tmp/sock", "dns://8.8.8.8/svc:50051", "dns:///svc"):
        with pytest.raises(ValueError):
            ReplicaSet("s", [bad], ReplicaPolicy())
    with pytest.raises(ValueError, match="no replica targets"):
        ReplicaSet("s", [], ReplicaPolicy())


async def test_calls_spread_over_healthy_replicas(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    replicas = await cluster(3)
    shard = request.node.name
    async with ReplicaSet(shard, [r.address for r in replicas], ReplicaPolicy(hedge=False)) as rs:
        outcomes = await calls(rs, 300)
        status = by_address(rs)
    assert all(o.attempts == 1 and not o.hedged for o in outcomes)
    assert sum(r.calls for r in replicas) == 300
    for r in replicas:
        assert r.calls >= 30, f"{r.address} got {r.calls} of 300 calls"
        assert status[r.address]["in_flight"] == 0
        assert status[r.address]["failures"] == 0 and not status[r.address]["ejected"]
        assert status[r.address]["p50_ms"] is not None
        assert status[r.address]["p95_ms"] >= status[r.address]["p50_ms"]
    assert {o.replica for o in outcomes} == {r.address for r in replicas}
    assert metric("calls", shard, outcome="ok") == 300


async def test_power_of_two_choices_avoids_the_busy_replica(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    busy, idle = await cluster(2)
    busy.delay = STALL_S
    async with ReplicaSet(request.node.name, [busy.address, idle.address], ReplicaPolicy(hedge=False)) as rs:

        def placed(task: asyncio.Task[Outcome[Response]]) -> bool:
            return task.done() or by_address(rs)[busy.address]["in_flight"] == 1

        stuck: asyncio.Task[Outcome[Response]] | None = None
        for _ in range(100):  # until one call sticks on the busy replica; the others answer at once
            task = asyncio.create_task(rs.call(check(), 10.0))
            await eventually(functools.partial(placed, task), "the call was placed")
            if not task.done():
                stuck = task
                break
        assert stuck is not None
        # With two replicas both are always the two choices: every call goes to the one with less in flight.
        outcomes = [await rs.call(check(), 10.0) for _ in range(50)]
        assert {o.replica for o in outcomes} == {idle.address}
        stuck.cancel()
        await asyncio.wait([stuck])


async def test_killed_replica_fails_over_is_ejected_and_readmitted(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    replicas = await cluster(3)
    victim = replicas[0]
    for r in replicas:
        r.delay = 0.002  # calls overlap, so the victim dies with calls in flight
    victim.reached[20] = asyncio.Event()
    shard = request.node.name
    policy = ReplicaPolicy(hedge=False)
    killed = asyncio.Event()

    async def worker(rs: ReplicaSet) -> list[Outcome[Response]]:
        out: list[Outcome[Response]] = []
        after = 0
        while after < 40:  # keep going until 40 calls of this worker ran after the kill
            out.append(await rs.call(check(), 10.0))
            after += killed.is_set()
        return out

    async with ReplicaSet(shard, [r.address for r in replicas], policy) as rs:
        load = asyncio.gather(*(worker(rs) for _ in range(8)))
        await victim.reached[20].wait()
        await victim.stop()
        killed.set()
        outcomes = [o for batch in await load for o in batch]  # gather raises if any call failed
        assert len(outcomes) >= 8 * 40
        assert any(o.attempts > 1 for o in outcomes)
        assert metric("failovers", shard) >= 1
        assert metric("ejections", shard) >= 1
        assert metric("calls", shard, outcome="failed") == 0
        assert by_address(rs)[victim.address]["failures"] >= policy.eject_failures
        # Without ejection most of the 320 calls after the kill would start on the dead replica (it fails
        # fast, so it has nothing in flight and power of two choices prefers it): more than a third.
        assert metric("failovers", shard) < 320 / 3

        answered = victim.calls
        await victim.start(victim.port)  # the replica comes back on its address
        for _ in range(100):
            await asyncio.sleep(policy.eject_s / 2)
            await calls(rs, 6)
            if victim.calls > answered:
                break
        assert victim.calls > answered, "the restarted replica was never tried again"
        back = by_address(rs)[victim.address]
        assert back["failures"] == 0 and not back["ejected"]
        assert metric("calls", shard, outcome="failed") == 0


async def test_non_retryable_status_is_raised_at_once(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    replicas = await cluster(3)
    for r in replicas:
        r.code = grpc.StatusCode.INVALID_ARGUMENT
    shard = request.node.name
    async with ReplicaSet(shard, [r.address for r in replicas], ReplicaPolicy()) as rs:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rs.call(check(), 10.0)
        assert all(s["failures"] == 0 for s in rs.status())

        async def broken(channel: grpc.aio.Channel, remaining_s: float) -> Response:
            raise ZeroDivisionError  # not an RPC's failure: no other replica can help

        with pytest.raises(ZeroDivisionError):
            await rs.call(broken, 10.0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sum(r.calls for r in replicas) == 1
    assert metric("failovers", shard) == 0
    assert metric("calls", shard, outcome="error") == 2


async def test_every_replica_down_raises_shard_unavailable_naming_them(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    replicas = await cluster(3)
    await replicas[0].stop()
    await replicas[1].stop()
    replicas[2].code = grpc.StatusCode.UNAVAILABLE  # up, but answers that it cannot serve
    shard = request.node.name
    async with ReplicaSet(shard, [r.address for r in replicas], ReplicaPolicy()) as rs:
        with pytest.raises(ShardUnavailable) as err:
            await rs.call(check(), 10.0)
    exc = err.value
    assert isinstance(exc, Unavailable)  # the server's one error mapper turns it into UNAVAILABLE
    assert exc.name == shard
    assert set(exc.tried) == {r.address for r in replicas}
    assert all(r.address in str(exc) for r in replicas)
    assert "told to answer UNAVAILABLE" in exc.tried[replicas[2].address]
    assert replicas[2].calls == 1, "each replica is tried once"
    assert metric("failovers", shard) == 2
    assert metric("calls", shard, outcome="failed") == 1


async def test_timeout_raises_shard_unavailable(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    (stalled,) = await cluster(1)
    stalled.delay = STALL_S
    shard = request.node.name
    async with ReplicaSet(shard, [stalled.address], ReplicaPolicy(hedge=False)) as rs:
        with pytest.raises(ShardUnavailable, match="no answer within 200 ms") as err:
            await rs.call(check(), 0.2)
        assert stalled.address in err.value.tried
        assert by_address(rs)[stalled.address]["failures"] == 1
        with pytest.raises(ShardUnavailable, match="no time left"):
            await rs.call(check(), 0.0)
        assert by_address(rs)[stalled.address]["failures"] == 1, "an expired deadline is not its fault"
    await eventually(lambda: stalled.cancelled == 1, "the replica saw its call's deadline")


async def test_stalled_replica_is_hedged_and_the_fast_one_wins(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    stalled, fast = await cluster(2)
    stalled.delay = STALL_S
    shard = request.node.name
    policy = ReplicaPolicy(hedge_min_ms=1.0, hedge_max_ms=50.0)
    async with ReplicaSet(shard, [stalled.address, fast.address], policy) as rs:
        # Two calls at once: power of two choices sends the second to the replica the first did not take,
        # so exactly one of them starts on the stalled replica.
        outcomes = await asyncio.gather(rs.call(check(), 10.0), rs.call(check(), 10.0))
        assert stalled.calls >= 1
        assert [o.replica for o in outcomes] == [fast.address, fast.address]
        won = [o for o in outcomes if o.hedge_won]
        assert len(won) == 1
        assert won[0].hedged and won[0].attempts == 2
        assert metric("hedges_won", shard) == 1
        assert metric("hedges", shard) >= 1
        await eventually(lambda: stalled.cancelled >= 1, "the losing attempt was cancelled on the replica")
        await eventually(lambda: all(s["in_flight"] == 0 for s in rs.status()), "no attempt left in flight")
        assert all(s["failures"] == 0 for s in rs.status()), "a cancelled loser is not a failure"


async def test_hedge_budget_caps_hedges(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    replicas = await cluster(2)
    for r in replicas:
        r.delay = 0.1  # every call is slower than the 5 ms threshold
    shard = request.node.name
    policy = ReplicaPolicy(hedge_min_ms=1.0, hedge_max_ms=5.0, hedge_budget=0.1, hedge_burst=2.0)
    n = 100
    async with ReplicaSet(shard, [r.address for r in replicas], policy) as rs:
        outcomes = await calls(rs, n, batch=20)
    hedged = sum(o.hedged for o in outcomes)
    assert hedged == metric("hedges", shard)
    assert hedged >= policy.hedge_burst, "the full bucket is spent"
    assert hedged <= policy.hedge_burst + n * policy.hedge_budget, f"{hedged} hedges over {n} calls"
    assert sum(o.attempts for o in outcomes) == n + hedged


async def test_dns_target_resolves_to_loopback_replica(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    (replica,) = await cluster(1)
    async with ReplicaSet(request.node.name, [f"dns:///localhost:{replica.port}"], ReplicaPolicy()) as rs:
        assert replica.address in by_address(rs)
        outcomes = await calls(rs, 20)
    assert {o.replica for o in outcomes} == {replica.address}
    assert replica.calls == 20


async def test_dns_refresh_opens_new_replicas_and_closes_vanished_ones(
    cluster: Cluster, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = await cluster(3)
    answer: list[Replica] | None = [a, b, b]  # a duplicate answer is one replica
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        # A headless service's records, on the only address the test may use: one port per "pod".
        asked.append(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", r.port)) for r in answer]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    seen: dict[str, grpc.aio.Channel] = {}

    async def call_until(rs: ReplicaSet, replica: Replica) -> None:
        for _ in range(200):
            used: list[grpc.aio.Channel] = []
            out = await rs.call(check(used), 10.0)
            seen[out.replica] = used[-1]
            if out.replica == replica.address:
                return
        raise AssertionError(f"no call reached {replica.address}")

    policy = ReplicaPolicy(hedge=False, dns_refresh_s=0.05)
    async with ReplicaSet(request.node.name, ["dns:///shard-0.test:50051"], policy) as rs:
        assert set(by_address(rs)) == {a.address, b.address}
        await call_until(rs, a)
        await call_until(rs, b)

        answer = [b, c]
        await eventually(lambda: set(by_address(rs)) == {b.address, c.address}, "the refresh saw b and c")
        await call_until(rs, c)
        await eventually(
            lambda: seen[a.address].get_state() == grpc.ChannelConnectivity.SHUTDOWN, "a's channel closed"
        )
        assert seen[b.address].get_state() != grpc.ChannelConnectivity.SHUTDOWN

        answer = None  # DNS fails: the set keeps what it had
        resolved = len(asked)
        await eventually(lambda: len(asked) >= resolved + 3, "three more refreshes")
        assert set(by_address(rs)) == {b.address, c.address}
        await calls(rs, 10)
    assert set(asked) == {"shard-0.test"}


async def test_each_replica_set_has_its_own_connection(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    (replica,) = await cluster(1)
    sets = [ReplicaSet(f"{request.node.name}-{i}", [replica.address], ReplicaPolicy()) for i in range(2)]
    for rs in sets:
        await rs.call(check(), 10.0)
    for rs in sets:
        await rs.close()
    # One client port per set: the global subchannel pool would have shared one connection.
    assert len(replica.peers) == 2


async def test_cancelling_a_call_cancels_its_attempts(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    (stalled,) = await cluster(1)
    stalled.delay = STALL_S
    stalled.reached[1] = asyncio.Event()
    async with ReplicaSet(request.node.name, [stalled.address], ReplicaPolicy()) as rs:
        task = asyncio.create_task(rs.call(check(), 10.0))
        await stalled.reached[1].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: rs.status()[0]["in_flight"] == 0, "the attempt was released")
        await eventually(lambda: stalled.cancelled == 1, "the replica saw the cancellation")
        assert rs.status()[0]["failures"] == 0


async def test_close_closes_channels(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    replicas = await cluster(2)
    shard = request.node.name
    rs = ReplicaSet(shard, [r.address for r in replicas], ReplicaPolicy(hedge=False))
    used: list[grpc.aio.Channel] = []
    for _ in range(20):
        await rs.call(check(used), 10.0)
    assert len({id(ch) for ch in used}) == 2
    await rs.close()
    assert all(ch.get_state() == grpc.ChannelConnectivity.SHUTDOWN for ch in used)
    assert rs.status() == []
    with pytest.raises(ShardUnavailable, match="closed"):
        await rs.call(check(), 10.0)
    await rs.close()  # idempotent
