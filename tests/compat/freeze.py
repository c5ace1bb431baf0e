"""Write the frozen compatibility snapshot (run from the repo root: python -m tests.compat.freeze)."""

from __future__ import annotations

from indexer.build import BuildOptions, build_snapshot
from tests.compat.test_frozen_snapshot import FROZEN
from tests.conftest import TINY_FIELDS, TINY_ITEMS

if __name__ == "__main__":
    build_snapshot(
        TINY_ITEMS,
        FROZEN,
        BuildOptions(
            collection="tiny", text_fields=TINY_FIELDS, writer_threads=1, overwrite=True, progress=False
        ),
        {"dataset": "tiny (synthetic)"},
    )
    print(f"wrote {FROZEN}")
