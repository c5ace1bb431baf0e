"""Sharded builds: one catalog → a shard set (layout: common.sharding).

Three phases, which run in one command (`quarry index build --shards N`: the shards in parallel processes)
or as separate jobs on a shared volume (`--only global|shard:I|assemble`: a Kubernetes Job, an Indexed Job
with one pod per shard, and a final Job):

1. **global** — everything that needs the whole catalog, computed once: BM25 statistics (document count,
   tokens per field, document frequency of every term: common.index.textstats), behavior tables (ItemCF /
   Swing over all events, time-decayed popularity, user histories), the tag table with every (item, tag)'s
   rank inside its tag, and the root's part (`global/`: ids, tags, popularity, histories; the ranker).
2. **shard I** — the shard's items (those with `shard_of(id) == I`, in catalog order) as a whole snapshot:
   text with phantom documents and the global df table (so BM25 scores equal one node's), forward store,
   vectors encoded and indexed for its items only, geo; the behavior tables' share whose *neighbours* it
   owns (rows still keyed by the seed's global ordinal: the root sends global seeds, every shard scores its
   own items exactly as one node would); popularity of its items; its items' tag ranks.
3. **assemble** — the set's manifest over the global part and every shard's manifest.

Behavior tables are thus partitioned by neighbour, user data stays global at the root (its histories, and
in production Redis Cluster), and nothing a shard computes depends on which other shards exist.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from common import snapshot
from common.catalog import CatalogError, Event, Item
from common.changelog import ChangeLog, fold
from common.index import textstats
from common.index.behavior import (
    FORMAT_VERSION as BEHAVIOR_FORMAT,
)
from common.index.behavior import (
    HIST_INDICES,
    HIST_INDPTR,
    HIST_USERS,
    ITEM_WEIGHT,
    POPULARITY,
    POPULARITY_ORDER,
    USER_COLUMN,
    table_files,
)
from common.index.ranker_part import write_ranker_part
from common.index.text import TextField
from common.profile import TagArrays
from common.sharding import GLOBAL_DIR, GORD_FILE, SCHEME, shard_dir, shard_meta, shard_of
from common.snapshot_root import CHANGES
from indexer.behavior import BehaviorParams, build_behavior
from indexer.build import BuildOptions, _collect, _text_fields, _version, write_item_parts

log = logging.getLogger(__name__)

PLAN_DIR = ".plan"
PLAN_FILE = "plan.json"
IDS_FILE = "items.arrow"


@dataclass(frozen=True)
class SetPlan:
    """What the global phase decided, read by every shard build and by assembly (`.plan/plan.json`)."""

    set_id: str
    collection: str
    count: int
    global_items: int
    fields: list[dict[str, Any]]
    attr_names: list[str]
    text_docs: int
    text_tokens: dict[str, int]
    behavior: dict[str, Any] | None
    tags: dict[str, Any] | None
    ranker: dict[str, Any] | None
    source: dict[str, Any]

    def text_fields(self) -> list[TextField]:
        return [TextField.from_json(f) for f in self.fields]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PLAN_FILE).write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> SetPlan:
        path = directory / PLAN_FILE
        if not path.is_file():
            raise snapshot.SnapshotError(f"{directory}: no {PLAN_FILE}: run the global phase first")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def partition(catalog: Sequence[Item], count: int) -> list[np.ndarray]:
    """Each shard's global ordinals (catalog positions), ascending."""
    owner = np.fromiter((shard_of(it.id, count) for it in catalog), dtype=np.int64, count=len(catalog))
    return [np.flatnonzero(owner == s).astype(np.int64) for s in range(count)]


