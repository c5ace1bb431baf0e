"""User preference profiles: which tags and categories a user favours, from the items they acted on.

A `TagTable` is built once per generation from the forward store (every item's tags, plus its category as
the tag "category:<c>") and the generation's popularity: item → tag ids (CSR), and per tag its items by
popularity, best first. A profile is a normalised affinity per tag from weighted seed items (the caller's
time decay: real-time events first, then long-term history), each seed's weight shared equally by its
tags. Recall by preference and the ranker's user–item affinity both read it, so they agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from common.index.forward import ForwardStore

CATEGORY_PREFIX = "category:"


@dataclass(frozen=True, slots=True)
class TagTable:
    vocab: tuple[str, ...]
    #: item ordinal → its tag ids: tag_ids[item_indptr[o]:item_indptr[o + 1]]
    item_indptr: np.ndarray
    tag_ids: np.ndarray
    #: tag id → its items, most popular first: tag_items[tag_indptr[t]:tag_indptr[t + 1]]
    tag_indptr: np.ndarray
    tag_items: np.ndarray

    @classmethod
    def build(cls, forward: ForwardStore, popularity: np.ndarray | None, *, per_tag: int) -> TagTable:
        n = len(forward)
        col = forward.tags_column()
        parents = pc.list_parent_indices(col).to_numpy().astype(np.int64)
        flat = col.flatten()
        cats = pa.array(forward.column("category"), pa.string())
        has_cat = np.asarray(cats.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        cat_names = pc.binary_join_element_wise(pa.scalar(CATEGORY_PREFIX), cats.filter(has_cat), "")
        names = pa.concat_arrays([flat.cast(pa.string()), cat_names])
        owners = np.concatenate([parents, np.flatnonzero(has_cat)])
        enc = names.dictionary_encode()
        vocab = tuple(enc.dictionary.to_pylist())
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        # item → tags (deduplicated per item)
        pairs = np.unique(owners * max(len(vocab), 1) + codes)
        owners, codes = pairs // max(len(vocab), 1), pairs % max(len(vocab), 1)
        item_indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(item_indptr, owners + 1, 1)
        item_indptr = np.cumsum(item_indptr)
        # tag → items by popularity (ties: lower ordinal first), the first `per_tag` of each
        pop = popularity if popularity is not None else np.zeros(n)
        order = np.lexsort((owners, -pop[owners], codes))
        codes_sorted, owners_sorted = codes[order], owners[order]
        starts = np.searchsorted(codes_sorted, np.arange(len(vocab)), side="left")
        ends = np.searchsorted(codes_sorted, np.arange(len(vocab)), side="right")
        ends = np.minimum(ends, starts + per_tag)
        keep = np.concatenate(
            [np.arange(a, b) for a, b in zip(starts, ends, strict=True)] or [np.zeros(0, int)]
        )
        tag_indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return cls(
            vocab, item_indptr, codes.astype(np.int32), tag_indptr, owners_sorted[keep].astype(np.int64)
        )

    def tags_of(self, ordinal: int) -> np.ndarray:
        return self.tag_ids[self.item_indptr[ordinal] : self.item_indptr[ordinal + 1]]

    def items_of(self, tag: int) -> np.ndarray:
        return self.tag_items[self.tag_indptr[tag] : self.tag_indptr[tag + 1]]

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
