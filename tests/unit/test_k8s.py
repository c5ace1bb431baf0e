"""deploy/k8s stays valid and consistent with the code, checked offline (no cluster, no kustomize here):
every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate), the gpu overlay's patch merged
and validated, every `quarry` command line accepted by the real CLI, every QUARRY_ variable a real setting."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from quarry.cli import main

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VERSION = "1.31.0"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _base() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [d for f in kust["resources"] for d in _docs(K8S / "base" / f)]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it to these patches: maps deep-merge, lists of named
    objects (containers, env) merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(x, dict) and "name" in x for x in base + patch):
        by_name = {x["name"]: x for x in base}
        for x in patch:
            by_name[x["name"]] = _merge(by_name[x["name"]], x) if x["name"] in by_name else x
        return list(by_name.values())
    return patch


@pytest.mark.parametrize("doc", _base(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_base_manifests_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_overlays_reference_the_base_and_the_gpu_patch_validates() -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for d in _base()}
    for overlay in ("cpu", "gpu"):
        kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert kust["resources"] == ["../../base"] and kust["images"][0]["newTag"] == overlay
    kust = yaml.safe_load((K8S / "overlays" / "gpu" / "kustomization.yaml").read_text())
    for p in kust["patches"]:
        patch = yaml.safe_load((K8S / "overlays" / "gpu" / p["path"]).read_text())
        target = base[(patch["kind"], patch["metadata"]["name"])]
        merged = _merge(target, patch)
        kubernetes_validate.validate(merged, VERSION, strict=True)
        (c,) = merged["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["args"] == _containers(target)[0]["args"], "the patch keeps the command"
    images = {c["image"].split(":")[0] for d in base.values() for c in _containers(d)}
    assert "quarry" in images, "the image the overlays retag is the one the base runs"


def test_the_config_map_is_the_example_config() -> None:
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert kust["configMapGenerator"][0]["files"] == ["quarry.toml"]
    assert (K8S / "base" / "quarry.toml").read_text() == (ROOT / "deploy" / "quarry.example.toml").read_text()


def _quarry_commands() -> list[list[str]]:
    cmds = []
    for d in _base():
        for c in _containers(d):
            if not c["image"].startswith("quarry"):
                continue
            if c.get("command") == ["sh", "-c"]:
                for part in c["args"][0].split("&&"):
                    argv = shlex.split(part)
                    assert argv[0] == "quarry", part
                    cmds.append(argv[1:])
            else:
                cmds.append(c["args"])
    return cmds


@pytest.mark.parametrize("argv", _quarry_commands(), ids=lambda a: " ".join(a[:3]))
def test_quarry_command_lines_are_real(argv: list[str]) -> None:
    # click rejects an unknown option or command before honouring --help.
    r = CliRunner().invoke(main, [*argv, "--help"])
    assert r.exit_code == 0, r.output


def test_environment_variables_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import QuarrySettings

    gpu = yaml.safe_load((K8S / "overlays" / "gpu" / "retriever-gpu.yaml").read_text())
    envs = [e for d in [*_base(), gpu] for c in _containers(d) for e in c.get("env", [])]
    names = {e["name"] for e in envs}
    assert {"QUARRY_REDIS__URL", "QUARRY_ADMIN__TOKEN", "QUARRY_ADMIN__WATCH"} <= names
    for e in envs:
        monkeypatch.setenv(e["name"], e.get("value", "secret-from-a-secret"))
    s = QuarrySettings()
    assert s.admin.watch and s.admin.token is not None and s.redis.url.startswith("redis://")
    assert s.server.metrics_port == 9464 and s.defaults.ann.use_gpu == "always"