def build_sharded(
    items: Iterable[Item],
    out: Path,
    options: BuildOptions,
    source: dict[str, Any],
    events: Iterable[Event] | None = None,
    *,
    shards: int,
    processes: int | None = None,
) -> snapshot.Manifest:
    """Build and atomically publish a shard set of `items` at `out`; shards built `processes` at a time
    (default: as many as there are cores, at most `shards`)."""
    t0 = time.perf_counter()
    catalog = _collect(items, options.progress)
    with snapshot.staging_dir(out, overwrite=options.overwrite) as tmp:
        build_global(catalog, tmp, options, source, events, shards=shards)
        groups = partition(catalog, shards)
        workers = max(1, min(shards, processes or os.cpu_count() or 1))
        # Each process encodes with its share of the cores (onnxruntime would otherwise start one thread
        # per core in every process).
        shard_opts = replace(
            options, progress=False, encoder_threads=max(1, (os.cpu_count() or 1) // workers)
        )
        if workers == 1:
            for s, gords in enumerate(groups):
                build_shard(tmp, s, gords, [catalog[g] for g in gords], shard_opts)
        else:
            # spawn: a fresh interpreter per shard build (no inherited onnxruntime/OpenMP threads).
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [
                    pool.submit(build_shard, tmp, s, gords, [catalog[g] for g in gords], shard_opts)
                    for s, gords in enumerate(groups)
                ]
                for f in futures:
                    f.result()
        manifest = assemble(tmp, seconds=time.perf_counter() - t0)
    log.info(
        "shard set %s: %d items in %d shards in %.1fs → %s",
        manifest.snapshot_version,
        len(catalog),
        shards,
        time.perf_counter() - t0,
        out,
    )
    return manifest


def build_global(
    catalog: Sequence[Item],
    tmp: Path,
    options: BuildOptions,
    source: dict[str, Any],
    events: Iterable[Event] | None,
    *,
    shards: int,
) -> SetPlan:
    """Phase 1 into `tmp`: the root's part (`global/`) and what shard builds read (`.plan/`)."""
    if not 1 <= shards <= 4096:
        raise ValueError(f"--shards must be 1..4096, got {shards}")
    fields = _text_fields(catalog, options.text_fields)
    attr_names = sorted({name for it in catalog for name in it.attrs})
    if options.text_weight_attr and options.text_weight_attr not in attr_names:
        raise CatalogError(f"text_weight_attr {options.text_weight_attr!r} is not an attribute of any item")
    plan_dir, global_dir = tmp / PLAN_DIR, tmp / GLOBAL_DIR
    global_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = textstats.collect(catalog, fields)
    textstats.write_df(stats, global_dir)  # the root's: it sends each query's document frequencies
    log.info("global text statistics: %d documents, %d terms in %.1fs", stats.docs,
             sum(len(c) for c in stats.df.values()), time.perf_counter() - t0)  # fmt: skip
    ids = pa.table({"id": pa.array([it.id for it in catalog], pa.large_string())})
    with pa.OSFile(str(global_dir / IDS_FILE), "wb") as sink, ipc.new_file(sink, ids.schema) as writer:
        writer.write_table(ids, max_chunksize=max(len(catalog), 1))
    behavior_meta = tags_meta = ranker_meta = None
    if events is not None:
        ord_of = {it.id: i for i, it in enumerate(catalog)}
        full = build_behavior(
            events, ord_of, plan_dir / "behavior", params=options.behavior_params or BehaviorParams()
        )
        behavior_meta = _root_behavior(plan_dir / "behavior", full, global_dir / "behavior")
        popularity = np.load(plan_dir / "behavior" / POPULARITY)
        tags = pa.array([list(it.tags) for it in catalog], pa.list_(pa.string()))
        cats = pa.array([it.category for it in catalog], pa.string())
        arrays = TagArrays.build(tags, cats, popularity)
        if arrays.vocab:  # as one node: no tag table without tags or categories
            tags_meta = arrays.write(global_dir / "tags")
            tags_meta = {**tags_meta, "dir": f"{GLOBAL_DIR}/tags",
                         "files": [f"{GLOBAL_DIR}/{f}" for f in tags_meta["files"]]}  # fmt: skip
    if options.ranker_model is not None:
        ranker_meta = write_ranker_part(options.ranker_model, tmp, options.collection)
    plan = SetPlan(
        set_id=uuid.uuid4().hex,
        collection=options.collection,
        count=shards,
        global_items=len(catalog),
        fields=[f.to_json() for f in fields],
        attr_names=attr_names,
        text_docs=stats.docs,
        text_tokens=dict(stats.tokens),
        behavior=behavior_meta,
        tags=tags_meta,
        ranker=ranker_meta,
        source=source,
    )
    plan.save(plan_dir)
    return plan


def _root_behavior(full_dir: Path, full: dict[str, Any], out: Path) -> dict[str, Any]:
    """The root's behavior part: popularity and user histories over global ordinals, no i2i tables."""
    out.mkdir(parents=True, exist_ok=True)
    names: tuple[str, ...] = (POPULARITY, POPULARITY_ORDER, HIST_INDPTR, HIST_INDICES, HIST_USERS)
    if "item_weight" in full:
        names += (ITEM_WEIGHT,)
    for name in names:
        shutil.copyfile(full_dir / name, out / name)
    rel = f"{GLOBAL_DIR}/{out.name}"
    return {
        **full,
        "dir": rel,
        "methods": [],
        "table_methods": full["methods"],
        "files": [f"{rel}/{n}" for n in names],
    }


def build_shard(
    tmp: Path, index: int, gords: np.ndarray, items: Sequence[Item], options: BuildOptions
) -> str:
    """Phase 2: shard `index` of the set staged at `tmp` (its items in catalog order, `gords` their
    global ordinals) as a whole snapshot in `tmp/shard-NNNN`; returns its snapshot version."""
    t0 = time.perf_counter()
    plan = SetPlan.load(tmp / PLAN_DIR)
    if not 0 <= index < plan.count:
        raise ValueError(f"shard {index} is outside this set's 0..{plan.count - 1}")
    gords = np.asarray(gords, dtype=np.int64)
    if len(gords) != len(items) or (len(gords) > 1 and not bool(np.all(np.diff(gords) > 0))):
        raise ValueError("a shard's global ordinals must be ascending, one per item")
    out = tmp / shard_dir(index)
    if out.exists():
        shutil.rmtree(out)  # a retried job starts clean
    out.mkdir(parents=True)
    fields = plan.text_fields()
    shard_stats = textstats.collect(items, fields)
    global_stats = textstats.TextStats(docs=plan.text_docs, tokens=dict(plan.text_tokens))
    n_phantoms, phantom_tokens = textstats.phantom_plan(global_stats, shard_stats.docs, shard_stats.tokens)
    parts = write_item_parts(
        out,
        items,
        fields,
        plan.attr_names,
        options,
        extra_docs=textstats.phantom_documents(n_phantoms, phantom_tokens, fields),
        text_extra={"global": textstats.global_meta(global_stats, n_phantoms, phantom_tokens)},
    )
    if plan.behavior is not None:
        parts["behavior"] = _shard_behavior(tmp / PLAN_DIR / "behavior", plan, gords, out / "behavior")
    if plan.tags is not None:
        arrays = TagArrays.read(tmp / plan.tags["dir"], plan.tags).take(gords)
        parts["tags"] = arrays.write(out / "tags")
    (out / GORD_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.save(out / GORD_FILE, gords)
    parts["shard"] = shard_meta(index, plan.count, plan.set_id, plan.global_items)
    manifest = snapshot.write_manifest(
        out,
        collection=plan.collection,
        builder={"quarry": _version(), "build_seconds": f"{time.perf_counter() - t0:.1f}"},
        source={
            **{k: v for k, v in plan.source.items() if k != "shard_changelog_seq"},
            "set_id": plan.set_id,
            # The position of this shard's own change log that the build folded in (replay starts after).
            "changelog_seq": plan.source.get("shard_changelog_seq", {}).get(shard_dir(index), 0),
        },
        counts={
            "items": len(items),
            "with_location": sum(1 for it in items if it.lat is not None),
            "with_embedding": sum(1 for it in items if it.embedding is not None),
            "categories": len({it.category for it in items if it.category is not None}),
            "phantom_docs": n_phantoms,
        },
        parts=parts,
    )
    log.info("shard %d/%d: %d items in %.1fs", index, plan.count, len(items), time.perf_counter() - t0)
    return manifest.snapshot_version


def _shard_behavior(full_dir: Path, plan: SetPlan, gords: np.ndarray, out: Path) -> dict[str, Any]:
    """The shard's share of the global behavior tables: for every seed (a global ordinal), its
    neighbours that this shard owns, in the same order with the same scores; its items' popularity."""
    assert plan.behavior is not None
    n_global, n_local = plan.global_items, len(gords)
    local_of = np.full(n_global, -1, dtype=np.int64)
    local_of[gords] = np.arange(n_local)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    counts: dict[str, int] = {}

    def save(name: str, arr: np.ndarray) -> None:
        np.save(out / name, np.ascontiguousarray(arr))
        written.append(name)

    methods = list(plan.behavior["table_methods"])
    for method in methods:
        f_indptr, f_indices, f_scores = table_files(method)
        indptr = np.load(full_dir / f_indptr)
        indices = np.load(full_dir / f_indices)
        scores = np.load(full_dir / f_scores)
        rows = np.repeat(np.arange(n_global, dtype=np.int64), np.diff(indptr))
        local = local_of[indices]
        keep = local >= 0
        new_indptr = np.zeros(n_global + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=n_global), out=new_indptr[1:])
        save(f_indptr, new_indptr)
        save(f_indices, local[keep].astype(np.int32))
        save(f_scores, scores[keep].astype(np.float32))
        counts[f"{method}_edges"] = int(keep.sum())
    popularity = np.load(full_dir / POPULARITY)
    save(POPULARITY, popularity[gords].astype(np.float32))
    order = local_of[np.load(full_dir / POPULARITY_ORDER)]
    save(POPULARITY_ORDER, order[order >= 0].astype(np.int32))
    item_weight = plan.behavior.get("item_weight")
    if item_weight is not None:
        save(ITEM_WEIGHT, np.load(full_dir / ITEM_WEIGHT)[gords].astype(np.float32))
    # User histories live at the root (it computes the seeds); a shard keeps an empty user table.
    save(HIST_INDPTR, np.zeros(1, dtype=np.int64))
    save(HIST_INDICES, np.zeros(0, dtype=np.int32))
    table = pa.table({USER_COLUMN: pa.array([], pa.large_string())})
    with pa.OSFile(str(out / HIST_USERS), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    written.append(HIST_USERS)
    return {
        "dir": out.name,
        "format": BEHAVIOR_FORMAT,
        "items": n_local,
        "seed_rows": n_global,
        "users": 0,
        "methods": methods,
        "files": [f"{out.name}/{n}" for n in written],
        "params": plan.behavior.get("params", {}),
        **({} if item_weight is None else {"item_weight": item_weight}),
        "counts": counts,
    }


def assemble(tmp: Path, *, seconds: float = 0.0) -> snapshot.Manifest:
    """Phase 3: the set's manifest over `global/`, the ranker and every shard's manifest.json."""
    plan = SetPlan.load(tmp / PLAN_DIR)
    versions: list[str] = []
    items: list[int] = []
    encoder: dict[str, Any] | None = None
    for s in range(plan.count):
        d = tmp / shard_dir(s)
        m = snapshot.read_manifest(d)
        part = m.parts.get("shard", {})
        if part.get("set_id") != plan.set_id or part.get("index") != s:
            raise snapshot.SnapshotError(
                f"{d}: shard of another build (set {part.get('set_id')}, index {part.get('index')}); "
                f"expected set {plan.set_id}, index {s}"
            )
        versions.append(m.snapshot_version)
        items.append(m.counts["items"])
        enc = m.parts.get("vectors", {}).get("encoder")
        if s == 0:
            encoder = enc
        elif (enc or {}).get("fingerprint") != (encoder or {}).get("fingerprint"):
            raise snapshot.SnapshotError(f"{d}: its vectors come from another encoder than shard 0's")
    if sum(items) != plan.global_items:
        raise snapshot.SnapshotError(f"the shards hold {sum(items)} items, the catalog {plan.global_items}")
    parts: dict[str, Any] = {
        "shards": {
            "count": plan.count,
            "scheme": SCHEME,
            "set_id": plan.set_id,
            "dirs": [shard_dir(s) for s in range(plan.count)],
            "versions": versions,
            "items": items,
        },
        "global": {
            "dir": GLOBAL_DIR,
            "items": plan.global_items,
            "ids": f"{GLOBAL_DIR}/{IDS_FILE}",
            "df": f"{GLOBAL_DIR}/{textstats.DF_FILE}",
            "files": [f"{GLOBAL_DIR}/{IDS_FILE}", f"{GLOBAL_DIR}/{textstats.DF_FILE}"],
            "text_fields": plan.fields,
            "attrs": plan.attr_names,
            "encoder": encoder,
        },
    }
    for name, meta in (("behavior", plan.behavior), ("tags", plan.tags), ("ranker", plan.ranker)):
        if meta is not None:
            parts[name] = meta
    shutil.rmtree(tmp / PLAN_DIR)
    shard_manifests = {f"{shard_dir(s)}/{snapshot.MANIFEST}" for s in range(plan.count)}
    return snapshot.write_manifest(
        tmp,
        collection=plan.collection,
        builder={"quarry": _version(), "build_seconds": f"{seconds:.1f}"},
        source={**plan.source, "set_id": plan.set_id},
        counts={"items": plan.global_items, "shards": plan.count},
        parts=parts,
        include=lambda rel: rel in shard_manifests or not rel.startswith("shard-"),
    )


def fold_changes(
    collection_dir: Path,
    items: Iterable[Item],
    source: dict[str, Any],
    *,
    upto: dict[str, int] | None = None,
    echo: Callable[[str], None] = log.info,
) -> tuple[Iterable[Item], dict[str, Any]]:
    """The catalog with a collection's real-time changes folded in, and `source` with the log positions
    the build includes: the collection's own log (`changes/`, a whole collection's) and every shard's
    (`changes/shard-NNNN`, a shard set's: each shard's replicas share one). `upto`: fold only entries up
    to these positions (a shard phase must fold exactly what its global phase saw)."""
    logs = [
        collection_dir / CHANGES,
        *sorted(p for p in (collection_dir / CHANGES).glob("shard-*") if p.is_dir()),
    ]
    positions: dict[str, int] = {}
    for d in logs:
        key = d.name if d.name != CHANGES else ""
        entries, pos = ChangeLog(d).read(0)
        limit = None if upto is None else upto.get(key, 0)
        if limit is not None:
            entries = [e for e in entries if e["seq"] <= limit]
        positions[key] = pos.seq if limit is None else limit
        if entries:
            items = fold(items, entries)
            of = f" of {key}" if key else ""
            echo(f"folding {len(entries)} change-log entries{of} (up to seq {positions[key]}) into the build")
    shard_positions = {k: v for k, v in positions.items() if k}
    return items, {**source, "changelog_seq": positions.get("", 0), "shard_changelog_seq": shard_positions}


def log_positions(source: dict[str, Any]) -> dict[str, int]:
    """The positions `fold_changes` recorded in a build's source (for `upto`)."""
    return {"": int(source.get("changelog_seq", 0)), **source.get("shard_changelog_seq", {})}


def run_phase(
    phase: str,
    items: Iterable[Item],
    staging: Path,
    options: BuildOptions,
    source: dict[str, Any],
    events: Iterable[Event] | None,
    *,
    shards: int,
) -> str:
    """One phase of a sharded build in the shared `staging` directory (`--only`): "global", "shard:I" or
    "assemble" (which only writes the set's manifest; publishing it is the caller's). Returns a summary."""
    if phase == "global":
        catalog = _collect(items, options.progress)
        staging.mkdir(parents=True, exist_ok=True)
        plan = build_global(catalog, staging, options, source, events, shards=shards)
        return f"global phase of set {plan.set_id}: {len(catalog)} items, {shards} shards → {staging}"
    if phase.startswith("shard:"):
        try:
            index = int(phase.removeprefix("shard:"))
        except ValueError:
            raise ValueError(f"--only shard:I needs a shard number, got {phase!r}") from None
        plan = SetPlan.load(staging / PLAN_DIR)
        if plan.count != shards:
            raise ValueError(f"the global phase planned {plan.count} shards, not {shards}")
        catalog = _collect(items, options.progress)
        if len(catalog) != plan.global_items:
            raise ValueError(
                f"the catalog has {len(catalog)} items, the global phase saw {plan.global_items}: "
                "every phase must read the same catalog"
            )
        gords = partition(catalog, shards)[index] if 0 <= index < shards else np.zeros(0, np.int64)
        version = build_shard(staging, index, gords, [catalog[g] for g in gords], options)
        return f"shard {index}: {len(gords)} items ({version})"
    if phase == "assemble":
        manifest = assemble(staging)
        return f"assembled {manifest.snapshot_version}: {manifest.counts['items']} items in {shards} shards"
    raise ValueError(f"unknown phase {phase!r}: global, shard:I or assemble")
