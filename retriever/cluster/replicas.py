"""One shard's replicas behind one client: power-of-two-choices picking, hedging, failover and ejection.

`ReplicaSet.call(fn, timeout)` runs `fn(channel, remaining_s)` (one RPC) on one replica: the less busy (in
flight) of two random non-ejected ones. Hedging follows "The Tail at Scale" (Dean & Barroso, 2013): when
the attempt has not answered after this set's recent p95 latency, one hedge goes to another replica, the
first answer wins and the loser is cancelled. p95 because then only the slowest ~5% of calls hedge (~5%
extra load) while a stalled replica costs a call about p95 instead of its timeout. The threshold is
clamped to [hedge_min_ms, hedge_max_ms]; until 20 calls succeeded it is hedge_min_ms × 10. The window holds
call latencies as the caller saw them, so a call a hedge rescued still counts at least the threshold and
hedging does not drag its own trigger down.
A token bucket caps hedges: each call adds `hedge_budget` tokens (up to `hedge_burst`; it starts full), a
hedge takes one, so hedges ≤ hedge_burst + hedge_budget × calls. When a whole shard is slow, p95 triggers
on many calls and hedges would only double its load; the budget stops that.
A status in `retry_codes` (or a channel closed under the call) fails over at once to a replica not yet
tried; any other status is the answer and is raised; running out of time raises ShardUnavailable.
`eject_failures` consecutive failures (deadlines included) eject a replica for `eject_s`; then one failed
probe ejects it again and a success readmits it. Why: a dead replica fails fast, so it has nothing in
flight and power of two choices would prefer it. When every replica is ejected they are tried anyway.
"dns:///name:port" targets are re-resolved every `dns_refresh_s` (each address is a replica, as behind a
Kubernetes headless service); one channel per address, with its own connection (local subchannel pool).

Metrics (label `shard` = the set's name):
- quarry_cluster_calls_total{shard,outcome}: calls by outcome: ok; failed (ShardUnavailable, no replica
  answered in time); error (a replica answered with a non-retryable status, raised to the caller).
- quarry_cluster_hedges_total{shard}: hedges sent.
- quarry_cluster_hedges_won_total{shard}: calls the hedge answered first.
- quarry_cluster_failovers_total{shard}: attempts started because an earlier one failed.
- quarry_cluster_ejections_total{shard}: ejections (a failed probe after `eject_s` counts again).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlsplit

import grpc
from prometheus_client import Counter

from retriever.core.errors import Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_DNS = "dns:///"
# Below this many samples a percentile is noise; hedge at hedge_min_ms × _WARMUP_FACTOR meanwhile.
_MIN_SAMPLES = 20
_WARMUP_FACTOR = 10.0
# A threshold this many calls stale costs less than sorting the whole window on every call.
_REQUANTILE_EVERY = 16

CALLS = Counter(
    "quarry_cluster_calls", "Replica-set calls by outcome (ok, failed, error)", ["shard", "outcome"]
)
HEDGES = Counter("quarry_cluster_hedges", "Hedged second attempts sent", ["shard"])
HEDGES_WON = Counter("quarry_cluster_hedges_won", "Calls the hedged attempt answered first", ["shard"])
FAILOVERS = Counter("quarry_cluster_failovers", "Attempts started because an earlier one failed", ["shard"])
EJECTIONS = Counter("quarry_cluster_ejections", "Replicas ejected after consecutive failures", ["shard"])

DEFAULT_RETRY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True)
class ReplicaPolicy:
    """How one shard's replica set hedges, fails over and ejects (see the module docstring)."""

    hedge: bool = True
    hedge_quantile: float = 0.95  # to the percent (statistics.quantiles into 100 parts)
    hedge_min_ms: float = 2.0
    hedge_max_ms: float | None = None
    hedge_budget: float = 0.1
    #: Hedges the bucket holds: how many a calm set may send at once before the budget rate applies.
    hedge_burst: float = 10.0
    latency_window: int = 512
    eject_failures: int = 3
    eject_s: float = 1.0
    retry_codes: frozenset[grpc.StatusCode] = DEFAULT_RETRY_CODES
    dns_refresh_s: float = 5.0

    def __post_init__(self) -> None:
        problems = [
            what
            for bad, what in (
                (not 0.01 <= self.hedge_quantile <= 0.99, "hedge_quantile must be in [0.01, 0.99]"),
                (self.hedge_min_ms < 0, "hedge_min_ms must be >= 0"),
                (
                    self.hedge_max_ms is not None and self.hedge_max_ms < self.hedge_min_ms,
                    "hedge_max_ms must be >= hedge_min_ms",
                ),
                (not 0 <= self.hedge_budget <= 1, "hedge_budget must be in [0, 1]"),
                (self.hedge_burst < 1, "hedge_burst must be >= 1"),
                (self.latency_window < 1, "latency_window must be >= 1"),
                (self.eject_failures < 1, "eject_failures must be >= 1"),
                (self.eject_s < 0, "eject_s must be >= 0"),
                (self.dns_refresh_s <= 0, "dns_refresh_s must be > 0"),
            )
            if bad
        ]
        if problems:
            raise ValueError("; ".join(problems))


