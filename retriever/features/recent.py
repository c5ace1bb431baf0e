"""Real-time recent behaviour per user: the store behind LogEvents and the behavior recall branch.

One Protocol, two backends that pass the same contract tests (tests/integration/test_recent_store.py):
- `RedisRecentStore` — the production store. Per (collection, user): a bounded list of recent events and
  a bounded sorted set of seen event ids for idempotency, both updated atomically by one Lua script per
  user and batch, with a TTL. Keys share a hash tag `{collection:user}` so a Redis Cluster keeps them in
  one slot. A circuit breaker makes a slow or dead Redis cost at most one short timeout per open period.
  The same class serves one server or a Redis Cluster (`RedisSettings.cluster`): only the client differs
  (`redis_client`), every command it sends names one user's keys, so each lands on one node.
- `MemoryRecentStore` — the embedded default (no external server), same semantics, bounded user count.
Both also count each stored event into its item's decayed 1 h / 1 d / 7 d counts (`item_windows`; the
arithmetic is `retriever.features.windows`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    cast,
    overload,
    runtime_checkable,
)

from cachetools import TTLCache
from prometheus_client import Counter, Gauge, Histogram

from common.settings import RedisSettings
from common.types import DependencyUnavailable, UserCounters
from retriever.features.windows import (
    STATE_TTL_S,
    TAUS,
    UPDATE_LUA,
    Counts,
    MemoryItemWindows,
    State,
    counts_many,
    decode_many,
    item_key,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class UserEvent:
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    weight: float


class RecentItem(NamedTuple):
    """One real-time event as readers see it. A NamedTuple: a request parses up to 50 of them (a frozen
    dataclass's __init__ made that ~0.12 ms a request)."""

    item_id: str
    type: str
    ts: float
    weight: float


REDIS_LATENCY = Histogram(
    "quarry_redis_latency_seconds",
    "Redis user-store calls that answered, by operation (append, recent, counters)",
    ["op"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
)
REDIS_ERRORS = Counter(
    "quarry_redis_errors_total", "Redis user-store calls that failed, by operation and error", ["op", "error"]
)
REDIS_BREAKER_OPEN = Gauge(
    "quarry_redis_breaker_open",
    "1 while the Redis circuit breaker is open (serve --workers N: any live worker's)",
    multiprocess_mode="livemax",
)


class StoreUnavailable(DependencyUnavailable):
    """The store could not answer (down, slow, or the circuit breaker is open)."""


@runtime_checkable
class RecentStore(Protocol):
    name: str

    async def append(self, collection: str, events: Sequence[UserEvent]) -> list[bool]:
        """Store `events`; per event, True if stored now, False if its (user, event_id) was seen before."""
        ...

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        """The user's `n` most recent events, newest first (by arrival)."""
        ...

    async def counters(self, collection: str, user_id: str) -> UserCounters:
        """The user's real-time counters (zeros for an unknown user)."""
        ...

    async def item_windows(
        self, collection: str, item_ids: Sequence[str], now: float | None = None
    ) -> list[Counts]:
        """Per item, its stored events in the last hour, day and week before `now` (default: the clock),
        as decayed counts (`retriever.features.windows`); zeros for an item without events."""
        ...

    async def close(self) -> None: ...


@dataclass
class _MutableCounters:
    events: int = 0
    weight_sum: float = 0.0
    last_ts: float = 0.0
    # Exact set for the embedded store (bounded by max_users × distinct items); Redis uses a HyperLogLog.
    items: set[str] = field(default_factory=set)

    def add(self, e: UserEvent) -> None:
        self.events += 1
        self.weight_sum += e.weight
        self.last_ts = max(self.last_ts, e.ts)
        self.items.add(e.item_id)


def _payload(e: UserEvent) -> str:
    return json.dumps({"i": e.item_id, "y": e.type, "t": e.ts, "w": e.weight}, separators=(",", ":"))


def _parse_all(raw: Sequence[bytes]) -> list[RecentItem]:
    """Stored payloads (JSON objects, newest first) as RecentItems: one json.loads for the whole list."""
    if not raw:
        return []
    rows = json.loads(b"[" + b",".join(raw) + b"]")
    if len(rows) != len(raw):  # only whole objects are ever written (_payload); anything else is not ours
        raise ValueError(f"{len(raw)} stored events parsed as {len(rows)}: a payload is not one JSON object")
    return [RecentItem(d["i"], d["y"], float(d["t"]), float(d["w"])) for d in rows]


class MemoryRecentStore:
    """In-process store with the same bounds as the Redis one (list length, dedup window, TTL)."""

    name = "memory"

    def __init__(
        self,
        *,
        max_len: int = 100,
        ttl_s: float = 30 * 86400,
        dedup_window: int = 1000,
        max_users: int = 100_000,
    ) -> None:
        self.max_len, self.ttl_s, self.dedup_window, self.max_users = max_len, ttl_s, dedup_window, max_users
        self._users: OrderedDict[tuple[str, str], tuple[deque[RecentItem], OrderedDict[str, None], float]] = (
            OrderedDict()
        )
        self._counters: dict[tuple[str, str], _MutableCounters] = {}
        self._items = MemoryItemWindows()

    def _slot(
        self, key: tuple[str, str], now: float
    ) -> tuple[deque[RecentItem], OrderedDict[str, None], float]:
        slot = self._users.get(key)
        if slot is None or slot[2] < now:
            slot = (deque(maxlen=self.max_len), OrderedDict(), now + self.ttl_s)
        self._users[key] = slot
        self._users.move_to_end(key)
        while len(self._users) > self.max_users:
            dropped, _ = self._users.popitem(last=False)
            self._counters.pop(dropped, None)
        return slot

    async def append(self, collection: str, events: Sequence[UserEvent]) -> list[bool]:
        now = time.time()
        out: list[bool] = []
        for e in events:
            items, seen, _exp = self._slot((collection, e.user_id), now)
            if e.event_id in seen:
                out.append(False)
                continue
            seen[e.event_id] = None
            while len(seen) > self.dedup_window:
                seen.popitem(last=False)
            items.appendleft(RecentItem(e.item_id, e.type, e.ts, e.weight))
            self._counters.setdefault((collection, e.user_id), _MutableCounters()).add(e)
            self._items.add(collection, e.item_id, e.ts)
            self._users[(collection, e.user_id)] = (items, seen, now + self.ttl_s)
            out.append(True)
        return out

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        slot = self._users.get((collection, user_id))
        if slot is None or slot[2] < time.time():
            return []
        return list(slot[0])[:n]

    async def counters(self, collection: str, user_id: str) -> UserCounters:
        slot = self._users.get((collection, user_id))
        c = self._counters.get((collection, user_id))
        if slot is None or c is None or slot[2] < time.time():
            return UserCounters()
        return UserCounters(c.events, c.weight_sum, len(c.items), c.last_ts)

    async def item_windows(
        self, collection: str, item_ids: Sequence[str], now: float | None = None
    ) -> list[Counts]:
        return self._items.counts(collection, item_ids, time.time() if now is None else now)

    async def close(self) -> None:
        self._users.clear()
        self._counters.clear()
        self._items.clear()


# KEYS[1] = recent list, KEYS[2] = seen-ids sorted set, KEYS[3] = real-time counters hash, KEYS[4] =
# distinct-items HyperLogLog; ARGV = max_len, ttl_s, dedup_window, then (event_id, payload) pairs.
# Returns 1/0 per event (stored / duplicate). Counters move only for stored events, so retries never
# double-count. Atomic per user and batch.
_APPEND_LUA = """
local max_len = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local out = {}
local seq = redis.call('ZCARD', KEYS[2])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] then seq = tonumber(top[2]) end
for i = 4, #ARGV, 2 do
  seq = seq + 1
  if redis.call('ZADD', KEYS[2], 'NX', seq, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[1], ARGV[i + 1])
    local ev = cjson.decode(ARGV[i + 1])
    redis.call('HINCRBY', KEYS[3], 'events_total', 1)
    redis.call('HINCRBYFLOAT', KEYS[3], 'weight_sum', ev['w'])
    local last = tonumber(redis.call('HGET', KEYS[3], 'last_ts') or '0')
    if ev['t'] > last then redis.call('HSET', KEYS[3], 'last_ts', ev['t']) end
    redis.call('PFADD', KEYS[4], ev['i'])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('LTRIM', KEYS[1], 0, max_len - 1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(window + 1))
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ttl) end
return out
"""
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()
_UPDATE_SHA = hashlib.sha1(UPDATE_LUA.encode()).hexdigest()
_ScriptCall = tuple[list[str], list[str | int | float]]  # one script call's KEYS and ARGV
_UNCACHED = object()


def redis_keys(collection: str, user_id: str) -> list[str]:
    """One user's keys, in `_APPEND_LUA`'s KEYS order: recent list, seen ids, counters, distinct items.
    The hash tag puts all four in one Redis Cluster slot, which a multi-key script requires."""
    tag = f"{{{collection}:{user_id}}}"
    return [f"quarry:{tag}:recent", f"quarry:{tag}:seen", f"quarry:{tag}:counters", f"quarry:{tag}:items"]


@overload
def redis_client(
    settings: RedisSettings, *, sync: Literal[False] = False
) -> redis.asyncio.Redis | redis.asyncio.RedisCluster: ...
@overload
def redis_client(settings: RedisSettings, *, sync: Literal[True]) -> redis.Redis | redis.RedisCluster: ...
def redis_client(
    settings: RedisSettings, *, sync: bool = False
) -> redis.asyncio.Redis | redis.asyncio.RedisCluster | redis.Redis | redis.RedisCluster:
    """The Redis client `settings` describe — a cluster client when `settings.cluster` (it discovers every
    node from the one in the URL), a plain one otherwise — with the settings' timeouts; asyncio unless
    `sync` (offline jobs, benchmarks). Every Redis client in Quarry comes from here."""
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    import redis.backoff
    import redis.retry

    # No client-side retries: redis-py's cluster client would otherwise retry a dead or hung node up to
    # 10 times (pipelines sleep 0.25 s between tries), turning one timeout into seconds. Repeated failures
    # are the circuit breaker's business.
    retry = (redis.retry.Retry if sync else redis.asyncio.retry.Retry)(redis.backoff.NoBackoff(), 0)
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_ms / 1000,
        "socket_connect_timeout": settings.connect_timeout_ms / 1000,
        "health_check_interval": 30,
        "retry": retry,
    }
    if settings.cluster:
        cls: Any = redis.RedisCluster if sync else redis.asyncio.RedisCluster
    else:
        cls = redis.Redis if sync else redis.asyncio.Redis
    return cls.from_url(settings.url, **kwargs)


class StampedCache:
    """A dict whose entries each hold for `ttl_s` seconds after they were stored, dropped whole when it
    outgrows `maxsize`. For the items' states, looked up ~200 times a request: a TTLCache's per-entry
    clock and links cost ~1.2 µs a lookup and ~1 µs a store (~0.45 ms a request); this, a dict lookup
    and one comparison against a clock read once a call."""

    def __init__(self, maxsize: int, ttl_s: float) -> None:
        self.maxsize, self.ttl_s = maxsize, ttl_s
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get_many(self, keys: Sequence[Any], now: float, missing: Any) -> list[Any]:
        """Each key's value, or `missing` where it has none or its entry is older than `ttl_s`."""
        entries = self._entries
        out = []
        for key in keys:
            hit = entries.get(key)
            out.append(missing if hit is None or hit[0] <= now else hit[1])
        return out

    def put_many(self, items: Sequence[tuple[Any, Any]], now: float) -> None:
        if len(self._entries) + len(items) > self.maxsize:
            self._entries = {}
        until = now + self.ttl_s
        for key, value in items:
            self._entries[key] = (until, value)

    def pop(self, key: Any) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries = {}


class CircuitBreaker:
    """Opens after `failures` failed calls in a row; while open, calls fail fast for `open_s` seconds.

    In a row in time: calls that were in flight together when the store (or this process's event loop)
    stalled fail together, and count as one failure. A failure counts only when its call started after
    the last counted failure. Otherwise one stall of the loop opened it with Redis healthy: a 50 ms stall
    timed out 7 of 8 reads in flight (their answers were waiting in the socket, the timeouts fired
    first), and every request of the next `open_s` was answered without its user's events (at 200
    Searches/s on two workers, 175 degraded answers in one 5 s step)."""

    def __init__(self, failures: int = 3, open_s: float = 2.0) -> None:
        self.failures, self.open_s = failures, open_s
        self._count = 0
        self._open_until = 0.0
        self._last_failure = -float("inf")

    def check(self) -> None:
        if self._open_until > time.monotonic():
            raise StoreUnavailable("redis circuit breaker is open after repeated failures")

    @property
    def is_open(self) -> bool:
        return self._open_until > time.monotonic()

    def success(self) -> None:
        self._count = 0

    def failure(self, started: float) -> None:
        """A call that began at `started` (time.monotonic()) failed."""
        if started < self._last_failure:
            return  # in flight when the failure already counted happened: the same stall or outage
        self._last_failure = time.monotonic()
        self._count += 1
        if self._count >= self.failures:
            self._open_until = self._last_failure + self.open_s
            log.warning("redis: circuit breaker open for %.1fs after %d failures", self.open_s, self._count)


class RedisRecentStore:
    name = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        self.s = settings
        self._redis = redis_client(settings)
        self._deadline_s = (settings.connect_timeout_ms + settings.socket_timeout_ms) / 1000
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        # Counters feed ranking features: a short TTL bounds staleness, the size bound bounds memory.
        self._counter_cache: TTLCache[tuple[str, str], UserCounters] = TTLCache(
            maxsize=settings.counter_cache_size, ttl=settings.counter_cache_ttl_s
        )
        # Items' window states too (shared by every user's request): the same bound on staleness. A state
        # holds for any `now` (the counts are decayed to the request's time when read).
        self._item_cache = StampedCache(settings.counter_cache_size, settings.item_cache_ttl_s)

    async def _guard(self, call: Callable[[], Awaitable[T]], op: str = "read") -> T:
        import redis

        try:
            self.breaker.check()  # before the command is even created: an open breaker costs nothing
        except StoreUnavailable:
            REDIS_ERRORS.labels(op, "breaker_open").inc()
            raise
        t0 = time.perf_counter()
        started = time.monotonic()
        try:
            # The socket timeouts bound each connect and read; this bounds the whole call, whatever the
            # client does inside it (a cluster client re-reads the slot map after a failure, and waits
            # 0.25 s before raising on CLUSTERDOWN).
            async with asyncio.timeout(self._deadline_s):
                result = await call()
        # RedisClusterException is no RedisError: the cluster client raises it when no node answers
        # (every node down, or the URL names a server without cluster mode) or a slot has no master.
        except (redis.RedisError, redis.RedisClusterException, OSError, TimeoutError) as exc:
            self.breaker.failure(started)
            REDIS_ERRORS.labels(op, type(exc).__name__).inc()
            REDIS_BREAKER_OPEN.set(1 if self.breaker.is_open else 0)
            why = str(exc) or f"no answer within {self._deadline_s * 1000:.0f} ms"
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {why}") from exc
        REDIS_LATENCY.labels(op).observe(time.perf_counter() - t0)
        self.breaker.success()
        REDIS_BREAKER_OPEN.set(0)
        return result

    async def append(self, collection: str, events: Sequence[UserEvent]) -> list[bool]:
        by_user: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            by_user.setdefault(e.user_id, []).append(i)
        out = [False] * len(events)
        order = list(by_user.items())
        calls: list[_ScriptCall] = []
        for user, idxs in order:
            args: list[str | int | float] = [
                self.s.recent_max_len,
                int(self.s.recent_ttl_s),
                self.s.dedup_window,
            ]
            for i in idxs:
                args += [events[i].event_id, _payload(events[i])]
            calls.append((redis_keys(collection, user), args))
        results = await self._guard(lambda: self._run_script(_APPEND_LUA, _APPEND_SHA, calls), "append")
        for user in by_user:
            self._counter_cache.pop((collection, user), None)
        for (_user, idxs), flags in zip(order, results, strict=True):
            for i, flag in zip(idxs, flags, strict=True):
                out[i] = bool(flag)
        stored = [(e.item_id, e.ts) for e, ok in zip(events, out, strict=True) if ok]
        if stored:
            await self._count_items(collection, stored)
        return out

    async def _count_items(self, collection: str, stored: list[tuple[str, float]]) -> None:
        """The stored events into their items' states (`UPDATE_LUA`, one call: every item of a collection
        shares a slot). A second call, after the users' script said which events are new, so a retried
        event never counts twice; if it fails the events stay stored and the item counts miss them
        (logged and counted as an `item_windows` error) rather than fail a LogEvents that took effect."""
        call: _ScriptCall = (
            [item_key(collection, item) for item, _ts in stored],
            [STATE_TTL_S, *TAUS, *(ts for _item, ts in stored)],
        )
        try:
            await self._guard(lambda: self._run_script(UPDATE_LUA, _UPDATE_SHA, [call]), "item_windows")
        except StoreUnavailable as exc:
            log.warning("item windows: %d events not counted (%s)", len(stored), exc)
        for item, _ts in stored:
            self._item_cache.pop((collection, item))

    async def _run_script(self, lua: str, sha: str, calls: Sequence[_ScriptCall]) -> list[Any]:
        """`lua` once per (keys, args), pipelined. By SHA first; the calls that meet a node without the
        script (new, restarted or failed-over node, SCRIPT FLUSH) did nothing there and are sent again
        with the script's text, which also caches it on that node. (redis-py's Script objects cannot do
        this in a cluster pipeline: it refuses `evalsha` there, and preloads only on a plain pipeline.)"""
        from redis.exceptions import NoScriptError

        results = await self._pipelined("EVALSHA", sha, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            again = await self._pipelined("EVAL", lua, [calls[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def _pipelined(self, command: str, script: str, calls: Sequence[_ScriptCall]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command(command, script, len(keys), *keys, *args)
        # Errors come back in place, so a NOSCRIPT on one node does not hide the other calls' results.
        return await pipe.execute(raise_on_error=False)

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        key = redis_keys(collection, user_id)[0]
        raw = await self._guard(lambda: self._redis.lrange(key, 0, n - 1), "recent")
        # redis-py types replies `bytes | str` (str only with decode_responses, which redis_client never sets).
        return _parse_all(cast("list[bytes]", raw))

    async def counters(self, collection: str, user_id: str) -> UserCounters:
        cached = self._counter_cache.get((collection, user_id))
        if cached is not None:
            return cached
        keys = redis_keys(collection, user_id)

        async def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys[2])
            # Raw: redis-py refuses pfcount() in a cluster pipeline (PFCOUNT may name keys of several
            # slots); with one key it is an ordinary single-slot command.
            pipe.execute_command("PFCOUNT", keys[3])
            return await pipe.execute()

        raw, distinct = await self._guard(read, "counters")
        h = {k.decode(): float(v) for k, v in raw.items()}
        out = UserCounters(
            int(h.get("events_total", 0)), h.get("weight_sum", 0.0), int(distinct), h.get("last_ts", 0.0)
        )
        self._counter_cache[(collection, user_id)] = out
        return out

    async def item_windows(
        self, collection: str, item_ids: Sequence[str], now: float | None = None
    ) -> list[Counts]:
        """The items' states from the cache, the rest with one MGET; decayed to `now`."""
        clock = time.monotonic()
        distinct = list(dict.fromkeys(item_ids))
        cached = self._item_cache.get_many([(collection, i) for i in distinct], clock, _UNCACHED)
        states: dict[str, State | None] = {}
        missing: list[str] = []
        for item, hit in zip(distinct, cached, strict=True):
            if hit is _UNCACHED:
                missing.append(item)
            else:
                states[item] = hit
        if missing:
            keys = [item_key(collection, item) for item in missing]
            raw = await self._guard(lambda: self._redis.mget(keys), "item_windows")
            found = iter(decode_many([v for v in raw if v is not None]))
            fetched = [
                (item, None if value is None else next(found))
                for item, value in zip(missing, raw, strict=True)
            ]
            states.update(fetched)
            self._item_cache.put_many([((collection, item), state) for item, state in fetched], clock)
        when = time.time() if now is None else now
        return counts_many([states[item] for item in item_ids], when)

    async def close(self) -> None:
        await self._redis.aclose()


class UserRecent:
    """One user's newest real-time events, read from the store at most once per request: every reader
    (behavior and preference recall, the ranker's profile, Recommend's seen-filter) slices the same
    list. The read is shielded, so a branch cancelled at its deadline never cancels it for the others;
    a store failure reaches every reader as StoreUnavailable."""

    def __init__(self, store: RecentStore, collection: str, user_id: str, limit: int) -> None:
        self.store, self.collection, self.user_id, self.limit = store, collection, user_id, limit
        self._task: asyncio.Task[list[RecentItem]] | None = None

    async def get(self, n: int) -> list[RecentItem]:
        if n > self.limit:
            return await self.store.recent(self.collection, self.user_id, n)
        if self._task is None:
            self._task = asyncio.ensure_future(self.store.recent(self.collection, self.user_id, self.limit))
        return (await asyncio.shield(self._task))[:n]

    def close(self) -> None:
        """At the end of the request: a read nobody waited for is cancelled, a failed one is retrieved."""
        if self._task is None:
            return
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled():
            self._task.exception()


def make_recent_store(settings: RedisSettings) -> RecentStore:
    if settings.url:
        return RedisRecentStore(settings)
    return MemoryRecentStore(
        max_len=settings.recent_max_len,
        ttl_s=settings.recent_ttl_s,
        dedup_window=settings.dedup_window,
        max_users=settings.embedded_max_users,
    )
