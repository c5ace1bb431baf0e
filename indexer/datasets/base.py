"""What a data-set adapter returns (`Dataset`), and where the data sets are found."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.catalog import Event, Item
from common.index.text import TextField

if TYPE_CHECKING:
    from indexer.build import BuildOptions

DATA_DIR_ENV = "QUARRY_DATA_DIR"


class DatasetUnavailable(RuntimeError):
    """The data set's files are not on this machine; the message says how to get them."""


@dataclass
class Dataset:
    name: str
    text_fields: list[TextField]
    items: Callable[[], Iterator[Item]]
    events: Callable[[], Iterator[Event]] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    #: Numeric attribute multiplied into BM25 as log2(2 + value) (a popularity prior), if any.
    text_weight_attr: str | None = None
    #: Text fields embedded for ANN recall (None: every searchable field).
    embed_fields: list[str] | None = None
    #: Item-to-item table parameters for the data set's events (None: defaults).
    behavior_params: Any = None
    #: Sentence windows of long items encoded beside the items (common.passages.PassageOptions; None: none).
    passages: Any = None

    def build_options(self, **overrides: Any) -> BuildOptions:
        """BuildOptions carrying this data set's fields, prior and embedding fields; `overrides` win."""
        from indexer.build import BuildOptions

        base: dict[str, Any] = {
            "collection": self.name,
            "text_fields": self.text_fields,
            "text_weight_attr": self.text_weight_attr,
            "embed_fields": self.embed_fields,
            "behavior_params": self.behavior_params,
            "passages": self.passages,
        }
        # None overrides nothing, except where None is a choice: no encoder, no passages.
        base.update({k: v for k, v in overrides.items() if v is not None or k in ("encoder", "passages")})
        return BuildOptions(**base)


def default_data_dir() -> Path:
    """`$QUARRY_DATA_DIR`, else `../shared/data` beside the repository root (where tests and CI find it)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"