class ShardUnavailable(Unavailable):
    """No replica of the shard answered: every one failed, or the call's timeout passed."""

    def __init__(self, name: str, detail: str, tried: Mapping[str, str] | None = None) -> None:
        super().__init__(f"shard {name} unavailable: {detail}")
        self.name = name
        self.detail = detail
        #: address -> why it did not answer, for every replica this call tried.
        self.tried: dict[str, str] = dict(tried or {})


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    replica: str
    attempts: int
    hedged: bool
    hedge_won: bool
    latency_ms: float


@dataclass(eq=False)
class _Replica:
    address: str
    channel: grpc.aio.Channel
    latencies: deque[float]
    in_flight: int = 0
    failures: int = 0
    ejected_until: float = 0.0

    def release(self, _task: object) -> None:
        # A done callback, not a `finally` in the attempt: a task cancelled before its first step never
        # runs its body, and the count would leak.
        self.in_flight -= 1

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now


@dataclass(eq=False)
class _Attempt:
    replica: _Replica
    started: float
    hedge: bool


def _percentile(samples: Iterable[float], q: float) -> float | None:
    data = list(samples)
    if len(data) < 2:
        return data[0] if data else None
    return statistics.quantiles(data, n=100, method="inclusive")[min(98, max(0, round(q * 100) - 1))]


def _host_port(hostport: str) -> tuple[str, int]:
    parts = urlsplit("//" + hostport)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.query or parts.username:
        raise ValueError(f"replica target {hostport!r}: expected host:port or dns:///name:port")
    return parts.hostname, port


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _retrieve(task: asyncio.Task[Any]) -> None:
    # A loser that finished with an error before its cancel landed must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()


