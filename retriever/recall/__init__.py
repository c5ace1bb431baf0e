"""Recall branches. One module each; `FACTORIES` maps each branch's name to its constructor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retriever.recall import inverted
from retriever.recall.base import RecallBranch, RecallRequest

FACTORIES: dict[str, Callable[[Any, Any], RecallBranch]] = {
    inverted.NAME: inverted.InvertedBranch.create,
}

__all__ = ["FACTORIES", "RecallBranch", "RecallRequest"]
