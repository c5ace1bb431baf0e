"""User preference profiles: which tags and categories a user favours, from the items they acted on.

A `TagTable` is built once per generation from the forward store (every item's tags, plus its category as
the tag "category:<c>") and the generation's popularity: item → tag ids (CSR), and per tag its items by
popularity, best first. A profile is a normalised affinity per tag from weighted seed items (the caller's
time decay: real-time events first, then long-term history), each seed's weight shared equally by its
tags. Recall by preference and the ranker's user–item affinity both read it, so they agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from common.index.forward import ForwardStore

CATEGORY_PREFIX = "category:"


@dataclass(frozen=True, slots=True)
class TagArrays:
    """Item → tags with each (item, tag)'s rank inside its tag (by popularity, ties to the lower ordinal):
    what a TagTable is built from, and what a sharded build stores per shard (ranks stay global, so a
    shard's per-tag lists are exactly its share of the whole collection's)."""

    vocab: tuple[str, ...]
    #: item ordinal → its tag ids and ranks: tag_ids[item_indptr[o]:item_indptr[o + 1]]
    item_indptr: np.ndarray
    tag_ids: np.ndarray
    tag_rank: np.ndarray

    @classmethod
    def build(cls, tags: pa.ListArray, categories: pa.Array, popularity: np.ndarray | None) -> TagArrays:
        """From every item's tags and category (in ordinal order) and their popularity."""
        n = len(tags)
        parents = pc.list_parent_indices(tags).to_numpy().astype(np.int64)
        flat = tags.flatten()
        cats = categories.cast(pa.string())
        has_cat = np.asarray(cats.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        cat_names = pc.binary_join_element_wise(pa.scalar(CATEGORY_PREFIX), cats.filter(has_cat), "")
        names = pa.concat_arrays([flat.cast(pa.string()), cat_names])
        owners = np.concatenate([parents, np.flatnonzero(has_cat)])
        enc = names.dictionary_encode()
        vocab = tuple(enc.dictionary.to_pylist())
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        width = max(len(vocab), 1)
        # item → tags (deduplicated per item), ordered by item then tag id
        pairs = np.unique(owners * width + codes)
        owners, codes = pairs // width, pairs % width
        item_indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(item_indptr, owners + 1, 1)
        item_indptr = np.cumsum(item_indptr)
        # rank inside each tag: by popularity, ties to the lower ordinal
        pop = popularity if popularity is not None else np.zeros(n)
        order = np.lexsort((owners, -pop[owners], codes))
        sorted_codes = codes[order]
        starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - starts
        return cls(vocab, item_indptr, codes.astype(np.int32), rank.astype(np.int32))

    def take(self, ordinals: np.ndarray) -> TagArrays:
        """The rows of `ordinals` (ascending), renumbered 0..len-1; vocabulary and ranks unchanged."""
        ordinals = np.asarray(ordinals, dtype=np.int64)
        starts, ends = self.item_indptr[ordinals], self.item_indptr[ordinals + 1]
        lens = ends - starts
        pos = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return TagArrays(self.vocab, indptr, self.tag_ids[pos], self.tag_rank[pos])

    def write(self, directory: Path) -> dict[str, Any]:
        """Store as a snapshot part (plain arrays and one Arrow file: memory-mapped, never pickled)."""
        directory.mkdir(parents=True, exist_ok=True)
        vocab = pa.table({"tag": pa.array(list(self.vocab), pa.large_string())})
        with pa.OSFile(str(directory / TAG_VOCAB), "wb") as sink, ipc.new_file(sink, vocab.schema) as w:
            w.write_table(vocab)
        np.save(directory / TAG_INDPTR, self.item_indptr.astype(np.int64))
        np.save(directory / TAG_IDS, self.tag_ids.astype(np.int32))
        np.save(directory / TAG_RANK, self.tag_rank.astype(np.int32))
        rel = directory.name
        return {
            "dir": rel,
            "items": len(self.item_indptr) - 1,
            "tags": len(self.vocab),
            "files": [f"{rel}/{f}" for f in (TAG_VOCAB, TAG_INDPTR, TAG_IDS, TAG_RANK)],
        }

    @classmethod
    def read(cls, directory: Path, meta: Mapping[str, Any]) -> TagArrays:
        vocab = ipc.open_file(pa.memory_map(str(directory / TAG_VOCAB), "r")).read_all()
        arrays = cls(
            tuple(vocab.column("tag").to_pylist()),
            np.asarray(np.load(directory / TAG_INDPTR, mmap_mode="r")),
            np.asarray(np.load(directory / TAG_IDS, mmap_mode="r")),
            np.asarray(np.load(directory / TAG_RANK, mmap_mode="r")),
        )
        if len(arrays.item_indptr) != int(meta["items"]) + 1 or len(arrays.vocab) != int(meta["tags"]):
            raise ValueError(f"{directory}: tag arrays do not match the manifest")
        if len(arrays.tag_ids) != len(arrays.tag_rank) or len(arrays.tag_ids) != int(arrays.item_indptr[-1]):
            raise ValueError(f"{directory}: tag ids and ranks disagree in length")
        return arrays


TAG_VOCAB = "vocab.arrow"
TAG_INDPTR = "item_indptr.npy"
TAG_IDS = "tag_ids.npy"
TAG_RANK = "tag_rank.npy"


@dataclass(frozen=True, slots=True)
class TagTable:
    vocab: tuple[str, ...]
    #: item ordinal → its tag ids: tag_ids[item_indptr[o]:item_indptr[o + 1]]
    item_indptr: np.ndarray
    tag_ids: np.ndarray
    #: tag id → its items, most popular first: tag_items[tag_indptr[t]:tag_indptr[t + 1]]
    tag_indptr: np.ndarray
    tag_items: np.ndarray
    #: the same lists, each ascending by ordinal (several tags' items merge as sorted runs: `items_union`)
    tag_items_sorted: np.ndarray

    @classmethod
    def build(cls, forward: ForwardStore, popularity: np.ndarray | None, *, per_tag: int) -> TagTable:
        arrays = TagArrays.build(
            forward.tags_column(), pa.array(forward.column("category"), pa.string()), popularity
        )
        return cls.from_arrays(arrays, per_tag=per_tag)

    @classmethod
    def from_arrays(cls, arrays: TagArrays, *, per_tag: int) -> TagTable:
        """Per tag, its items whose rank is below `per_tag`, in rank order."""
        lens = np.diff(arrays.item_indptr)
        owners = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
        codes = arrays.tag_ids.astype(np.int64)
        keep = arrays.tag_rank < per_tag
        owners, codes, ranks = owners[keep], codes[keep], arrays.tag_rank[keep]
        order = np.lexsort((ranks, codes))
        counts = np.bincount(codes, minlength=len(arrays.vocab))
        tag_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        by_ordinal = np.lexsort((owners, codes))
        return cls(
            arrays.vocab, arrays.item_indptr, arrays.tag_ids, tag_indptr, owners[order], owners[by_ordinal]
        )

    def tags_of(self, ordinal: int) -> np.ndarray:
        return self.tag_ids[self.item_indptr[ordinal] : self.item_indptr[ordinal + 1]]

    def items_of(self, tag: int) -> np.ndarray:
        return self.tag_items[self.tag_indptr[tag] : self.tag_indptr[tag + 1]]

    def items_union(self, tags: Sequence[int]) -> np.ndarray:
        """The distinct items of the tags' lists, ascending — `np.unique` of their concatenation, but a
        stable sort of already sorted runs (timsort merges them) instead of a full sort: ~15× less."""
        ptr = self.tag_indptr
        pool = np.concatenate(
            [self.tag_items_sorted[ptr[t] : ptr[t + 1]] for t in tags] or [np.zeros(0, dtype=np.int64)]
        )
        if len(pool) < 2:
            return pool
        pool.sort(kind="stable")
        return pool[np.concatenate(([True], pool[1:] != pool[:-1]))]

    def _flat(self, ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, tag id) of every tag of every ordinal, as two aligned arrays (rows index `ordinals`)."""
        n = len(self.item_indptr) - 1
        inside = (ordinals >= 0) & (ordinals < n)
        safe = np.where(inside, ordinals, 0)
        starts = self.item_indptr[safe]
        lens = np.where(inside, self.item_indptr[safe + 1] - starts, 0)
        rows = np.repeat(np.arange(len(ordinals)), lens)
        # each row's run starts at starts[row]: position within the run = global index - run offset
        run_offset = np.repeat(np.cumsum(lens) - lens, lens)
        return rows, self.tag_ids[np.repeat(starts, lens) + np.arange(len(rows)) - run_offset]

    def profile(self, seeds: Sequence[tuple[int, float]]) -> np.ndarray:
        """Affinity per tag id (sums to 1; all zero without usable seeds)."""
        aff = np.zeros(len(self.vocab), dtype=np.float64)
        if not seeds:
            return aff
        ords = np.fromiter((o for o, _ in seeds), dtype=np.int64, count=len(seeds))
        weights = np.fromiter((w for _, w in seeds), dtype=np.float64, count=len(seeds))
        rows, tags = self._flat(ords)
        if not len(rows):
            return aff
        per_tag = np.bincount(rows, minlength=len(ords))  # each seed's weight is shared by its tags
        share = np.where(weights > 0, weights, 0.0) / np.maximum(per_tag, 1)
        aff = np.bincount(tags, weights=share[rows], minlength=len(self.vocab)).astype(np.float64)
        total = aff.sum()
        return aff / total if total > 0 else aff

    def match(self, ordinals: np.ndarray, affinity: np.ndarray) -> np.ndarray:
        """Σ affinity over each item's tags (0 for items without tags or outside the table)."""
        ordinals = np.asarray(ordinals, dtype=np.int64)
        rows, tags = self._flat(ordinals)
        return np.bincount(rows, weights=affinity[tags], minlength=len(ordinals)).astype(np.float64)
