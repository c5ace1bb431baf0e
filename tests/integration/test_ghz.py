"""The ghz configs in deploy/ghz/ run as documented against a real server — through server reflection and
with --proto — with every request answered OK. Skipped with a reason when no ghz binary is found
(../shared/tools/ghz beside the repository, then PATH)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from quarry.load import ghz_binary

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("search", "recommend", "log_events")


GHZ = ghz_binary()  # ../shared/tools/ghz beside the repository, then PATH (the harness's own lookup)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The committed geonames data files, pointed at the test server's tiny collection."""
    d = tmp_path_factory.mktemp("ghz")
    out = {}
    for kind in CONFIGS:
        data = json.loads((ROOT / "deploy" / "ghz" / f"{kind}-geonames.json").read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [data]
        for r in rows:
            r["collection"] = "tiny"
            for e in r.get("events", []):
                e["item_id"] = "sh"
        out[kind] = d / f"{kind}.json"
        out[kind].write_text(json.dumps(data if isinstance(data, list) else rows[0], ensure_ascii=False))
    return out


@pytest.mark.skipif(GHZ is None, reason="no ghz binary (../shared/tools/ghz or on PATH)")
@pytest.mark.parametrize("kind", CONFIGS)
@pytest.mark.parametrize("via", ["reflection", "proto"])
def test_ghz_config_runs_clean(server: str, tiny_data: dict[str, Path], kind: str, via: str) -> None:
    cmd = [GHZ, "--config", f"deploy/ghz/{kind}.json", "-D", str(tiny_data[kind])]
    cmd += ["--rps", "100", "--duration", "1s", "--format", "json"]
    if via == "proto":
        cmd += ["--proto", "proto/quarry/v1/search.proto", "--import-paths", "proto"]
    res = subprocess.run([*cmd, server], cwd=ROOT, capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["count"] >= 50
    assert report["statusCodeDistribution"] == {"OK": report["count"]}, report.get("errorDistribution")


def test_configs_name_real_methods_and_files() -> None:
    from common.v1 import search_pb2

    methods = {m.name for m in search_pb2.DESCRIPTOR.services_by_name["SearchService"].methods}
    for kind in CONFIGS:
        cfg = json.loads((ROOT / "deploy" / "ghz" / f"{kind}.json").read_text())
        service, _, method = cfg["call"].rpartition(".")
        assert service == "quarry.v1.SearchService" and method in methods
        assert (ROOT / cfg["data-file"]).is_file()
        assert cfg["host"].startswith("127.0.0.1:")
