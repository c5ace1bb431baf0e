"""Recall branches. One module each; `FACTORIES` maps each branch's name to its constructor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from retriever.recall import ann, behavior, geo, inverted, popular
from retriever.recall.base import BranchUnavailable, RecallBranch, RecallRequest

FACTORIES: dict[str, Callable[[Any, Any], RecallBranch]] = {
    inverted.NAME: inverted.InvertedBranch.create,
    ann.NAME: ann.AnnBranch.create,
    behavior.NAME: behavior.BehaviorBranch.create,
    geo.NAME: geo.GeoBranch.create,
    popular.NAME: popular.PopularBranch.create,
}

__all__ = ["FACTORIES", "BranchUnavailable", "RecallBranch", "RecallRequest"]
