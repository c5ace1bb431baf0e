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
