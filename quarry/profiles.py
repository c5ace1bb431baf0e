"""The offline user-profile job: load historical events into the user store (Redis or embedded).

Profiles are written through the very path LogEvents uses (`RecentStore.append`: recent list, counters,
distinct-item sketch, in one Lua script per user), so a profile built offline and one grown online by
LogEvents are the same data. Event ids are derived from (user, item, type, ts), so re-running the job is
idempotent: nothing is counted twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from common.catalog import Event
from retriever.features.recent import RecentStore, UserEvent

BATCH = 1000


def offline_event_id(e: Event) -> str:
    key = f"{e.user}\0{e.item}\0{e.type}\0{e.ts!r}".encode()
    return "offline:" + hashlib.blake2b(key, digest_size=12).hexdigest()


async def load_profiles(store: RecentStore, collection: str, events: Iterable[Event]) -> tuple[int, int]:
    """Append `events` (oldest first) to the store; returns (stored, already present)."""
    stored = dupes = 0
    batch: list[UserEvent] = []

    async def flush() -> None:
        nonlocal stored, dupes
        flags = await store.append(collection, batch)
        stored += sum(flags)
        dupes += len(flags) - sum(flags)
        batch.clear()

    for e in sorted(events, key=lambda ev: ev.ts):
        batch.append(UserEvent(offline_event_id(e), e.user, e.item, e.type, e.ts, e.weight))
        if len(batch) >= BATCH:
            await flush()
    if batch:
        await flush()
    return stored, dupes
