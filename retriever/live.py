"""Real-time items over a loaded generation: Upserts and Deletes applied on top of its immutable indexes.

A generation's files never change (their checksums stay valid; a rollback or a second process reads them
as built). Changes from the collection's change log (`common.changelog`) are applied here instead:

- **Ordinals.** Base items keep ordinals 0..N-1. An upserted item gets the next delta ordinal N, N+1, …;
  re-upserting an id gives it a fresh ordinal and marks the old one dead; a delete marks it dead. `dead`
  covers every ordinal; `remap` sends a base ordinal to its item's current ordinal (or -1 when deleted),
  which is how tables keyed by item identity (behavior i2i, popularity) follow an updated item.
- **Text.** The generation's tantivy files are hard-linked (copied across file systems) into a private
  working index on first change; new documents are added and dead ones deleted there with a writer
  (one commit + reader reload per applied batch), so BM25 statistics stay global and exact.
- **Vectors and geo.** The ANN indexes and the k-d tree are read-only (memory-mapped faiss lists are not
  writable, faiss add/search are not safe concurrently): the delta's vectors and coordinates are searched
  exactly (brute force over at most the delta's size) beside the base index, whose dead ordinals are
  excluded by over-fetching or, past OVERFETCH_MAX, by the filter mask; the two lists are merged.
- **Forward store.** `LiveForward` presents base rows plus delta rows behind ForwardStore's interface.

Every applied batch publishes a new immutable `LiveView` (one reference swap); a request takes the view
once at its start, so its mask, delta arrays and searcher always agree.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import tantivy

from common.catalog import Item, embed_text
from common.encoders.shared import shared_encoder
from common.geo import haversine_many
from common.index.forward import DISPLAY_CHARS, ForwardStore
from common.index.text import TextField, item_document, open_index, ordinal_query
from common.passages import PassageOptions, passage_texts
from common.types import Ranked

log = logging.getLogger(__name__)

#: Base results are over-fetched by the number of dead base ordinals up to this; beyond, masked.
OVERFETCH_MAX = 512
WRITER_HEAP_BYTES = 32 * 1024 * 1024


def encode_vector(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()


def decode_vector(text: str, dim: int) -> np.ndarray | None:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if len(raw) != 4 * dim:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class Vectorizer:
    """How a collection's items become vectors (from its manifest's vectors part)."""

    encoder: str
    fingerprint: str
    dim: int
    #: "encoded" (from text fields, by `encoder`) or "catalog" (items carry their own embedding).
    source: str
    fields: tuple[str, ...]
    threads: int = 1
    #: How the generation cut its long items into passages (None: it has no passage index).
    passages: PassageOptions | None = None

    @classmethod
    def from_manifest(cls, part: Mapping[str, Any] | None, threads: int) -> Vectorizer | None:
        if part is None:
            return None
        enc = part["encoder"]
        cut = part.get("passages")
        return cls(
            encoder=str(enc["name"]),
            fingerprint=str(enc.get("fingerprint", "")),
            dim=int(enc["dim"]),
            source=str(enc.get("source", "encoded")),
            fields=tuple(enc.get("fields") or ()),
            threads=threads,
            passages=None if cut is None else PassageOptions(int(cut["sentences"]), int(cut["stride"])),
        )

    def check(self, item: Item) -> str | None:
        """Why `item` cannot be vectorised for this collection, or None."""
        if self.source == "catalog":
            if item.embedding is None:
                return "this collection's vectors come from the catalog: the item needs an embedding"
            if len(item.embedding) != self.dim:
                return f"embedding has {len(item.embedding)} dimensions, the collection's have {self.dim}"
            if not all(np.isfinite(item.embedding)) or not any(item.embedding):
                return "embedding must be finite and not all zeros"
        elif item.embedding is not None:
            return (
                f"this collection encodes item text with {self.encoder!r}: items must not carry an "
                "embedding (build the collection from catalog embeddings to supply them)"
            )
        return None

    def vectors(self, items: Sequence[Item]) -> np.ndarray:
        """Unit vectors for `items` (each passed `check`), float32 (len(items), dim)."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.source == "catalog":
            return _unit(np.asarray([it.embedding for it in items], dtype=np.float32))
        return self._encode([embed_text(it, self.fields) for it in items])

    def windows(self, items: Sequence[Item]) -> list[np.ndarray]:
        """Each item's passage vectors (m_i, dim), cut as the generation's build cut them (none for an item
        short enough, and none at all when the generation has no passages)."""
        empty = np.zeros((0, self.dim), dtype=np.float32)
        if self.passages is None or not items:
            return [empty for _ in items]
        texts, owner = passage_texts(items, self.fields, self.passages)
        if not texts:
            return [empty for _ in items]
        v = self._encode(texts)
        return [v[owner == i] for i in range(len(items))]

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts` by the collection's encoder (refused if it is not the one that built it)."""
        encoder, fp = shared_encoder(self.encoder, self.threads)
        if fp != self.fingerprint:
            raise RuntimeError(f"encoder {fp} differs from the one that built the collection")
        return _unit(np.asarray(encoder.encode(texts), dtype=np.float32))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)


class _OrdOf(Mapping[str, int]):
    """id → current ordinal: the changed ids' overlay over the base store's mapping."""

    def __init__(self, base: Mapping[str, int], current: Mapping[str, int]) -> None:
        self._base = base
        self._current = current

    def __getitem__(self, key: str) -> int:
        o = self._current.get(key)
        if o is None:
            return self._base[key]
        if o < 0:
            raise KeyError(key)
        return o

    def __iter__(self) -> Iterator[str]:
        for k in self._base:
            if self._current.get(k, 0) >= 0:
                yield k
        for k, o in self._current.items():
            if o >= 0 and k not in self._base:
                yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LiveForward:
    """ForwardStore's read interface over base rows 0..N-1 and delta rows N.. (dead rows included: the
    ordinals stay valid; `dead` says which are no longer served)."""

    def __init__(self, base: ForwardStore, delta: Sequence[Item], current: Mapping[str, int]) -> None:
        self.base = base
        self.delta = delta
        self.attr_names = base.attr_names
        self.text_names = base.text_names
        self.ord_of: Mapping[str, int] = _OrdOf(base.ord_of, current)
        self._n = len(base) + len(delta)

    def __len__(self) -> int:
        return self._n

    @cached_property
    def ids(self) -> list[str]:
        return self.base.ids + [it.id for it in self.delta]

    @cached_property
    def category_vocab(self) -> dict[str, int]:
        vocab = dict(self.base.category_vocab)
        for it in self.delta:
            if it.category is not None and it.category not in vocab:
                vocab[it.category] = len(vocab)
        return vocab

    @cached_property
    def category_codes(self) -> np.ndarray:
        vocab = self.category_vocab
        codes = [vocab[it.category] if it.category is not None else -1 for it in self.delta]
        return np.concatenate([self.base.category_codes, np.asarray(codes, dtype=np.int32)])

    @cached_property
    def lat(self) -> np.ndarray:
        extra = [np.nan if it.lat is None else it.lat for it in self.delta]
        return np.concatenate([self.base.lat, np.asarray(extra, dtype=np.float64)])

    @cached_property
    def lon(self) -> np.ndarray:
        extra = [np.nan if it.lon is None else it.lon for it in self.delta]
        return np.concatenate([self.base.lon, np.asarray(extra, dtype=np.float64)])

    @cached_property
    def _attrs(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate(
                [
                    self.base.attr(name),
                    np.asarray([it.attrs.get(name, np.nan) for it in self.delta], dtype=np.float64),
                ]
            )
            for name in self.attr_names
        }

    def attr(self, name: str) -> np.ndarray:
        return self._attrs[name]

    def tags_mask(self, tags: Sequence[str]) -> np.ndarray:
        wanted = set(tags)
        extra = np.fromiter((bool(wanted.intersection(it.tags)) for it in self.delta), dtype=bool)
        return np.concatenate([self.base.tags_mask(tags), extra])

    def _delta_row(self, it: Item) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": it.id,
            "title": it.title,
            "category": it.category,
            "tags": list(it.tags),
            "lat": it.lat,
            "lon": it.lon,
        }
        for name in self.attr_names:
            row[f"attr_{name}"] = it.attrs.get(name)
        for name in self.text_names:
            row[f"text_{name}"] = it.text.get(name, "")[:DISPLAY_CHARS]
        return row

    def column(self, name: str) -> list[Any]:
        base = self.base.column(name)
        return base + [self._delta_row(it).get(name) for it in self.delta]

    def rows(self, ordinals: Sequence[int]) -> list[dict[str, Any]]:
        n = len(self.base)
        base_rows = iter(self.base.rows([o for o in ordinals if o < n]))
        return [next(base_rows) if o < n else self._delta_row(self.delta[o - n]) for o in ordinals]

    def take_table(self, ordinals: Sequence[int]) -> pa.Table:
        n = len(self.base)
        if all(o < n for o in ordinals):
            return self.base.take_table(ordinals)
        schema = self.base.take_table([]).schema
        return pa.Table.from_pylist(self.rows(ordinals), schema=schema)


@dataclass(frozen=True, eq=False)
class LiveView:
    """One immutable state of a generation plus its applied changes (see the module docstring)."""

    base: ForwardStore
    #: The last change-log sequence number applied (the generation's own, before any change).
    seq: int
    delta: tuple[Item, ...] = ()
    #: id → current ordinal (-1: deleted) for every id a change touched.
    current: Mapping[str, int] = field(default_factory=dict)
    #: Dead ordinals (replaced or deleted) over base + delta; None when there are none.
    dead: np.ndarray | None = None
    #: Base ordinal → its item's current ordinal (-1: deleted); None while no base item changed.
    remap: np.ndarray | None = None
    #: The delta's unit vectors (len(delta), dim), row i for ordinal N+i; None without vectors.
    vectors: np.ndarray | None = None
    #: The delta's passage vectors and each one's delta row (when the generation has passages).
    passage_vectors: np.ndarray | None = None
    passage_owner: np.ndarray | None = None
    #: Searcher over the working text index; None: the generation's own index serves (no change yet).
    searcher: tantivy.Searcher | None = None
    #: The base popularity array (for `popularity`), when the generation has behavior data.
    base_popularity: np.ndarray | None = None
    upserts: int = 0
    deletes: int = 0

    @property
    def base_n(self) -> int:
        return len(self.base)

    @property
    def changed(self) -> bool:
        return bool(self.delta) or self.dead is not None

    @cached_property
    def forward(self) -> ForwardStore | LiveForward:
        return LiveForward(self.base, self.delta, self.current) if self.changed else self.base

    @cached_property
    def n_dead_base(self) -> int:
        return 0 if self.dead is None else int(np.count_nonzero(self.dead[: self.base_n]))

    @cached_property
    def delta_base(self) -> np.ndarray:
        """Each delta item's base ordinal: its id's in the generation, -1 for a new id. Tables keyed by
        item identity (behavior, popularity) follow an updated item through it."""
        ord_of = self.base.ord_of
        return np.fromiter(
            (ord_of.get(it.id, -1) for it in self.delta), dtype=np.int64, count=len(self.delta)
        )

    def base_ordinals(self, ordinals: np.ndarray) -> np.ndarray:
        """`ordinals` (base or delta) as base ordinals (-1: a new id, no base item)."""
        ords = np.asarray(ordinals, dtype=np.int64)
        n = self.base_n
        if not self.delta or not len(ords) or ords.max() < n:
            return ords
        return np.where(ords < n, ords, self.delta_base[np.maximum(ords - n, 0)])

    def over_all(self, name: str, base_values: np.ndarray, fill: float) -> np.ndarray:
        """An array over base ordinals extended over every ordinal: a delta item takes its base item's
        value, a new id `fill`; kept for this view under `name` (one name, one array)."""
        if not self.delta:
            return base_values
        got = self._extended.get(name)
        if got is None:
            db = self.delta_base
            extra = np.where(db >= 0, base_values[np.maximum(db, 0)], fill).astype(base_values.dtype)
            got = self._extended[name] = np.concatenate([base_values, extra])
        return got

    @cached_property
    def _extended(self) -> dict[str, np.ndarray]:
        return {}

    @cached_property
    def popularity(self) -> np.ndarray | None:
        """Popularity over every ordinal: a delta item carries its base item's (0 for a new id)."""
        pop = self.base_popularity
        return None if pop is None else self.over_all("popularity", pop, 0.0)

    def item_count(self) -> int:
        """Items served now (base + delta, dead excluded)."""
        n = self.base_n + len(self.delta)
        return n if self.dead is None else n - int(np.count_nonzero(self.dead))

    # -- what branches use --------------------------------------------------------------------------------

    def restrict(self, mask: np.ndarray | None) -> np.ndarray | None:
        """A filter mask over every ordinal (or None) with the dead ordinals removed."""
        if self.dead is None:
            return mask
        alive = ~self.dead
        return alive if mask is None else mask & alive

    def plan(self, allowed: np.ndarray | None, restricts: bool, k: int) -> tuple[np.ndarray | None, int]:
        """For a content index over base ordinals: (its mask or None, how many to ask it for). Dead base
        ordinals are over-fetched and dropped by `alive` while few, else masked."""
        if allowed is None:
            return None, k
        if not restricts and self.n_dead_base <= OVERFETCH_MAX:
            return None, k + self.n_dead_base
        return allowed[: self.base_n], k

    def alive(self, candidates: Ranked, k: int) -> Ranked:
        """A content index's answer (base ordinals, best first) without the dead ordinals, cut to k."""
        if self.dead is not None and len(candidates):
            keep = ~self.dead[candidates.ordinals]
            if not keep.all():
                candidates = Ranked(candidates.ordinals[keep], candidates.scores[keep])
        return candidates[:k]

    def delta_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        return None if allowed is None else allowed[self.base_n :]

    def delta_vectors(
        self, query: np.ndarray, allowed: np.ndarray | None, k: int, *, passages: bool = False
    ) -> Ranked:
        """Exact top-k of the delta by inner product (with `passages`: each item's best of its own vector
        and its passages', as a passage index scores the generation's items)."""
        if self.vectors is None or not len(self.vectors):
            return Ranked.empty()
        q = np.asarray(query, dtype=np.float32)
        scores = self.vectors @ q
        if passages and self.passage_vectors is not None and len(self.passage_vectors):
            assert self.passage_owner is not None  # set together with passage_vectors (LiveState.apply)
            np.maximum.at(scores, self.passage_owner, self.passage_vectors @ q)
        mask = self.delta_mask(allowed)
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        return _top(scores, k, self.base_n, higher=True)

    def delta_within(
        self, lat: float, lon: float, radius_m: float, allowed: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Delta items within `radius_m`, nearest first: (ordinals, metres)."""
        if not self.delta:
            return np.zeros(0, np.int64), np.zeros(0)
        fw = self.forward
        la, lo = fw.lat[self.base_n :], fw.lon[self.base_n :]
        with np.errstate(invalid="ignore"):
            d = haversine_many(lat, lon, la, lo)
            ok = d <= radius_m  # NaN (no location) compares False
        mask = self.delta_mask(allowed)
        if mask is not None:
            ok &= mask
        idx = np.flatnonzero(ok)
        order = np.lexsort((idx, d[idx]))[:k]
        return idx[order] + self.base_n, d[idx[order]]

    def identity_mask(self, allowed: np.ndarray | None) -> np.ndarray | None:
        """For tables keyed by item identity (over base ordinals): which base items may be returned —
        the filters judged on each item's current version; deleted items never."""
        if self.remap is None:
            return None if allowed is None else allowed[: self.base_n]
        ok = self.remap >= 0
        if allowed is not None:
            ok[ok] = allowed[self.remap[ok]]
        return ok

    def to_current(self, ordinals: np.ndarray, scores: np.ndarray) -> Ranked:
        """Identity-table results (base ordinals, best first) at their items' current ordinals; items
        deleted since the generation was built are dropped."""
        if self.remap is None:
            return Ranked(ordinals, scores)
        now = self.remap[np.asarray(ordinals, dtype=np.int64)]
        keep = now >= 0
        return Ranked(now[keep], np.asarray(scores, dtype=np.float64)[keep])


def _top(scores: np.ndarray, k: int, offset: int, *, higher: bool) -> Ranked:
    finite = np.flatnonzero(np.isfinite(scores))
    if not finite.size or k <= 0:
        return Ranked.empty()
    s = scores[finite]
    order = np.lexsort((finite, -s if higher else s))[:k]
    return Ranked(finite[order] + offset, s[order])


def merge(a: Ranked, b: Ranked, k: int) -> Ranked:
    """Two best-first lists as one, best first (ties: lower ordinal)."""
    if not len(b):
        return a[:k]
    if not len(a):
        return b[:k]
    ords = np.concatenate([a.ordinals, b.ordinals])
    scores = np.concatenate([a.scores, b.scores])
    order = np.lexsort((ords, -scores))[:k]
    return Ranked(ords[order], scores[order])


# -- the mutable side ---------------------------------------------------------------------------------------


class WorkingText:
    """A private writable copy of the generation's tantivy index (hard links: no bytes copied)."""

    def __init__(self, source: Path, directory: Path) -> None:
        directory.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file() and not f.name.endswith(".lock"):
                try:
                    os.link(f, directory / f.name)
                except OSError:
                    shutil.copy2(f, directory / f.name)
        self.dir = directory
        self.index = open_index(directory)
        self.writer = self.index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)

    def commit(self) -> tantivy.Searcher:
        self.writer.commit()
        self.index.reload()
        return self.index.searcher()


class LiveState:
    """The mutable change state of one loaded generation; `apply` publishes a new `LiveView`."""

    def __init__(
        self,
        *,
        base: ForwardStore,
        text_dir: Path,
        text_fields: Sequence[TextField],
        work_dir: Path | None,
        vectorizer: Vectorizer | None,
        seq: int,
        base_popularity: np.ndarray | None,
    ) -> None:
        self.base = base
        self.text_dir = text_dir
        self.text_fields = list(text_fields)
        self.work_dir = work_dir
        self.vectorizer = vectorizer
        self.lock = threading.Lock()
        self.view = LiveView(base, seq, base_popularity=base_popularity)
        self._text: WorkingText | None = None
        self._delta: list[Item] = []
        self._current: dict[str, int] = {}
        self._dead = np.zeros(len(base), dtype=bool)
        self._any_dead = False
        self._remap: np.ndarray | None = None
        dim = vectorizer.dim if vectorizer is not None else 0
        self._vectors = np.zeros((16, dim), dtype=np.float32)
        self._windows = np.zeros((16, dim), dtype=np.float32)
        self._window_owner = np.zeros(16, dtype=np.int64)
        self._n_windows = 0
        self._upserts = 0
        self._deletes = 0

    def current_ordinal(self, item_id: str) -> int | None:
        o = self._current.get(item_id)
        if o is None:
            return self.base.ord_of.get(item_id)
        return o if o >= 0 else None

    def apply(self, entries: Sequence[dict[str, Any]]) -> LiveView:
        """Apply change-log entries (seq order, each after the view's seq) and publish the new view."""
        with self.lock:
            entries = [e for e in entries if e["seq"] > self.view.seq]
            if not entries:
                return self.view
            t0 = time.perf_counter()
            text = self._working_text()
            upserts = [(e, Item.model_validate(e["item"])) for e in entries if e["op"] == "upsert"]
            vectors = self._vectors_for(upserts)
            windows = self._windows_for(upserts)
            items = {e["seq"]: item for e, item in upserts}
            self._dead = np.concatenate([self._dead, np.zeros(len(upserts), dtype=bool)])
            for e in entries:
                if e["op"] == "upsert":
                    item = items[e["seq"]]
                    self._kill(item.id, text)
                    o = len(self.base) + len(self._delta)
                    self._delta.append(item)
                    self._current[item.id] = o
                    base_o = self.base.ord_of.get(item.id)
                    if base_o is not None and self._remap is not None:
                        self._remap[base_o] = o  # its behavior and popularity follow it
                    if self.vectorizer is not None:
                        self._put_vector(len(self._delta) - 1, vectors[e["seq"]])
                        self._put_windows(len(self._delta) - 1, windows.get(e["seq"]))
                    text.writer.add_document(item_document(o, item, self.text_fields))
                    self._upserts += 1
                elif e["op"] == "delete" and self._kill(e["id"], text):
                    self._current[e["id"]] = -1
                    self._deletes += 1
            searcher = text.commit()
            m = len(self._delta)
            self.view = LiveView(
                base=self.base,
                seq=entries[-1]["seq"],
                delta=tuple(self._delta),
                current=dict(self._current),
                dead=self._dead.copy() if self._any_dead else None,
                remap=None if self._remap is None else self._remap.copy(),
                vectors=self._vectors[:m] if self.vectorizer is not None else None,
                passage_vectors=self._windows[: self._n_windows] if self._n_windows else None,
                passage_owner=self._window_owner[: self._n_windows] if self._n_windows else None,
                searcher=searcher,
                base_popularity=self.view.base_popularity,
                upserts=self._upserts,
                deletes=self._deletes,
            )
            log.debug(
                "applied %d changes (seq %d) in %.1f ms",
                len(entries),
                self.view.seq,
                (time.perf_counter() - t0) * 1000,
            )
            return self.view

    def _vectors_for(self, upserts: list[tuple[dict[str, Any], Item]]) -> dict[int, np.ndarray]:
        """seq → vector: logged vectors when made by this collection's encoder, else computed now."""
        if self.vectorizer is None:
            return {}
        vz = self.vectorizer
        out: dict[int, np.ndarray] = {}
        todo: list[tuple[int, Item]] = []
        for e, item in upserts:
            vec = decode_vector(e["vec"], vz.dim) if e.get("vec") and e.get("fp") == vz.fingerprint else None
            if vec is None:
                todo.append((e["seq"], item))
            else:
                out[e["seq"]] = vec
        if todo:
            for (s, _it), v in zip(todo, vz.vectors([it for _s, it in todo]), strict=True):
                out[s] = v
        return out

    def _windows_for(self, upserts: list[tuple[dict[str, Any], Item]]) -> dict[int, np.ndarray]:
        """seq → the item's passage vectors, when the generation has passages: logged ones when made by
        this collection's encoder, else cut and encoded now."""
        vz = self.vectorizer
        if vz is None or vz.passages is None:
            return {}
        out: dict[int, np.ndarray] = {}
        todo: list[tuple[int, Item]] = []
        for e, item in upserts:
            logged = e.get("pvec") if e.get("fp") == vz.fingerprint else None
            rows = None if logged is None else [decode_vector(t, vz.dim) for t in logged]
            if rows is None or any(r is None for r in rows):
                todo.append((e["seq"], item))
            else:
                out[e["seq"]] = np.asarray(rows, dtype=np.float32).reshape(len(rows), vz.dim)
        if todo:
            for (s, _it), w in zip(todo, vz.windows([it for _s, it in todo]), strict=True):
                out[s] = w
        return out

    def _put_windows(self, row: int, windows: np.ndarray | None) -> None:
        if windows is None or not len(windows):
            return
        need = self._n_windows + len(windows)
        if need > len(self._windows):
            size = max(need, 2 * len(self._windows))
            grown = np.zeros((size, self._windows.shape[1]), dtype=np.float32)
            grown[: self._n_windows] = self._windows[: self._n_windows]
            owner = np.zeros(size, dtype=np.int64)
            owner[: self._n_windows] = self._window_owner[: self._n_windows]
            self._windows, self._window_owner = grown, owner  # published views keep the old buffers
        self._windows[self._n_windows : need] = windows
        self._window_owner[self._n_windows : need] = row
        self._n_windows = need

    def _put_vector(self, row: int, vec: np.ndarray) -> None:
        if row >= len(self._vectors):
            grown = np.zeros((2 * len(self._vectors), self._vectors.shape[1]), dtype=np.float32)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown  # published views keep the old buffer; rows are never rewritten
        self._vectors[row] = vec

    def _kill(self, item_id: str, text: WorkingText) -> bool:
        """Mark `item_id`'s current ordinal dead (and delete its text document); False if absent."""
        o = self.current_ordinal(item_id)
        if o is None:
            return False
        self._dead[o] = True
        self._any_dead = True
        text.writer.delete_documents_by_query(ordinal_query(text.index.schema, o))
        base_o = self.base.ord_of.get(item_id)
        if base_o is not None:
            if self._remap is None:
                self._remap = np.arange(len(self.base), dtype=np.int64)
            self._remap[base_o] = -1
        return True

    def _working_text(self) -> WorkingText:
        if self._text is None:
            if self.work_dir is None:
                raise RuntimeError("real-time changes need a working directory")
            self._text = WorkingText(self.text_dir, self.work_dir / "text")
        return self._text

    def close(self) -> None:
        """Release the writer and remove the working copy (the generation's own files stay)."""
        with self.lock:
            self._text = None
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)


def work_dir_for(parent: Path, generation: str) -> Path:
    """A fresh private working directory for one loaded generation in this process; removes the ones left
    behind by processes that are gone (e.g. killed)."""
    parent.mkdir(parents=True, exist_ok=True)
    for p in parent.iterdir():
        pid = p.name.rsplit("-", 2)[-2] if p.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
    return parent / f"{generation or 'snapshot'}-{os.getpid()}-{time.monotonic_ns()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


__all__ = [
    "LiveForward",
    "LiveState",
    "LiveView",
    "Vectorizer",
    "decode_vector",
    "encode_vector",
    "merge",
    "work_dir_for",
]
