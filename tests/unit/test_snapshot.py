"""The snapshot contract: manifests are validated and corrupt/truncated snapshots are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common import snapshot
from common.catalog import CatalogError, Item
from common.settings import CollectionSettings
from common.snapshot import SnapshotError, open_snapshot
from indexer.build import BuildOptions, build_snapshot
from retriever.generations import Collection


@pytest.fixture
def snap(tiny_snapshot: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_snapshot, dst)
    return dst


def test_manifest_records_counts_parts_and_checksums(tiny_snapshot: Path) -> None:
    m = open_snapshot(tiny_snapshot)
    assert m.format == "quarry-snapshot" and m.format_version == snapshot.FORMAT_VERSION
    assert m.collection == "tiny" and m.snapshot_version.startswith("tiny-")
    assert m.counts["items"] == 7 and m.counts["with_location"] == 6
    assert {"text", "forward"} <= set(m.parts)
    assert "forward.arrow" in m.files and any(f.startswith("text/") for f in m.files)
    assert all(len(e.sha256) == 64 for e in m.files.values())


def _largest_text_file(root: Path) -> Path:
    return max(
        (p for p in (root / "text").iterdir() if p.is_file() and not p.name.endswith(".json")),
        key=lambda p: p.stat().st_size,
    )


def test_flipped_byte_is_refused(snap: Path) -> None:
    victim = _largest_text_file(snap)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="sha256"):
        open_snapshot(snap)
    with pytest.raises(SnapshotError):
        Collection(snap, CollectionSettings())


def test_truncated_file_is_refused_even_in_size_mode(snap: Path) -> None:
    victim = snap / "forward.arrow"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(SnapshotError, match="truncated"):
        open_snapshot(snap, verify="size")


def test_missing_file_is_refused(snap: Path) -> None:
    (snap / "forward.arrow").unlink()
    with pytest.raises(SnapshotError, match="missing"):
        open_snapshot(snap)


def test_missing_or_truncated_manifest(snap: Path) -> None:
    man = snap / "manifest.json"
    text = man.read_text()
    man.write_text(text[: len(text) // 2])
    with pytest.raises(SnapshotError, match="not valid JSON"):
        open_snapshot(snap)
    man.unlink()
    with pytest.raises(SnapshotError, match=r"no manifest\.json"):
        open_snapshot(snap)


def test_unsupported_format_version(snap: Path) -> None:
    man = snap / "manifest.json"
    raw = json.loads(man.read_text())
    raw["format_version"] = 99
    man.write_text(json.dumps(raw))
    with pytest.raises(SnapshotError, match="format_version 99 is not supported"):
        open_snapshot(snap)


def test_invalid_manifest_field(snap: Path) -> None:
    man = snap / "manifest.json"
    raw = json.loads(man.read_text())
    raw["counts"] = "many"
    man.write_text(json.dumps(raw))
    with pytest.raises(SnapshotError, match="invalid manifest field counts"):
        open_snapshot(snap)


def test_failed_build_leaves_previous_snapshot_intact(snap: Path) -> None:
    before = open_snapshot(snap).snapshot_version

    def broken() -> list[Item]:
        yield Item(id="a", text={"name": "x"})
        raise RuntimeError("catalog reader died half-way")

    with pytest.raises(RuntimeError):
        build_snapshot(broken(), snap, BuildOptions(collection="tiny", overwrite=True, progress=False), {})
    assert open_snapshot(snap).snapshot_version == before
    assert not [p for p in snap.parent.iterdir() if p.name.startswith(".copy.building-")]


def test_existing_output_needs_overwrite(snap: Path) -> None:
    with pytest.raises(FileExistsError):
        build_snapshot(
            [Item(id="a", text={"name": "x"})], snap, BuildOptions(collection="tiny", progress=False), {}
        )


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    items = [Item(id="a", text={"t": "x"}), Item(id="a", text={"t": "y"})]
    with pytest.raises(CatalogError, match="duplicate item id 'a'"):
        build_snapshot(items, tmp_path / "s", BuildOptions(collection="c", progress=False), {})
