from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.settings import QuarrySettings
from retriever.settings import load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "quarry.example.toml"


def test_example_config_parses_and_applies() -> None:
    s = load_settings(EXAMPLE)
    assert s.server.port == 50051 and s.limits.max_top_k == 1000
    assert s.for_collection("geonames").branches["inverted"].quota == 300
    assert s.for_collection("geonames").branches["inverted"].timeout_ms == 100.0  # inherited from defaults
    assert s.for_collection("scifact").field_boosts == {"title": 0.4}
    assert s.for_collection("other") == s.defaults


def test_environment_overrides_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUARRY_SERVER__PORT", "50099")
    monkeypatch.setenv("QUARRY_DEFAULTS__BRANCHES__INVERTED__TIMEOUT_MS", "12.5")
    s = load_settings(EXAMPLE)
    assert s.server.port == 50099
    assert s.defaults.branches["inverted"].timeout_ms == 12.5


def test_unknown_keys_and_branches_are_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults.branches.telepathy]\nenabled = true\n")
    with pytest.raises(ValidationError, match="unknown recall branches"):
        load_settings(bad)
    bad.write_text("[server]\nprot = 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(bad)
    bad.write_text("[collections.x.branches.inverted]\nquota = -1\n")
    with pytest.raises(ValidationError):
        load_settings(bad)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_settings(tmp_path / "nope.toml")


def test_defaults_need_no_file() -> None:
    s = QuarrySettings()
    assert s.redis.url == "" and s.defaults.fusion.strategy == "rrf"


def test_example_learned_fusion_block_is_valid_when_uncommented() -> None:
    import tomllib

    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [collections.scifact.fusion]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    parsed = tomllib.loads("\n".join(block))
    fs = QuarrySettings(collections=parsed["collections"]).for_collection("scifact").fusion
    assert fs.strategy == "learned" and fs.learned is not None
    assert fs.learned.branches == ["inverted", "ann"] and fs.learned.weights


def test_redis_cluster_from_file_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(EXAMPLE).redis.cluster is False  # the example names the key with its default
    monkeypatch.setenv("QUARRY_REDIS__URL", "redis://127.0.0.1:7000")
    monkeypatch.setenv("QUARRY_REDIS__CLUSTER", "true")
    s = load_settings(EXAMPLE)
    assert s.redis.cluster is True and s.redis.url == "redis://127.0.0.1:7000"


def test_redis_cluster_needs_a_node_url_on_db_0() -> None:
    with pytest.raises(ValidationError, match=r"needs redis\.url"):
        QuarrySettings(redis={"cluster": True})
    with pytest.raises(ValidationError, match="only db 0"):
        QuarrySettings(redis={"url": "redis://127.0.0.1:7000/3", "cluster": True})
    assert QuarrySettings(redis={"url": "redis://127.0.0.1:7000/0", "cluster": True}).redis.cluster
    assert QuarrySettings(redis={"url": "redis://127.0.0.1:6379/3"}).redis.url.endswith("/3")  # plain: any db
