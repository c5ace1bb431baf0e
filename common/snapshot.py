"""The snapshot: the versioned contract between the indexer and the retriever.

A snapshot is one immutable generation of one collection, a directory::

    <snapshot>/
      manifest.json        format + version, counts, build parameters, per-part metadata, checksums
      text/                tantivy index (BM25 over the text fields, fast fields for filters)
      forward.arrow        forward store: one row per item ordinal (Arrow IPC file, memory-mapped)
      ...                  later parts (vectors/, geo/, behavior/) add a directory and a `parts` entry

Rules the retriever relies on:
- Items are addressed by a dense ordinal 0..N-1, identical across every part.
- `files` lists every file except manifest.json with its size and sha256; a snapshot whose files do not
  match is refused (never served half-written or corrupt).
- Snapshots are published atomically: built in a sibling temporary directory, fsynced, then renamed.
- `format_version` is bumped on any incompatible change; the retriever lists the versions it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.fsutil import atomic_write

FORMAT: Final = "quarry-snapshot"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class SnapshotError(Exception):
    """The snapshot is missing, corrupt, truncated or of an unsupported format."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["quarry-snapshot"]
    format_version: int
    snapshot_version: str = Field(min_length=1)
    collection: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    created_at: str
    builder: dict[str, str]
    source: dict[str, Any]
    counts: dict[str, int]
    parts: dict[str, dict[str, Any]]
    files: dict[str, FileEntry]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.name != MANIFEST or p.parent != root:
                yield p


def _is_lock_file(rel: str) -> bool:
    # tantivy creates these lock files when a writer or reader opens the directory; they carry no data.
    return rel.endswith(".lock") or rel.endswith(".tantivy-meta.lock") or rel.endswith(".tantivy-writer.lock")


def checksum_tree(root: Path, include: Callable[[str], bool] | None = None) -> dict[str, FileEntry]:
    entries: dict[str, FileEntry] = {}
    for p in sorted(_walk_files(root)):
        rel = p.relative_to(root).as_posix()
        if _is_lock_file(rel) or (include is not None and not include(rel)):
            continue
        entries[rel] = FileEntry(bytes=p.stat().st_size, sha256=sha256_file(p))
    return entries


def make_version(collection: str, files: dict[str, FileEntry], now: datetime) -> str:
    digest = hashlib.sha256()
    for rel, entry in sorted(files.items()):
        digest.update(f"{rel}\0{entry.sha256}\0".encode())
    return f"{collection}-{now.strftime('%Y%m%dT%H%M%SZ')}-{digest.hexdigest()[:8]}"


def write_manifest(
    root: Path,
    *,
    collection: str,
    builder: dict[str, str],
    source: dict[str, Any],
    counts: dict[str, int],
    parts: dict[str, dict[str, Any]],
    include: Callable[[str], bool] | None = None,
) -> Manifest:
    """Checksum every file under `root` (or those whose relative path `include` accepts: a shard set lists
    its shards' manifests, which cover their own files) and write manifest.json (last, so its presence
    means 'complete')."""
    now = datetime.now(UTC)
    files = checksum_tree(root, include)
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        snapshot_version=make_version(collection, files, now),
        collection=collection,
        created_at=now.isoformat(timespec="seconds"),
        builder=builder,
        source=source,
        counts=counts,
        parts=parts,
        files=files,
    )
    atomic_write(root / MANIFEST, manifest.model_dump_json(indent=2).encode())
    return manifest


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not root.is_dir():
        raise SnapshotError(f"{root}: not a directory")
    if not path.is_file():
        raise SnapshotError(f"{root}: no {MANIFEST} (not a snapshot, or its build did not finish)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SnapshotError(f"{path}: not a {FORMAT} manifest")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise SnapshotError(
            f"{path}: snapshot format_version {version!r} is not supported by this build "
            f"(supported: {sorted(SUPPORTED_FORMAT_VERSIONS)}); rebuild the snapshot or upgrade quarry"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SnapshotError(f"{path}: invalid manifest field {loc}: {first['msg']}") from None


def verify_files(root: Path, manifest: Manifest, *, full: bool = True) -> None:
    """Check every listed file exists with the recorded size (and sha256 when `full`)."""
    for rel, entry in manifest.files.items():
        p = root / rel
        if not p.is_file():
            raise SnapshotError(f"{root}: file {rel} listed in the manifest is missing")
        size = p.stat().st_size
        if size != entry.bytes:
            raise SnapshotError(
                f"{root}: file {rel} is {size} bytes, manifest says {entry.bytes} (truncated?)"
            )
        if full and sha256_file(p) != entry.sha256:
            raise SnapshotError(f"{root}: file {rel} fails its sha256 checksum (corrupt)")
    for part, meta in manifest.parts.items():
        for rel in meta.get("files", []):
            if rel not in manifest.files:
                raise SnapshotError(f"{root}: part {part!r} needs {rel}, which the manifest does not list")


def open_snapshot(root: Path, *, verify: Literal["full", "size"] = "full") -> Manifest:
    manifest = read_manifest(root)
    verify_files(root, manifest, full=verify == "full")
    return manifest


@contextmanager
def staging_dir(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to build into; on success publish it atomically as `out`.

    On failure the temporary directory is removed and `out` is left exactly as it was.
    """
    out = out.resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    os.chmod(
        tmp, 0o755
    )  # mkdtemp makes it owner-only; a served snapshot must be readable by the server's user
    try:
        yield tmp
        _fsync_tree(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for p in _walk_files(root):
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    for p in [root, *[d for d in root.rglob("*") if d.is_dir()]]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
