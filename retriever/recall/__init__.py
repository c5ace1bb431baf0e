"""Recall branches: one module each, registered by `@register` (see `registry`); the Protocol is in `base`."""

from __future__ import annotations

from retriever.recall.base import BranchUnavailable, Generation, RecallBranch, RecallRequest, analyze_query
from retriever.recall.registry import branch_class, branch_names, branches, register

__all__ = [
    "BranchUnavailable",
    "Generation",
    "RecallBranch",
    "RecallRequest",
    "analyze_query",
    "branch_class",
    "branch_names",
    "branches",
    "register",
]
