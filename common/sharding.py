"""How a collection's items are spread over shards, and what a shard knows about the set it belongs to.

An item lives on shard `blake2b-64(id) mod N` (a stable hash of its id, independent of catalog order, Python's
hash seed or the machine): the indexer partitions by it, and the root routes an Upsert or Delete by it.
Inside a shard, items keep their catalog order, so a shard's dense local ordinals increase with the items'
global ordinals (their positions in the whole catalog): ties broken by ordinal inside a shard are broken
the same way as on one node, and the root merges shard lists by (score, global ordinal).

A sharded generation (a "shard set") is one directory::

    manifest.json        parts.shards: {count, scheme, dirs, versions}; parts.global: the root's part
    global/              what the root reads: item ids and tags in global order, popularity and user
                         histories (user-side work happens once, at the root)
    shard-0000/          a whole snapshot of shard 0's items (its own manifest and checksums), with a
    shard-0001/ …        `shard` part: its index, the set's count and scheme, and its items' global ordinals

The set's manifest lists the global part's files and each shard's manifest.json, whose checksums cover the
shard's files, so one chain of sha256 covers everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEME = "blake2b64-mod"
GORD_FILE = "shard/gord.npy"
GLOBAL_DIR = "global"
MAX_SHARDS = 4096


def shard_of(item_id: str, count: int) -> int:
    """The shard that owns `item_id` in a set of `count` shards."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shard count must be 1..{MAX_SHARDS}, got {count}")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_dir(index: int) -> str:
    return f"shard-{index:04d}"


def is_shard_set(parts: Mapping[str, Any]) -> bool:
    """Whether a manifest's parts describe a shard set (served by a root and its shards)."""
    return "shards" in parts


@dataclass(frozen=True)
class ShardPart:
    """A shard's own `shard` part: where it sits in its set and its items' global ordinals."""

    index: int
    count: int
    scheme: str
    #: The set's identity (its build id); a root and its shards must agree on it.
    set_id: str
    #: Items in the whole set (the global ordinal space).
    global_items: int
    #: local ordinal → global ordinal (strictly increasing).
    gord: np.ndarray

    @classmethod
    def load(cls, root: Path, meta: Mapping[str, Any]) -> ShardPart:
        if meta.get("scheme") != SCHEME:
            raise ValueError(f"unknown sharding scheme {meta.get('scheme')!r} (this build knows {SCHEME})")
        gord = np.load(root / GORD_FILE, mmap_mode="r")
        if gord.dtype != np.int64 or gord.ndim != 1:
            raise ValueError(f"{root / GORD_FILE}: {gord.dtype} {gord.shape}, expected a 1-d int64 array")
        gord = np.asarray(gord)
        if len(gord) > 1 and not bool(np.all(np.diff(gord) > 0)):
            raise ValueError(f"{root / GORD_FILE}: global ordinals are not strictly increasing")
        return cls(
            index=int(meta["index"]),
            count=int(meta["count"]),
            scheme=str(meta["scheme"]),
            set_id=str(meta["set_id"]),
            global_items=int(meta["global_items"]),
            gord=gord,
        )

    def local_of(self, gords: np.ndarray) -> np.ndarray:
        """Local ordinals of the given global ordinals; -1 where the item lives on another shard."""
        gords = np.asarray(gords, dtype=np.int64)
        if not len(self.gord):
            return np.full(len(gords), -1, dtype=np.int64)
        pos = np.searchsorted(self.gord, gords)
        safe = np.minimum(pos, len(self.gord) - 1)
        return np.where(self.gord[safe] == gords, safe, -1).astype(np.int64)


def shard_meta(index: int, count: int, set_id: str, global_items: int) -> dict[str, Any]:
    """The `shard` part's manifest entry (the indexer writes gord.npy beside it)."""
    return {
        "index": index,
        "count": count,
        "scheme": SCHEME,
        "set_id": set_id,
        "global_items": global_items,
        "files": [GORD_FILE],
    }


def verify_shard_set(root: Path, *, full: bool = True) -> list[str]:
    """Check a shard set whole: its manifest and files, then every shard's (its own checksums) and that
    each shard belongs to this set at its place. Returns the shards' snapshot versions."""
    from common.snapshot import SnapshotError, open_snapshot

    manifest = open_snapshot(root, verify="full" if full else "size")
    info = manifest.parts.get("shards")
    if info is None:
        raise SnapshotError(f"{root} is not a shard set")
    versions = []
    for index, (name, version) in enumerate(zip(info["dirs"], info["versions"], strict=True)):
        shard = open_snapshot(root / name, verify="full" if full else "size")
        part = shard.parts.get("shard", {})
        if (
            shard.snapshot_version != version
            or part.get("set_id") != info["set_id"]
            or part.get("index") != index
        ):
            raise SnapshotError(f"{root / name}: not shard {index} of set {info['set_id']} ({version})")
        versions.append(shard.snapshot_version)
    return versions
