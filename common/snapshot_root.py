"""A snapshot root: numbered generations per collection and one atomically switched pointer to the live one.

Layout::

    <root>/<collection>/
        gen-000001/          a whole snapshot (common.snapshot): every part, its manifest and checksums
        gen-000002/
        CURRENT              one line, the live generation's name ("gen-000002"); replaced by rename
        .lock                serialises publishers (flock) so two builds never take the same number
        changes/             the collection's change log (common.changelog): real-time Upserts/Deletes
        .work/               servers' private working copies for applying changes (removed with them)

Rules:
- A generation is published by building it into a hidden staging directory beside the others and renaming
  it to its number (`common.snapshot.staging_dir`); only then does CURRENT move to it (write a temporary
  file, fsync, rename over CURRENT, fsync the directory). A killed build leaves at most a hidden staging
  directory: no new number, and CURRENT still names the old live generation. `gc` removes such leftovers.
- Numbers only grow; a rollback moves CURRENT back to an older generation without deleting the newer ones.
- Readers (the retriever) resolve CURRENT once per load and then hold that directory: a later publish or
  rollback never changes a generation already loaded.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.snapshot import SnapshotError, read_manifest

POINTER = "CURRENT"
#: The change log's and the working copies' directories inside a collection's directory.
CHANGES = "changes"
WORK = ".work"
LOCK = ".lock"
_GEN = re.compile(r"^gen-(\d{6,})$")
_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as in the manifest
#: Staging directories older than this are abandoned builds that `gc` may remove.
STALE_STAGING_S = 3600.0


def generation_name(number: int) -> str:
    return f"gen-{number:06d}"


def parse_generation(name: str) -> int:
    """The number of a generation named "gen-000012", "12" or "000012"."""
    m = _GEN.match(name)
    if m:
        return int(m.group(1))
    if name.isdigit():
        return int(name)
    raise ValueError(f"not a generation name: {name!r} (expected e.g. gen-000003 or 3)")


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    collection: str
    number: int
    path: Path
    live: bool
    snapshot_version: str
    items: int
    created: str

    @property
    def name(self) -> str:
        return generation_name(self.number)


class SnapshotRoot:
    """The generations of every collection under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------------------

    def collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _COLLECTION.match(p.name) and self.numbers(p.name)
        )

    def collection_dir(self, collection: str) -> Path:
        if not _COLLECTION.match(collection):
            raise ValueError(
                f"invalid collection name {collection!r}: letters, digits, '_', '.', '-' (not first), at most 64"
            )
        return self.root / collection

    def numbers(self, collection: str) -> list[int]:
        d = self.collection_dir(collection)
        if not d.is_dir():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if p.is_dir() and (m := _GEN.match(p.name)))

    def path(self, collection: str, number: int) -> Path:
        return self.collection_dir(collection) / generation_name(number)

    def live_number(self, collection: str) -> int | None:
        """The generation CURRENT names, or None when the collection has none published."""
        pointer = self.collection_dir(collection) / POINTER
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        number = parse_generation(name)
        if not self.path(collection, number).is_dir():
            raise SnapshotError(f"{pointer} names {name}, which does not exist")
        return number

    def live(self, collection: str) -> Path:
        number = self.live_number(collection)
        if number is None:
            raise SnapshotError(f"{self.collection_dir(collection)}: no live generation (nothing published)")
        return self.path(collection, number)

    def resolve(self, collection: str, generation: str | None = None) -> Path:
        """A named generation's directory, or the live one when `generation` is None/empty."""
        if not generation:
            return self.live(collection)
        number = parse_generation(generation)
        path = self.path(collection, number)
        if not path.is_dir():
            known = ", ".join(generation_name(n) for n in self.numbers(collection)) or "none"
            raise SnapshotError(
                f"collection {collection!r} has no generation {generation_name(number)} (has: {known})"
            )
        return path

    def generations(self, collection: str) -> list[GenerationInfo]:
        live = self.live_number(collection)
        out = []
        for n in self.numbers(collection):
            path = self.path(collection, n)
            try:
                m = read_manifest(path)
                version, items, created = m.snapshot_version, int(m.counts.get("items", 0)), m.created_at
            except SnapshotError as exc:
                version, items, created = f"unreadable: {exc}", 0, ""
            out.append(GenerationInfo(collection, n, path, n == live, version, items, str(created)))
        return out

    # -- writing ---------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self, collection: str) -> Iterator[Path]:
        d = self.collection_dir(collection)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / LOCK, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def publish(self, collection: str) -> Iterator[Path]:
        """Reserve the next generation's path; the caller builds a snapshot there (atomically, e.g. with
        `build_snapshot(..., out=path)`); on success CURRENT moves to it. On failure nothing is published."""
        with self._locked(collection):
            numbers = self.numbers(collection)
            path = self.path(collection, (numbers[-1] + 1) if numbers else 1)
            yield path
            manifest = read_manifest(path)  # the build really published a snapshot there
            if manifest.collection != collection:
                shutil.rmtree(path)
                raise SnapshotError(
                    f"built collection {manifest.collection!r} into {collection!r}'s generations; nothing published"
                )
            self._point(collection, path.name)

    def activate(self, collection: str, generation: str) -> Path:
        """Make a named generation live (rollback / roll forward); returns its directory."""
        with self._locked(collection):
            path = self.resolve(collection, generation)
            read_manifest(path)
            self._point(collection, path.name)
            return path

    def previous(self, collection: str) -> int:
        """The newest generation older than the live one (what a plain rollback returns to)."""
        live = self.live_number(collection)
        older = [n for n in self.numbers(collection) if live is not None and n < live]
        if not older:
            raise SnapshotError(
                f"collection {collection!r}: no generation older than the live one to roll back to"
            )
        return older[-1]

    def gc(self, collection: str, keep: int = 3) -> list[Path]:
        """Delete all but the newest `keep` generations (never the live one) and abandoned staging dirs."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        removed: list[Path] = []
        with self._locked(collection) as d:
            live = self.live_number(collection)
            numbers = self.numbers(collection)
            for n in numbers[: max(0, len(numbers) - keep)]:
                if n != live:
                    path = self.path(collection, n)
                    shutil.rmtree(path)
                    removed.append(path)
            now = time.time()
            for p in d.iterdir():
                if p.name.startswith(".gen-") and p.is_dir() and now - p.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed

    def _point(self, collection: str, name: str) -> None:
        d = self.collection_dir(collection)
        tmp = d / f".{POINTER}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / POINTER)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
