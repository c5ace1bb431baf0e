"""Loading the serving settings: the shared schema (`common.settings`) with recall branch names checked
against this retriever's branch registry, so a typo in `[defaults.branches.x]` fails at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.settings import QuarrySettings
from common.settings import load_settings as load_schema
from retriever.recall.registry import branch_names


def load_settings(config: Path | None = None, **overrides: Any) -> QuarrySettings:
    """Settings from `config` (or $QUARRY_CONFIG), the environment, then `overrides`; branch names validated."""
    return load_schema(config, recall_branches=branch_names(), **overrides)
