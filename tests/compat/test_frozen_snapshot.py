"""Snapshots written by older builds keep loading: a tiny v1 snapshot is frozen under tests/fixtures.

Regenerate ONLY when the format version is bumped (then keep the old one too):
    python -m tests.compat.freeze
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.snapshot import open_snapshot
from retriever.core.types import SearchQuery
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from retriever.settings import load_settings

FROZEN = Path(__file__).resolve().parent.parent / "fixtures" / "snapshot_v1"


def test_frozen_v1_snapshot_validates_and_answers() -> None:
    m = open_snapshot(FROZEN)
    assert m.format_version == 1 and m.collection == "tiny"
    settings = load_settings()
    reg = Registry()
    reg.put(Collection(FROZEN, settings.for_collection("tiny")))
    svc = SearchService(settings, reg)
    try:
        res = asyncio.run(svc.search(SearchQuery(collection="tiny", text="上海")))
    finally:
        svc.close()
    assert [h.id for h in res.hits][:1] == ["sh"]
    assert res.snapshot_version == m.snapshot_version