class ReplicaSet:
    """The replicas of one shard, called as one (see the module docstring). Use inside one event loop;
    channels open on the first `call` (or `start`)."""

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        policy: ReplicaPolicy,
        *,
        channel_options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if not targets:
            raise ValueError(f"shard {name}: no replica targets")
        self.name = name
        self.policy = policy
        self._static: list[str] = []
        self._dns: dict[str, tuple[str, int]] = {}
        for target in dict.fromkeys(targets):
            if target.startswith(_DNS):
                self._dns[target] = _host_port(target.removeprefix(_DNS))
            elif "://" in target:
                raise ValueError(
                    f"replica target {target!r}: only dns:/// (no DNS server authority) or host:port"
                )
            else:
                _host_port(target)
                self._static.append(target)
        self._credentials = credentials
        backoff_ms = max(100, round(policy.eject_s * 1000))
        self._options: dict[str, Any] = {
            # gRPC's reconnect backoff grows to 2 minutes: a replica back from a restart would stay
            # unreachable (failing every probe) long after its ejection ended; this way it is back in ~5 s.
            "grpc.initial_reconnect_backoff_ms": backoff_ms,
            "grpc.max_reconnect_backoff_ms": max(backoff_ms, 5000),
            **dict(channel_options),
            # Otherwise every channel in the process to one address shares one connection (the global
            # subchannel pool): another set's or a health checker's channel would share this replica's
            # stream limit, reconnect backoff and fate, and close() here would not drop the connection.
            "grpc.use_local_subchannel_pool": 1,
        }
        self._replicas: dict[str, _Replica] = {}
        self._resolved: dict[str, tuple[str, ...]] = {}
        self._window: deque[float] = deque(maxlen=policy.latency_window)
        self._threshold_ms: float | None = None
        self._fresh = 0
        self._tokens = policy.hedge_burst
        self._background: set[asyncio.Task[Any]] = set()
        self._draining: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._calls = {outcome: CALLS.labels(name, outcome) for outcome in ("ok", "failed", "error")}
        self._hedges = HEDGES.labels(name)
        self._hedges_won = HEDGES_WON.labels(name)
        self._failovers = FAILOVERS.labels(name)
        self._ejections = EJECTIONS.labels(name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Resolves the DNS targets and opens (and starts connecting) every channel; `call` does this on
        first use. Idempotent."""
        async with self._start_lock:
            if self._started or self._closed:
                return
            for target in self._static:
                self._open(target, None)
            if self._dns:
                await self._refresh()
                self._refresher = asyncio.create_task(self._refresh_forever(), name=f"dns {self.name}")
            self._started = True

    # The timeout is a parameter, not an `asyncio.timeout` around the call: each attempt's RPC must carry
    # what is left of it as its own gRPC deadline, so the replica stops working when the caller stops.
    async def call(
        self,
        fn: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        timeout: float,  # noqa: ASYNC109
    ) -> Outcome[T]:
        """`fn(channel, remaining_s)` on one replica (a hedge and failovers on others when needed); the
        first success. Raises a non-retryable status's AioRpcError as-is, ShardUnavailable otherwise."""
        if not self._started:
            await self.start()
        if self._closed or timeout <= 0:
            # An expired deadline must not count as a failure of whichever replica would have been tried.
            self._calls["failed"].inc()
            raise ShardUnavailable(self.name, "the replica set is closed" if self._closed else "no time left")
        p = self.policy
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._tokens = min(p.hedge_burst, self._tokens + p.hedge_budget)
        hedge_delay = self._hedge_delay_s()
        running: dict[asyncio.Task[T], _Attempt] = {}
        used: set[str] = set()
        why: dict[str, str] = {}
        attempts = 0
        hedged = False

        def launch(replica: _Replica, hedge: bool) -> None:
            nonlocal attempts
            replica.in_flight += 1
            task = asyncio.create_task(self._attempt(fn, replica.channel, deadline))
            task.add_done_callback(replica.release)
            running[task] = _Attempt(replica, time.monotonic(), hedge)
            used.add(replica.address)
            attempts += 1

        try:
            first = self._pick(used, ejected_ok=True)
            if first is None:
                raise ShardUnavailable(self.name, "no replica addresses (DNS resolved none yet)")
            launch(first, False)
            while running:
                hedge_at = None
                if hedge_delay is not None and len(running) == 1:
                    hedge_at = next(iter(running.values())).started + hedge_delay
                wake = deadline if hedge_at is None else min(deadline, hedge_at)
                done, _ = await asyncio.wait(
                    running, timeout=max(0.0, wake - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
                )
                now = time.monotonic()
                if not done:
                    if now >= deadline:
                        for attempt in running.values():
                            self._failed(attempt.replica, why, "no answer before the deadline")
                        break
                    hedge_delay = None  # one hedging decision per call
                    other = self._pick(used, ejected_ok=False)
                    # The epsilon: budget tokens are sums of fractions like 0.1, which floats round down.
                    if other is not None and self._tokens >= 1 - 1e-9:
                        self._tokens -= 1
                        hedged = True
                        self._hedges.inc()
                        launch(other, True)
                    continue
                # Several may finish in one step: a success among them wins over their errors.
                for task in sorted(done, key=lambda t: t.cancelled() or t.exception() is not None):
                    attempt = running.pop(task)
                    replica = attempt.replica
                    if not task.cancelled() and task.exception() is None:
                        value = task.result()
                        latency_ms = (now - t0) * 1000
                        self._succeeded(replica, (now - attempt.started) * 1000, latency_ms)
                        self._calls["ok"].inc()
                        if attempt.hedge:
                            self._hedges_won.inc()
                        return Outcome(value, replica.address, attempts, hedged, attempt.hedge, latency_ms)
                    self._failed(replica, why, self._retry_reason(task))
                    nxt = self._pick(used, ejected_ok=True) if time.monotonic() < deadline else None
                    if nxt is not None:
                        self._failovers.inc()
                        launch(nxt, False)
            raise self._unavailable(why, timeout, timed_out=time.monotonic() >= deadline)
        except ShardUnavailable:
            self._calls["failed"].inc()
            raise
        except Exception:
            self._calls["error"].inc()
            raise
        finally:
            for task in running:
                task.cancel()
                task.add_done_callback(_retrieve)
                # The event loop holds tasks weakly; keep losers alive until their cancellation lands.
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    def status(self) -> list[dict[str, Any]]:
        """One plain dict per replica, for an admin or status page."""
        now = time.monotonic()
        return [
            {
                "address": r.address,
                "in_flight": r.in_flight,
                "ejected": r.ejected(now),
                "failures": r.failures,
                "p50_ms": _percentile(r.latencies, 0.5),
                "p95_ms": _percentile(r.latencies, 0.95),
            }
            for r in sorted(self._replicas.values(), key=lambda r: r.address)
        ]

    async def close(self) -> None:
        """Stops DNS refreshes and closes every channel (cancelling what is still in flight)."""
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.wait([self._refresher])
        for task in list(self._background):
            task.cancel()
        channels = [r.channel for r in self._replicas.values()] + list(self._draining.values())
        self._replicas = {}
        if self._draining:
            # A second close() on a channel still in its grace period would race the first one.
            for task in self._draining:
                task.cancel()
            await asyncio.wait(self._draining)
        await asyncio.gather(*(channel.close() for channel in channels))

    @staticmethod
    async def _attempt(
        fn: Callable[[grpc.aio.Channel, float], Awaitable[T]], channel: grpc.aio.Channel, deadline: float
    ) -> T:
        return await fn(channel, max(0.0, deadline - time.monotonic()))

    def _retry_reason(self, task: asyncio.Task[T]) -> str:
        """Why a failed attempt failed, when another replica may answer; raises its error when that error
        is the answer."""
        if task.cancelled():
            # Nobody cancels a running attempt but `close` on its channel (a DNS refresh dropped it).
            return "cancelled: its channel was closed"
        try:
            task.result()
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            # Each attempt's own deadline is the call's: DEADLINE_EXCEEDED means the call ran out of time.
            if code in self.policy.retry_codes or code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"{code.name}: {exc.details()}"
            raise
        raise AssertionError("only failed attempts have a retry reason")

    def _pick(self, used: set[str], *, ejected_ok: bool) -> _Replica | None:
        now = time.monotonic()
        free = [r for r in self._replicas.values() if r.address not in used]
        pool = [r for r in free if not r.ejected(now)] or (free if ejected_ok else [])
        if len(pool) < 2:
            return pool[0] if pool else None
        # Power of two choices: nearly as even as least-loaded, without herding onto one replica.
        a, b = random.sample(pool, 2)
        return a if a.in_flight <= b.in_flight else b

    def _hedge_delay_s(self) -> float | None:
        p = self.policy
        if not p.hedge:
            return None
        if len(self._window) < _MIN_SAMPLES:
            ms = p.hedge_min_ms * _WARMUP_FACTOR
        else:
            if self._threshold_ms is None or self._fresh >= _REQUANTILE_EVERY:
                self._threshold_ms = _percentile(self._window, p.hedge_quantile)
                self._fresh = 0
            assert self._threshold_ms is not None
            ms = max(self._threshold_ms, p.hedge_min_ms)
        if p.hedge_max_ms is not None:
            ms = min(ms, p.hedge_max_ms)
        return ms / 1000

    def _succeeded(self, replica: _Replica, attempt_ms: float, call_ms: float) -> None:
        if replica.failures >= self.policy.eject_failures:
            log.info("shard %s: replica %s answers again, readmitted", self.name, replica.address)
        replica.failures = 0
        replica.ejected_until = 0.0
        replica.latencies.append(attempt_ms)
        self._window.append(call_ms)
        self._fresh += 1

    def _failed(self, replica: _Replica, why: dict[str, str], reason: str) -> None:
        why[replica.address] = reason
        replica.failures += 1
        now = time.monotonic()
        # Failures stay counted past the ejection, so after eject_s one failed probe ejects again.
        if replica.failures >= self.policy.eject_failures and not replica.ejected(now):
            replica.ejected_until = now + self.policy.eject_s
            self._ejections.inc()
            log.warning(
                "shard %s: replica %s ejected for %.1f s after %d failures (last: %s)",
                self.name,
                replica.address,
                self.policy.eject_s,
                replica.failures,
                reason,
            )

    def _unavailable(self, why: Mapping[str, str], timeout: float, *, timed_out: bool) -> ShardUnavailable:
        tried = ", ".join(f"{address} ({reason})" for address, reason in why.items()) or "none"
        if timed_out:
            detail = f"no answer within {timeout * 1000:.0f} ms; tried {tried}"
        else:
            detail = f"every replica failed; tried {tried}"
        return ShardUnavailable(self.name, detail, why)

    def _open(self, address: str, authority: str | None) -> None:
        options = dict(self._options)
        if authority is not None:
            # Connect to the resolved IP but present (and, with TLS, verify) the service's name.
            options.setdefault("grpc.default_authority", authority)
        opts = list(options.items())
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(address, options=opts)
        else:
            channel = grpc.aio.secure_channel(address, self._credentials, options=opts)
        channel.get_state(try_to_connect=True)  # connect now, not on the first call
        self._replicas[address] = _Replica(address, channel, deque(maxlen=self.policy.latency_window))

    async def _resolve(self, host: str, port: int) -> tuple[str, ...]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return tuple(dict.fromkeys(_address(str(info[4][0]), int(info[4][1])) for info in infos))

    async def _refresh(self) -> None:
        targets = list(self._dns)
        results = await asyncio.gather(
            *(self._resolve(*self._dns[t]) for t in targets), return_exceptions=True
        )
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, OSError):
                # A DNS hiccup must not drop a shard: keep the addresses we had.
                log.warning(
                    "shard %s: resolving %s failed (%s); keeping %s",
                    self.name,
                    target,
                    result,
                    self._resolved.get(target, ()),
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                self._resolved[target] = result
        wanted: dict[str, str | None] = dict.fromkeys(self._static)
        for target, addresses in self._resolved.items():
            host, port = self._dns[target]
            for address in addresses:
                wanted.setdefault(address, f"{host}:{port}")
        gone = [self._replicas.pop(a) for a in list(self._replicas) if a not in wanted]
        added = [a for a in wanted if a not in self._replicas]
        for address in added:
            self._open(address, wanted[address])
        if gone or added:
            log.info(
                "shard %s: replicas %s (added %s, removed %s)",
                self.name,
                sorted(self._replicas),
                added,
                [r.address for r in gone],
            )
        for r in gone:
            # Calls still in flight on a vanished replica get one refresh period to finish.
            drain = asyncio.create_task(r.channel.close(grace=self.policy.dns_refresh_s))
            self._draining[drain] = r.channel
            drain.add_done_callback(self._draining.pop)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.policy.dns_refresh_s)
            try:
                await self._refresh()
            except Exception:
                # Keep serving the replicas we know; the next period tries again.
                log.exception("shard %s: replica refresh failed", self.name)
