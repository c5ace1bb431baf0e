"""Snapshot roots: numbered generations, an atomic live pointer, rollback and gc (real builds of the tiny
synthetic catalog, text + forward only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.catalog import Item
from common.snapshot import SnapshotError, read_manifest
from common.snapshot_root import POINTER, SnapshotRoot, generation_name, parse_generation
from indexer.build import BuildOptions, build_snapshot
from quarry.cli import main
from tests.conftest import TINY_FIELDS, TINY_ITEMS


def _items(n: int) -> list[Item]:
    # Each generation differs (one extra item), so its snapshot version differs too.
    return [*TINY_ITEMS, Item(id=f"g{n}", text={"name": f"Generation {n}"})]


def publish(root: SnapshotRoot, n: int, collection: str = "tiny") -> Path:
    with root.publish(collection) as out:
        build_snapshot(
            _items(n),
            out,
            BuildOptions(collection=collection, text_fields=TINY_FIELDS, progress=False, encoder=None),
            {},
        )
    return out


def test_publish_numbers_generations_and_moves_the_pointer(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    assert root.collections() == [] and root.live_number("tiny") is None
    first, second = publish(root, 1), publish(root, 2)
    assert (first.name, second.name) == ("gen-000001", "gen-000002")
    assert root.live("tiny") == second
    assert (tmp_path / "tiny" / POINTER).read_text() == "gen-000002\n"
    assert [g.live for g in root.generations("tiny")] == [False, True]
    assert root.collections() == ["tiny"]
    assert read_manifest(root.live("tiny")).counts["items"] == len(TINY_ITEMS) + 1


def test_a_failed_build_publishes_nothing(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    publish(root, 1)
    with pytest.raises(RuntimeError, match="killed"), root.publish("tiny") as out:
        opts = BuildOptions(collection="tiny", text_fields=TINY_FIELDS, progress=False, encoder=None)

        def dying() -> object:
            yield from _items(2)
            raise RuntimeError("build killed half-way")

        build_snapshot(dying(), out, opts, {})  # type: ignore[arg-type]
    assert root.numbers("tiny") == [1] and root.live_number("tiny") == 1
    assert not out.exists()
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".gen-")], "staging left behind"


def test_a_build_of_another_collection_is_not_published(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    publish(root, 1)
    with pytest.raises(SnapshotError, match="nothing published"), root.publish("tiny") as out:
        build_snapshot(
            _items(2),
            out,
            BuildOptions(collection="other", text_fields=TINY_FIELDS, progress=False, encoder=None),
            {},
        )
    assert root.numbers("tiny") == [1] and root.live_number("tiny") == 1


def test_rollback_activate_and_gc(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    for n in range(1, 6):
        publish(root, n)
    assert root.previous("tiny") == 4
    root.activate("tiny", "2")
    assert root.live_number("tiny") == 2 and root.previous("tiny") == 1
    removed = root.gc("tiny", keep=2)
    # The two newest stay, and so does the live one even though it is older.
    assert [p.name for p in removed] == ["gen-000001", "gen-000003"]
    assert root.numbers("tiny") == [2, 4, 5] and root.live_number("tiny") == 2
    with pytest.raises(SnapshotError, match="no generation older"):
        root.previous("tiny")
    with pytest.raises(SnapshotError, match="has no generation gen-000009"):
        root.activate("tiny", "gen-000009")
    with pytest.raises(ValueError, match="keep"):
        root.gc("tiny", keep=0)


def test_names_are_validated(tmp_path: Path) -> None:
    assert (
        parse_generation("gen-000012") == parse_generation("12") == 12 and generation_name(12) == "gen-000012"
    )
    with pytest.raises(ValueError, match="not a generation name"):
        parse_generation("latest")
    with pytest.raises(ValueError, match="invalid collection name"):
        SnapshotRoot(tmp_path).collection_dir("../etc")


def test_a_dangling_pointer_is_an_error(tmp_path: Path) -> None:
    root = SnapshotRoot(tmp_path)
    publish(root, 1)
    (tmp_path / "tiny" / POINTER).write_text("gen-000007\n")
    with pytest.raises(SnapshotError, match="does not exist"):
        root.live("tiny")


def test_cli_build_list_rollback_gc(tmp_path: Path) -> None:
    catalog = tmp_path / "tiny.jsonl"
    catalog.write_text("\n".join(json.dumps(it.model_dump(exclude_none=True)) for it in TINY_ITEMS) + "\n")
    root = tmp_path / "root"
    runner = CliRunner()
    build = ["index", "build", "--catalog", str(catalog), "--root", str(root), "--encoder", "none",
             "--text-field", "name:quarry_name", "--no-progress"]  # fmt: skip
    for _ in range(3):
        res = runner.invoke(main, build)
        assert res.exit_code == 0, res.output
    assert "(live)" in res.output
    res = runner.invoke(main, ["index", "list", "--root", str(root)])
    assert res.exit_code == 0 and "* gen-000003" in res.output and "  gen-000001" in res.output
    res = runner.invoke(main, ["index", "rollback", "--root", str(root), "--collection", "tiny"])
    assert res.exit_code == 0 and "now gen-000002" in res.output
    res = runner.invoke(main, ["index", "gc", "--root", str(root), "--keep", "1"])
    # keep 1 = the newest (3); the live one (2) is never removed
    assert res.exit_code == 0 and "removed 1" in res.output and "gen-000001" in res.output
    assert SnapshotRoot(root).numbers("tiny") == [2, 3]
    res = runner.invoke(main, ["index", "build", "--catalog", str(catalog), "--encoder", "none"])
    assert res.exit_code != 0 and "exactly one of --out or --root" in res.output
