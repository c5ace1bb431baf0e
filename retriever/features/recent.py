"""Real-time recent behaviour per user: the store behind LogEvents and the behavior recall branch.

One Protocol, two backends that pass the same contract tests (tests/integration/test_recent_store.py):
- `RedisRecentStore` — the production store. Per (collection, user): a bounded list of recent events and
  a bounded sorted set of seen event ids for idempotency, both updated atomically by one Lua script per
  user and batch, with a TTL. Keys share a hash tag `{collection:user}` so a Redis Cluster keeps them in
  one slot. A circuit breaker makes a slow or dead Redis cost at most one short timeout per open period.
- `MemoryRecentStore` — the embedded default (no external server), same semantics, bounded user count.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from quarry.settings import RedisSettings

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


@dataclass(frozen=True, slots=True)
class RecentItem:
    item_id: str
    type: str
    ts: float
    weight: float


class StoreUnavailable(Exception):
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

    async def close(self) -> None: ...


def _payload(e: UserEvent) -> str:
    return json.dumps({"i": e.item_id, "y": e.type, "t": e.ts, "w": e.weight}, separators=(",", ":"))


def _parse(raw: str | bytes) -> RecentItem:
    d = json.loads(raw)
    return RecentItem(item_id=d["i"], type=d["y"], ts=float(d["t"]), weight=float(d["w"]))


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

    def _slot(
        self, key: tuple[str, str], now: float
    ) -> tuple[deque[RecentItem], OrderedDict[str, None], float]:
        slot = self._users.get(key)
        if slot is None or slot[2] < now:
            slot = (deque(maxlen=self.max_len), OrderedDict(), now + self.ttl_s)
        self._users[key] = slot
        self._users.move_to_end(key)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)
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
            self._users[(collection, e.user_id)] = (items, seen, now + self.ttl_s)
            out.append(True)
        return out

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        slot = self._users.get((collection, user_id))
        if slot is None or slot[2] < time.time():
            return []
        return list(slot[0])[:n]

    async def close(self) -> None:
        self._users.clear()


# KEYS[1] = recent list, KEYS[2] = seen-ids sorted set; ARGV = max_len, ttl_s, dedup_window, then
# (event_id, payload) pairs. Returns 1/0 per event (stored / duplicate). Atomic per user and batch.
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
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('LTRIM', KEYS[1], 0, max_len - 1)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(window + 1))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return out
"""


class CircuitBreaker:
    """Opens after `failures` consecutive errors; while open, calls fail fast for `open_s` seconds."""

    def __init__(self, failures: int = 3, open_s: float = 2.0) -> None:
        self.failures, self.open_s = failures, open_s
        self._count = 0
        self._open_until = 0.0

    def check(self) -> None:
        if self._open_until > time.monotonic():
            raise StoreUnavailable("redis circuit breaker is open after repeated failures")

    def success(self) -> None:
        self._count = 0

    def failure(self) -> None:
        self._count += 1
        if self._count >= self.failures:
            self._open_until = time.monotonic() + self.open_s
            log.warning("redis: circuit breaker open for %.1fs after %d failures", self.open_s, self._count)


class RedisRecentStore:
    name = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        import redis.asyncio as aioredis

        self.s = settings
        self._redis = aioredis.Redis.from_url(
            settings.url,
            socket_timeout=settings.socket_timeout_ms / 1000,
            socket_connect_timeout=settings.connect_timeout_ms / 1000,
            health_check_interval=30,
        )
        self._append = self._redis.register_script(_APPEND_LUA)
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)

    @staticmethod
    def _keys(collection: str, user_id: str) -> list[str]:
        tag = f"{{{collection}:{user_id}}}"
        return [f"quarry:{tag}:recent", f"quarry:{tag}:seen"]

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        import redis

        self.breaker.check()  # before the command is even created: an open breaker costs nothing
        try:
            result = await call()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.breaker.failure()
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    async def append(self, collection: str, events: Sequence[UserEvent]) -> list[bool]:
        by_user: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            by_user.setdefault(e.user_id, []).append(i)
        out = [False] * len(events)
        pipe = self._redis.pipeline(transaction=False)
        order = list(by_user.items())
        for user, idxs in order:
            args: list[object] = [self.s.recent_max_len, int(self.s.recent_ttl_s), self.s.dedup_window]
            for i in idxs:
                args += [events[i].event_id, _payload(events[i])]
            await self._append(keys=self._keys(collection, user), args=args, client=pipe)
        results = await self._guard(pipe.execute)
        for (_user, idxs), flags in zip(order, results, strict=True):
            for i, flag in zip(idxs, flags, strict=True):
                out[i] = bool(flag)
        return out

    async def recent(self, collection: str, user_id: str, n: int) -> list[RecentItem]:
        key = self._keys(collection, user_id)[0]
        raw = await self._guard(lambda: self._redis.lrange(key, 0, n - 1))
        return [_parse(r) for r in raw]

    async def close(self) -> None:
        await self._redis.aclose()


def make_recent_store(settings: RedisSettings) -> RecentStore:
    if settings.url:
        return RedisRecentStore(settings)
    return MemoryRecentStore(
        max_len=settings.recent_max_len,
        ttl_s=settings.recent_ttl_s,
        dedup_window=settings.dedup_window,
        max_users=settings.embedded_max_users,
    )
