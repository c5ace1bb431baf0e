"""Passages of long items, for the vector index that scores an item by its best passage
(`common.index.vectors.passages`): cut by the indexer for a build and by the retriever for an Upsert.

An item's passages are windows of `sentences` consecutive sentences of its longest embedded field (the
body), starting every `stride` sentences, each prefixed with its other embedded fields (the title), so a
window reads like a short document about the same subject. Items whose body has no more than `sentences`
sentences get none: their own vector already covers them whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.catalog import Item, split_sentences


@dataclass(frozen=True)
class PassageOptions:
    #: Sentences in a window.
    sentences: int = 3
    #: Sentences between the starts of two windows (< `sentences`: windows overlap).
    stride: int = 2

    def __post_init__(self) -> None:
        if self.sentences < 1:
            raise ValueError(f"passage windows need at least one sentence, got {self.sentences}")
        if not 1 <= self.stride <= self.sentences:
            raise ValueError(f"passage stride must be 1..{self.sentences} (the window), got {self.stride}")

    @classmethod
    def parse(cls, spec: str) -> PassageOptions | None:
        """``"none"`` or ``"SENTENCES:STRIDE"`` (e.g. ``3:2``), as the CLI takes it."""
        if spec.strip().lower() == "none":
            return None
        try:
            sentences, stride = (int(x) for x in spec.split(":"))
        except ValueError:
            raise ValueError(f"passages must be 'none' or SENTENCES:STRIDE like 3:2, got {spec!r}") from None
        return cls(sentences, stride)

    def as_dict(self) -> dict[str, int]:
        return {"sentences": self.sentences, "stride": self.stride}


def passage_texts(
    catalog: Sequence[Item], fields: Sequence[str], options: PassageOptions
) -> tuple[list[str], np.ndarray]:
    """Every passage's text and its item's ordinal (position in `catalog`), items in order."""
    texts: list[str] = []
    owners: list[int] = []
    w, step = options.sentences, options.stride
    for ordinal, item in enumerate(catalog):
        parts = [t for f in fields if (t := item.text.get(f, "").strip())]
        if not parts:
            continue
        longest = max(range(len(parts)), key=lambda i: len(parts[i]))
        body = parts.pop(longest)
        prefix = ". ".join(parts)
        sentences = split_sentences(body)
        if len(sentences) <= w:
            continue
        for at in range(0, len(sentences), step):
            window = " ".join(sentences[at : at + w])
            texts.append(f"{prefix}. {window}" if prefix else window)
            owners.append(ordinal)
            if at + w >= len(sentences):
                break
    return texts, np.asarray(owners, dtype=np.int64)
