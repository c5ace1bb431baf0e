"""docker-compose.yml and the Dockerfile stay consistent with the code (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from quarry.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_use_real_commands_and_files() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "indexer", "retriever"} <= set(services)
    build = services["indexer"]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    assert dockerfile.is_file()
    for name in ("indexer", "retriever"):
        cmd = services[name]["command"]
        # Every flag must exist in the CLI: click rejects unknown options before honouring --help.
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0, f"{name}: {cmd}: {r.output}"
    env = services["retriever"]["environment"]
    from common.settings import QuarrySettings

    s = QuarrySettings(
        redis={"url": env["QUARRY_REDIS__URL"]},
        server={"metrics_port": int(env["QUARRY_SERVER__METRICS_PORT"])},
    )
    assert s.redis.url.startswith("redis://")


def test_dockerfile_copies_existing_paths() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"


def test_dockerfile_copies_every_package_the_project_installs() -> None:
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    packages = {p.rstrip("*") for p in include}
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {part for src in re.findall(r"^COPY (.+) \S+$", text, flags=re.M) for part in src.split()}
    assert packages <= copied, f"the image would lack {sorted(packages - copied)}"


def test_compose_gpu_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = doc["services"]["retriever-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["QUARRY_EXTRA"] == "gpu"
    assert "QUARRY_EXTRA" in (ROOT / gpu["build"]["dockerfile"]).read_text(), (
        "the Dockerfile takes the build arg"
    )
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    r = CliRunner().invoke(main, [*gpu["command"], "--help"])
    assert r.exit_code == 0, r.output
    from common.settings import QuarrySettings

    for k, v in gpu["environment"].items():
        monkeypatch.setenv(k, str(v))
    assert QuarrySettings().defaults.ann.use_gpu == "always"
