"""Recall branches: one module each, registered by `@register` (see `registry`); the Protocol is in `base`."""

from __future__ import annotations

from retriever.recall.base import BranchUnavailable, Generation, RecallBranch, RecallRequest
from retriever.recall.registry import branch_class, branch_names, branches, register

__all__ = [
    "BranchUnavailable",
    "Generation",
    "RecallBranch",
    "RecallRequest",
    "branch_class",
    "branch_names",
    "branches",
    "register",
]
