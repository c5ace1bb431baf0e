"""`implements`: isinstance against a runtime-checkable Protocol, decided once per class.

`isinstance(x, SomeProtocol)` walks the protocol's members on every call (~15 µs in Python 3.11); the
ranking stage asked it three or four times a Search about the same few ranker objects. The answer is
kept per (class, protocol): a class's instances are assumed to agree (Quarry's implementations set
their protocols' data members in `__init__`). Typed checks over it: `ranker.base.explains` and
`ranker.base.scores_arrays`.
"""

from __future__ import annotations

from typing import Any

_KNOWN: dict[tuple[type, Any], bool] = {}


def implements(obj: object, protocol: Any) -> bool:
    """`isinstance(obj, protocol)`, computed for the first instance of each class and remembered."""
    key = (type(obj), protocol)
    known = _KNOWN.get(key)
    if known is None:
        known = _KNOWN[key] = isinstance(obj, protocol)
    return known
