"""The change log: sequence numbers, segments, torn tails, corruption, concurrent writers, folding."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

import common.changelog as cl
from common.catalog import Item
from common.changelog import ChangeLog, ChangeLogError, fold


def test_append_and_read_in_order(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path / "log")
    assert log.read() == ([], cl.Position())
    assert log.last_seq() == 0
    w = log.append([{"op": "delete", "id": "a"}, {"op": "upsert", "item": {"id": "b"}}])
    assert [e["seq"] for e in w] == [1, 2]
    log.append([{"op": "delete", "id": "c"}])
    entries, pos = log.read()
    assert [(e["seq"], e["op"]) for e in entries] == [(1, "delete"), (2, "upsert"), (3, "delete")]
    assert pos.seq == 3 and log.last_seq() == 3
    # Incremental reads: from a position, and from a sequence number.
    log.append([{"op": "delete", "id": "d"}])
    assert [e["seq"] for e in log.read(pos)[0]] == [4]
    assert [e["seq"] for e in log.read(2)[0]] == [3, 4]
    # Another ChangeLog object (another process) continues the same numbering.
    assert ChangeLog(tmp_path / "log").append([{"op": "delete", "id": "e"}])[0]["seq"] == 5


def test_segments_roll_and_read_across(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cl, "SEGMENT_BYTES", 120)
    log = ChangeLog(tmp_path / "log")
    for i in range(10):
        log.append([{"op": "delete", "id": f"item-{i}"}])
    assert len(log.segments()) > 2
    entries, pos = log.read()
    assert [e["seq"] for e in entries] == list(range(1, 11)) and pos.seq == 10
    assert [e["seq"] for e in log.read(7)[0]] == [8, 9, 10]


def test_a_torn_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path / "log")
    log.append([{"op": "delete", "id": "a"}])
    seg = log._path(log.segments()[-1])
    with open(seg, "ab") as f:
        f.write(b'0badc0de {"seq":2,"op":"del')  # a crash in the middle of a write (never acknowledged)
    assert [e["seq"] for e in log.read()[0]] == [1]
    assert ChangeLog(tmp_path / "log").append([{"op": "delete", "id": "b"}])[0]["seq"] == 2
    assert [e["id"] for e in log.read()[0]] == ["a", "b"]


def test_damage_before_the_end_is_an_error(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path / "log")
    log.append([{"op": "delete", "id": "aaaa"}, {"op": "delete", "id": "b"}])
    seg = log._path(log.segments()[-1])
    data = bytearray(seg.read_bytes())
    data[data.index(b"aaaa")] = ord("z")  # a flipped byte in the first entry: its CRC no longer matches
    seg.write_bytes(bytes(data))
    with pytest.raises(ChangeLogError, match="damaged entry"):
        log.read()


def _writer(directory: str, tag: str, n: int) -> None:
    log = ChangeLog(Path(directory))
    for i in range(n):
        log.append([{"op": "delete", "id": f"{tag}{i}"}])


def test_concurrent_writers_in_two_processes_share_one_order(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "log"), tag, 50)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries, _ = ChangeLog(tmp_path / "log").read()
    assert [e["seq"] for e in entries] == list(range(1, 101))
    assert sorted(e["id"] for e in entries) == sorted(f"{t}{i}" for t in "ab" for i in range(50))


def test_fold_applies_changes_in_order() -> None:
    items = [Item(id="a", text={"t": "A"}), Item(id="b", text={"t": "B"}), Item(id="c")]
    entries = [
        {"seq": 1, "op": "upsert", "item": {"id": "b", "text": {"t": "B2"}}},
        {"seq": 2, "op": "delete", "id": "a"},
        {"seq": 3, "op": "upsert", "item": {"id": "d"}},
        {"seq": 4, "op": "upsert", "item": {"id": "a", "text": {"t": "A3"}}},
        {"seq": 5, "op": "delete", "id": "missing"},
    ]
    out = fold(items, entries)
    assert [(it.id, it.text.get("t")) for it in out] == [("b", "B2"), ("c", None), ("d", None), ("a", "A3")]
