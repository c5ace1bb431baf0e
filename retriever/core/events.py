"""LogEvents: validate a batch event by event, store every valid one, report each rejection.

A malformed event never costs the valid events beside it. Unknown item ids are accepted: items can
appear in real time before the next snapshot, and the behavior branch skips ids it cannot resolve.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from common.settings import LimitSettings
from retriever.core.errors import InvalidArgument, Unavailable
from retriever.features.recent import RecentStore, StoreUnavailable, UserEvent

_TYPE = re.compile(r"^[a-z0-9_.-]{1,64}$")
MAX_ID_BYTES = 256


#: An event as received: the same fields as a stored UserEvent, not yet checked (ts/weight 0 = defaults).
RawEvent = UserEvent


@dataclass(slots=True)
class LogResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (index, event_id, reason)


def check_event(e: RawEvent, limits: LimitSettings, now: float) -> UserEvent:
    """The event as stored, or ValueError saying what is wrong with it."""
    for name in ("event_id", "user_id", "item_id"):
        value: str = getattr(e, name)
        if not value:
            raise ValueError(f"{name} is required")
        if len(value.encode()) > MAX_ID_BYTES:
            raise ValueError(f"{name} is longer than {MAX_ID_BYTES} bytes")
        if value != value.strip() or "\x00" in value:
            raise ValueError(f"{name} has surrounding whitespace or a NUL character")
    etype = e.type or "view"
    if not _TYPE.match(etype):
        raise ValueError(f"type {e.type!r} must match [a-z0-9_.-]{{1,64}}")
    if not math.isfinite(e.ts) or e.ts < 0:
        raise ValueError(f"ts must be a finite number of seconds since the epoch, got {e.ts}")
    if e.ts > now + limits.max_event_future_s:
        raise ValueError(f"ts {e.ts:.0f} is {e.ts - now:.0f}s in the future")
    if not math.isfinite(e.weight) or e.weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {e.weight}")
    return UserEvent(e.event_id, e.user_id, e.item_id, etype, e.ts or now, e.weight or 1.0)


async def log_events(
    store: RecentStore, collection: str, events: list[RawEvent], limits: LimitSettings
) -> LogResult:
    if len(events) > limits.max_events_per_batch:
        raise InvalidArgument(
            f"{len(events)} events in one batch; the maximum is {limits.max_events_per_batch}"
        )
    now = time.time()
    result = LogResult()
    valid: list[UserEvent] = []
    for i, e in enumerate(events):
        try:
            valid.append(check_event(e, limits, now))
        except ValueError as exc:
            result.rejected.append((i, e.event_id, str(exc)))
    if valid:
        try:
            stored = await store.append(collection, valid)
        except StoreUnavailable as exc:
            raise Unavailable(
                f"the event store is unavailable ({exc}); retry the batch: it is idempotent"
            ) from None
        result.accepted = sum(stored)
        result.duplicates = len(stored) - result.accepted
    return result
