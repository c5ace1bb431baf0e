"""The `quarry` CLI as users and scripts run it, against the real test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quarry.cli import main

pytestmark = pytest.mark.integration


def test_query_prints_hits_and_json(server: str) -> None:
    r = CliRunner().invoke(
        main, ["query", "--target", server, "--collection", "geonames", "--top-k", "3", "上海"]
    )
    assert r.exit_code == 0, r.output
    assert "Shanghai" in r.output.splitlines()[1]
    r = CliRunner().invoke(
        main, ["query", "--target", server, "--collection", "geonames", "--json", "--debug", "paris"]
    )
    doc = json.loads(r.output)
    assert doc["hits"][0]["title"].startswith("Paris") and doc["branchStats"]


def test_query_errors_are_clear(server: str) -> None:
    r = CliRunner().invoke(main, ["query", "--target", server, "--collection", "nope", "x"])
    assert r.exit_code == 1 and "NOT_FOUND: collection 'nope' not found" in r.output
    r = CliRunner().invoke(
        main, ["query", "--target", server, "--collection", "geonames", "--range", "population:abc:", "x"]
    )
    assert r.exit_code == 2 and "MIN and MAX must be numbers" in r.output


def test_recommend(server: str) -> None:
    r = CliRunner().invoke(
        main, ["recommend", "--target", server, "--collection", "movielens", "--user", "196", "--debug"]
    )
    assert r.exit_code == 0, r.output
    assert "branch behavior: ok" in r.output


def test_index_build_and_verify_a_catalog(tmp_path: Path) -> None:
    cat = tmp_path / "shops.jsonl"
    cat.write_text(
        '{"id": "a", "text": {"title": "Corner bakery", "body": "bread and cakes"}, "category": "food", "lat": 60.17, "lon": 24.94}\n'
        '{"id": "b", "text": {"title": "Book shop"}, "category": "books", "lat": 60.16, "lon": 24.93}\n'
    )
    ev = tmp_path / "events.jsonl"
    ev.write_text('{"user": "u", "item": "a", "ts": 1}\n{"user": "u", "item": "b", "ts": 2}\n')
    out = tmp_path / "snap"
    args = [
        "index",
        "build",
        "--catalog",
        str(cat),
        "--events",
        str(ev),
        "--out",
        str(out),
        "--encoder",
        "none",
        "--no-progress",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "built shops-" in r.output
    r = CliRunner().invoke(main, ["index", "verify", str(out)])
    assert r.exit_code == 0 and "ok: shops-" in r.output
    r = CliRunner().invoke(main, args)  # exists, no --force
    assert r.exit_code == 1 and "--force" in r.output
    cat.write_text('{"id": "a", "lat": 100, "lon": 0}\n')
    r = CliRunner().invoke(main, [*args, "--force"])
    assert r.exit_code == 1 and "shops.jsonl:1" in r.output and "lat 100" in r.output
    r = CliRunner().invoke(main, ["index", "verify", str(out)])
    assert r.exit_code == 0  # the failed rebuild left the published snapshot intact


def test_rank_load_profiles_into_redis(tmp_path: Path, redis_url: str) -> None:
    ev = tmp_path / "events.jsonl"
    ev.write_text('{"user": "u", "item": "a", "ts": 1}\n{"user": "u", "item": "b", "ts": 2, "weight": 3}\n')
    args = [
        "rank",
        "load-profiles",
        "--events",
        str(ev),
        "--collection",
        "cli-prof",
        "--redis-url",
        redis_url,
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "2 events stored, 0 already present" in r.output, r.output
    r = CliRunner().invoke(main, args)
    assert "0 events stored, 2 already present" in r.output
    import redis

    h = redis.Redis.from_url(redis_url).hgetall("quarry:{cli-prof:u}:counters")
    assert int(h[b"events_total"]) == 2 and float(h[b"weight_sum"]) == 4.0


def test_unreachable_server_and_taken_port_are_one_clear_line(server: str, tiny_snapshot: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
        r = CliRunner().invoke(main, ["query", "--target", dead, "--collection", "x", "--timeout", "2", "q"])
    assert (
        r.exit_code == 1 and "cannot reach a Quarry server there" in r.output and "Traceback" not in r.output
    )
    port = server.rsplit(":", 1)[1]  # the session server holds this port
    r = CliRunner().invoke(main, ["serve", "--snapshot", str(tiny_snapshot), "--port", port])
    assert r.exit_code == 1 and "cannot serve: could not bind" in r.output
    assert len(r.output.strip().splitlines()) <= 3, r.output  # (log lines of the load may precede it)


def test_a_search_without_anything_to_search_by_is_invalid(server: str) -> None:
    r = CliRunner().invoke(main, ["query", "--target", server, "--collection", "geonames"])
    assert (
        r.exit_code == 1
        and "INVALID_ARGUMENT: a Search needs query text, a location or a user_id" in r.output
    )
