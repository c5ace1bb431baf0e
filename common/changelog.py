"""The change log: a collection's durable, append-only record of real-time Upserts and Deletes.

The retriever appends every acknowledged change here (fsynced before the RPC answers) and replays the log
over the generation it serves; the indexer folds the entries a rebuild includes into that build and
records the last one's sequence number in the generation's manifest (`source.changelog_seq`), so only
later entries are replayed on top of it. The log is therefore the source of truth between rebuilds.

Layout: ``<dir>/<first-seq:012d>.log`` segment files (a new one when the last passes SEGMENT_BYTES) and
``<dir>/.lock``, an flock that serialises writers across processes (SO_REUSEPORT workers, several
servers on one root). One entry per line::

    <crc32 of the JSON, 8 hex digits> <JSON object with "seq", "op" and the op's fields>\\n

Sequence numbers start at 1 and grow by one per entry, across segments. A torn last line (a crash in the
middle of a write; it was never acknowledged) is ignored by readers and cut off by the next writer; a
bad line anywhere else is corruption and raises `ChangeLogError`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.catalog import Item

SEGMENT_BYTES = 64 * 1024 * 1024
LOCK = ".lock"
_SEGMENT = re.compile(r"^(\d{12})\.log$")


class ChangeLogError(RuntimeError):
    """The log is unreadable or corrupt (not a torn last line): the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader stopped: the segment's first sequence number, the byte offset in it, the last seq."""

    segment: int = 0
    offset: int = 0
    seq: int = 0


def _encode(entry: dict[str, Any]) -> bytes:
    body = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> dict[str, Any] | None:
    """The entry on a complete line, or None when the line is damaged."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        entry = json.loads(body)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("seq"), int) else None


class ChangeLog:
    """One collection's log directory. Readers need no lock; `append` takes the directory's flock."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._tail = Position()  # the writer's last known end of the log (a cache; re-read under the lock)

    @property
    def tail(self) -> Position:
        """The end of the log as of this object's last append (valid for a reader that was caught up)."""
        return self._tail

    def segments(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _SEGMENT.match(p.name)))

    def _path(self, first: int) -> Path:
        return self.dir / f"{first:012d}.log"

    def read(self, after: Position | int = 0) -> tuple[list[dict[str, Any]], Position]:
        """Every complete entry with seq > `after` (a seq or a Position from an earlier read), and the
        position to continue from."""
        pos = after if isinstance(after, Position) else Position(seq=after)
        out: list[dict[str, Any]] = []
        segments = self.segments()
        for i, first in enumerate(segments):
            if i + 1 < len(segments) and segments[i + 1] <= pos.seq + 1:
                continue  # every entry of this segment is at or before `after`
            if first < pos.segment:
                continue
            resume = first == pos.segment and pos.offset > 0
            offset, prev = (pos.offset, pos.seq) if resume else (0, first - 1)
            entries, end, seq = self._read_segment(first, offset, prev, i + 1 == len(segments))
            out.extend(e for e in entries if e["seq"] > pos.seq)
            pos = Position(first, end, max(seq, pos.seq))
        return out, pos

    def _read_segment(
        self, first: int, offset: int, seq: int, last: bool
    ) -> tuple[list[dict[str, Any]], int, int]:
        path = self._path(first)
        entries: list[dict[str, Any]] = []
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        start = 0
        while start < len(data):
            nl = data.find(b"\n", start)
            line = data[start:] if nl < 0 else data[start : nl + 1]
            entry = _decode(line)
            if entry is None:
                if last and (nl < 0 or nl + 1 == len(data)):
                    break  # a torn (never acknowledged) last line
                raise ChangeLogError(f"{path}: damaged entry at byte {offset + start} (after seq {seq})")
            if entry["seq"] != seq + 1:
                raise ChangeLogError(
                    f"{path}: entry at byte {offset + start} has seq {entry['seq']}, expected {seq + 1}"
                )
            seq = entry["seq"]
            entries.append(entry)
            start += len(line)
        return entries, offset + start, seq

    def last_seq(self) -> int:
        return self.read(self._tail_start())[1].seq

    def _tail_start(self) -> Position:
        segments = self.segments()
        if not segments:
            return Position()
        return Position(segments[-1], 0, segments[-1] - 1)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (e.g. to catch up and append as one step)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append_locked(self, ops: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append `ops` (dicts with "op" and its fields) under a held `locked()`; fsynced on return.
        Returns the entries as written, with their "seq"."""
        if not ops:
            return []
        _, pos = self.read(self._tail)  # what other writers appended since; ends at the last good line
        if pos.segment:
            path = self._path(pos.segment)
            if path.stat().st_size != pos.offset:
                with open(path, "r+b") as f:  # cut off a torn last line before appending after it
                    f.truncate(pos.offset)
                    os.fsync(f.fileno())
            first = pos.segment if pos.offset < SEGMENT_BYTES else pos.seq + 1
        else:
            first = 1
        written = [{**op, "seq": pos.seq + 1 + i} for i, op in enumerate(ops)]
        data = b"".join(_encode(e) for e in written)
        path = self._path(first)
        new = not path.exists()
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            end = f.tell()
        if new:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._tail = Position(first, end, written[-1]["seq"])
        return written

    def append(self, ops: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.locked():
            return self.append_locked(ops)


def fold(items: Iterable[Item], entries: Sequence[dict[str, Any]]) -> list[Item]:
    """The catalog `items` with the log's upserts and deletes applied in order (what a rebuild indexes):
    a replaced item keeps its place, a new one goes last, a deleted one is dropped."""
    by_id = {it.id: it for it in items}
    for e in entries:
        if e["op"] == "upsert":
            item = Item.model_validate(e["item"])
            by_id[item.id] = item
        elif e["op"] == "delete":
            by_id.pop(e["id"], None)
    return list(by_id.values())


__all__ = ["ChangeLog", "ChangeLogError", "Position", "fold"]
