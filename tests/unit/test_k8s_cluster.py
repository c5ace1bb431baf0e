"""deploy/k8s/cluster (shard sets on Kubernetes) stays valid and consistent with the code, checked offline:
the committed manifests are generate.py's output; every manifest validates against the Kubernetes 1.31
schemas; every `quarry` command line goes through the real CLI, and each serving one (with its container's
environment and the ConfigMap's file) yields the settings its role needs; every QUARRY_ variable is a
settings field; every shard index appears once, with its headless Service; the root names every shard's
Service and, like the shards, follows CURRENT with the admin token; the build Jobs' command lines, run in
build.sh's order on a small catalog, publish a shard set; build.sh sequences the Jobs, then waits for every
shard and every root to serve the new set (and follows a shard-count change), against a stand-in kubectl."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, get_origin

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from quarry.cli import main

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CLUSTER = K8S / "cluster"
VERSION = "1.31.0"
BUILD_ID = "t1"
SHARD_SERVICE = "quarry.v1.ShardService"
SEARCH_SERVICE = "quarry.v1.SearchService"
#: QUARRY_ variables that the image or the CLI reads, not settings.
NOT_SETTINGS = {"QUARRY_CONFIG", "QUARRY_DATA_DIR", "QUARRY_CACHE_DIR"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quarry_k8s_generate", CLUSTER / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()
SHARDS = gen.committed_shards(CLUSTER)


def _parse(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _committed() -> dict[str, str]:
    """The files a deployment uses, by path relative to deploy/k8s/cluster (build id filled in)."""
    kust = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    files = {f: (CLUSTER / f).read_text() for f in kust["resources"]}
    files["build/jobs.yaml"] = (CLUSTER / "build" / "jobs.yaml").read_text().replace(gen.BUILD, BUILD_ID)
    return files


def _rendered(shards: int) -> dict[str, str]:
    """What generate.py writes for `shards`, plus the handwritten resources, as _committed() returns them."""
    files = {k: v for k, v in gen.render(shards).items() if k != "kustomization.yaml"}
    files["build/jobs.yaml"] = files["build/jobs.yaml"].replace(gen.BUILD, BUILD_ID)
    files.update({f: (CLUSTER / f).read_text() for f in ("volume.yaml", "redis-cluster.yaml")})
    return files


def _docs(files: dict[str, str]) -> list[dict[str, Any]]:
    return [d for text in files.values() for d in _parse(text)]


def _by(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = _pod(doc)["containers"]
    return c


def _flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------------ generator


def test_the_committed_files_are_the_generators_output() -> None:
    assert SHARDS is not None, "no shard-<I>.yaml: run python deploy/k8s/cluster/generate.py"
    for name, text in gen.render(SHARDS).items():
        assert (CLUSTER / name).read_text() == text, (
            f"{name} is stale: run python deploy/k8s/cluster/generate.py"
        )
    names = sorted(p.name for p in CLUSTER.iterdir() if gen.SHARD_FILE.match(p.name))
    assert names == sorted(f"shard-{i}.yaml" for i in range(SHARDS))


def test_the_generator_changes_the_count_and_drops_stale_shard_files(tmp_path: Path) -> None:
    gen.write(6, tmp_path)
    assert gen.committed_shards(tmp_path) == 6
    changed = gen.write(3, tmp_path)
    assert gen.committed_shards(tmp_path) == 3
    assert {p.name for p in changed} >= {"shard-3.yaml", "shard-4.yaml", "shard-5.yaml", "root.yaml"}
    assert not gen.write(3, tmp_path), "writing the same count again changes nothing"
    with pytest.raises(ValueError):
        gen.render(0)


# ------------------------------------------------------------------------------------------ schemas


def _validation_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, text in _committed().items() for d in _parse(text)]


@pytest.mark.parametrize(
    ("path", "doc"), _validation_cases(), ids=lambda x: x if isinstance(x, str) else x["kind"]
)
def test_manifests_validate(path: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize("shards", [1, 7])
def test_other_shard_counts_validate(shards: int) -> None:
    for doc in _parse(gen.render(shards)["root.yaml"]) + _parse(gen.render(shards)["build/jobs.yaml"]):
        kubernetes_validate.validate(doc, VERSION, strict=True)
    for doc in _parse(gen.render(shards)[f"shard-{shards - 1}.yaml"]):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_kustomizations_reference_what_exists() -> None:
    kust = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    for f in kust["resources"]:
        assert (CLUSTER / f).is_file(), f
    assert "build" not in kust["resources"], "build Jobs run per build (build.sh), not on every apply"
    (cm,) = kust["configMapGenerator"]
    assert cm["files"] == ["quarry.toml"] and (CLUSTER / "quarry.toml").is_file()
    build = yaml.safe_load((CLUSTER / "build" / "kustomization.yaml").read_text())
    assert build["resources"] == ["jobs.yaml"]
    assert build["images"] == kust["images"], "the build runs the image the servers run"
    quarry_pods = [d for d in _docs(_committed()) if d["kind"] in ("Deployment", "Job")]
    images = {c["image"].split(":")[0] for d in quarry_pods for c in _pod(d)["containers"]}
    assert kust["images"][0]["name"] in images

    docs = _docs(_committed())
    pvcs = _by(docs, "PersistentVolumeClaim")
    secret = yaml.safe_load((K8S / "base" / "secret.yaml").read_text())
    for d in docs:
        if d["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        for v in _pod(d).get("volumes", []):
            if "persistentVolumeClaim" in v:
                pvc = pvcs[v["persistentVolumeClaim"]["claimName"]]
                assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "shared by pods on many nodes"
            if "configMap" in v:
                assert v["configMap"]["name"] == cm["name"]
        for c in _pod(d)["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) not installed")
def test_kustomize_builds_both_kustomizations() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(CLUSTER)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    docs = _parse(out)
    (cm,) = _by(docs, "ConfigMap").values()
    assert cm["data"]["quarry.toml"] == (CLUSTER / "quarry.toml").read_text()
    for d in docs:
        kubernetes_validate.validate(d, VERSION, strict=True)
        if d["kind"] == "Deployment":
            names = {v["configMap"]["name"] for v in _pod(d)["volumes"] if "configMap" in v}
            assert names == {cm["metadata"]["name"]}, "kustomize points the pods at the hashed ConfigMap"
    jobs = subprocess.run(
        ["kubectl", "kustomize", str(CLUSTER / "build")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert len(_by(_parse(jobs), "Job")) == 3


# ------------------------------------------------------------------------------------------ shards and root


def _check_topology(docs: list[dict[str, Any]], shards: int) -> None:
    deployments = _by(docs, "Deployment")
    services = _by(docs, "Service")
    pdbs = _by(docs, "PodDisruptionBudget")
    shard_deps = {
        n: d
        for n, d in deployments.items()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "shard"
    }
    indexes = sorted(int(_flag(_container(d)["args"], "--shard")) for d in shard_deps.values())
    assert indexes == list(range(shards)), "every shard index 0..N-1 exactly once"
    all_pods = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}

    for name, d in shard_deps.items():
        c = _container(d)
        i = int(_flag(c["args"], "--shard"))
        assert name == gen.shard_service(i) and _flag(c["args"], "--role") == "shard"
        assert d["spec"]["replicas"] >= 2
        port = int(_flag(c["args"], "--port"))
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"] == {"port": port, "service": SHARD_SERVICE}, (name, probe)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert not mounts["/data"].get("readOnly"), "a shard appends to its change log"
        # Its headless Service selects this shard's pods and no other Deployment's.
        svc = services[gen.shard_service(i)]
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is False
        selected = [n for n, labels in all_pods.items() if _matches(svc["spec"]["selector"], labels)]
        assert selected == [name]
        (grpc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc_port["port"] == port, "a headless Service does not remap ports: the root dials pod:port"
        pdb = pdbs[name]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert [
            n for n, labels in all_pods.items() if _matches(pdb["spec"]["selector"]["matchLabels"], labels)
        ] == [name]
        spread = _pod(d)["topologySpreadConstraints"]
        hard = [s for s in spread if s["whenUnsatisfiable"] == "DoNotSchedule"]
        assert [s["topologyKey"] for s in hard] == ["kubernetes.io/hostname"], "replicas on different nodes"
        assert hard[0]["maxSkew"] == 1
        assert [
            n for n, labels in all_pods.items() if _matches(hard[0]["labelSelector"]["matchLabels"], labels)
        ] == [name]

    root = deployments["quarry-root"]
    c = _container(root)
    assert _flag(c["args"], "--role") == "root" and "--shard" not in c["args"]
    port = int(_flag(c["args"], "--port"))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["grpc"] == {"port": port, "service": SEARCH_SERVICE}, probe
    env = {e["name"]: e for e in c["env"]}
    targets = json.loads(env["QUARRY_CLUSTER__SHARDS"]["value"])
    assert targets == [[f"dns:///{gen.shard_service(i)}:{port}"] for i in range(shards)], (
        "the root names every shard's headless Service, in index order"
    )
    assert not {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}["/data"], (
        "a root's Rollback / Reload --generation moves CURRENT"
    )
    # The root follows CURRENT (a coordinated reload) and serves the AdminService with the token the shards
    # check: cluster.shard_token defaults to admin.token, so both come from the one Secret key.
    assert env["QUARRY_ADMIN__WATCH"]["value"] == "true"
    assert "QUARRY_CLUSTER__SHARD_TOKEN" not in env
    token = env["QUARRY_ADMIN__TOKEN"]["valueFrom"]["secretKeyRef"]
    for d in shard_deps.values():
        shard_env = {e["name"]: e for e in _container(d)["env"]}
        assert shard_env["QUARRY_ADMIN__WATCH"]["value"] == "true"
        assert shard_env["QUARRY_ADMIN__TOKEN"]["valueFrom"]["secretKeyRef"] == token
    client = services["quarry-search"]
    assert (
        client["spec"].get("clusterIP") is None
        and client["spec"]["selector"] == root["spec"]["selector"]["matchLabels"]
    )
    hpa = _by(docs, "HorizontalPodAutoscaler")["quarry-root"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "quarry-root" and hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in root["spec"], "the HPA owns the count: an apply would reset it"
    assert pdbs["quarry-root"]["spec"]["selector"]["matchLabels"] == root["spec"]["selector"]["matchLabels"]


def _check_build(docs: list[dict[str, Any]], shards: int) -> None:
    jobs = _by(docs, "Job")
    glob, shard, assemble = (jobs[f"quarry-build-{p}-{BUILD_ID}"] for p in ("global", "shards", "assemble"))
    argvs = [_container(j)["args"] for j in (glob, shard, assemble)]
    assert [_flag(a, "--only") for a in argvs] == ["global", "shard:$(JOB_COMPLETION_INDEX)", "assemble"]
    for a in argvs:
        assert _flag(a, "--shards") == str(shards)
        assert _flag(a, "--staging") == f"{gen.STAGING}/{BUILD_ID}", "one staging directory per build"
        assert _flag(a, "--root") == gen.ROOT, "every phase folds the root's change logs"
        assert [x for x in a if x not in ("--only", _flag(a, "--only"))] == [
            x for x in argvs[0] if x not in ("--only", "global")
        ], "the phases read the same catalog with the same options"
    assert shard["spec"]["completionMode"] == "Indexed"
    assert shard["spec"]["completions"] == shard["spec"]["parallelism"] == shards
    assert not glob["spec"].get("suspend") and shard["spec"]["suspend"] and assemble["spec"]["suspend"]
    for j in (glob, shard, assemble):
        assert _pod(j)["restartPolicy"] == "Never"
        assert j["metadata"]["labels"]["quarry/build"] == BUILD_ID
        assert j["spec"]["template"]["metadata"]["labels"]["quarry/build"] == BUILD_ID


@pytest.mark.parametrize("shards", [None, 1, 7], ids=lambda n: f"shards={n or 'committed'}")
def test_every_shard_once_with_its_service_and_the_root_names_them_all(shards: int | None) -> None:
    docs = _docs(_committed() if shards is None else _rendered(shards))
    n = shards or SHARDS
    assert n is not None
    _check_topology(docs, n)
    _check_build(docs, n)


def test_a_missing_shard_or_a_wrong_probe_fails_the_checks() -> None:
    files = _committed()
    assert SHARDS is not None and SHARDS >= 2
    gone = {k: v for k, v in files.items() if k != f"shard-{SHARDS - 1}.yaml"}
    with pytest.raises(AssertionError):
        _check_topology(_docs(gone), SHARDS)
    wrong = dict(files)
    wrong["shard-0.yaml"] = files["shard-0.yaml"].replace(
        f"service: {SHARD_SERVICE}", f"service: {SEARCH_SERVICE}"
    )
    with pytest.raises(AssertionError):
        _check_topology(_docs(wrong), SHARDS)
    renamed = dict(files)
    renamed["root.yaml"] = files["root.yaml"].replace("dns:///quarry-shard-1:", "dns:///quarry-shard-01:")
    with pytest.raises(AssertionError):
        _check_topology(_docs(renamed), SHARDS)
    watch = 'name: QUARRY_ADMIN__WATCH, value: "true"'
    assert files["root.yaml"].count(watch) == 1
    unwatched = dict(files)
    unwatched["root.yaml"] = files["root.yaml"].replace(watch, 'name: QUARRY_ADMIN__WATCH, value: "false"')
    with pytest.raises(AssertionError):
        _check_topology(_docs(unwatched), SHARDS)


# ------------------------------------------------------------------------------------------ command lines


def _quarry_argvs(docs: list[dict[str, Any]]) -> list[list[str]]:
    argvs = []
    for d in docs:
        if d["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        for c in _pod(d)["containers"]:
            if c["image"].startswith("quarry"):
                assert "command" not in c, "the image's entrypoint is `quarry`"
                argvs.append([a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in c["args"]])
    return argvs


def _argv_id(argv: list[str]) -> str:
    words = [a for a in argv if not a.startswith("-") and "/" not in a and a != "json"]
    return " ".join(
        words[:2]
        + [a for flag in ("--role", "--shard", "--only") if flag in argv for a in [_flag(argv, flag)]]
    )


@pytest.mark.parametrize("argv", _quarry_argvs(_docs(_committed())), ids=_argv_id)
def test_quarry_command_lines_are_real(argv: list[str]) -> None:
    # click rejects an unknown option or command before honouring --help.
    r = CliRunner().invoke(main, [*argv, "--help"])
    assert r.exit_code == 0, r.output


def _clear_quarry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("QUARRY_"):
            monkeypatch.delenv(k)


def _serving(doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the container's command line through the real `quarry serve` as the pod would (its environment,
    the image's QUARRY_CONFIG, the ConfigMap's file at its mount path, /data in tmp_path) up to the point
    where it would start serving; return the settings and root it would serve with."""
    import retriever.api.server as server

    c = _container(doc)
    config_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
    paths = {f"{config_mount}/quarry.toml": str(CLUSTER / "quarry.toml"), "/data": str(tmp_path / "data")}

    def local(arg: str) -> str:
        for pod_path, here in paths.items():
            if arg == pod_path or arg.startswith(pod_path + "/"):
                return here + arg[len(pod_path) :]
        return arg

    (tmp_path / "data" / "root").mkdir(parents=True, exist_ok=True)
    _clear_quarry_env(monkeypatch)
    monkeypatch.setenv("QUARRY_CONFIG", local("/etc/quarry/quarry.toml"))  # the image's ENV
    for e in c.get("env", []):
        monkeypatch.setenv(e["name"], e.get("value", "from-a-secret"))
    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "serve_workers", lambda s, dirs, root: seen.update(settings=s, root=root))
    r = CliRunner().invoke(main, [local(a) for a in c["args"]])
    assert r.exit_code == 0, r.output
    return SimpleNamespace(**seen, container=c)


def _serving_deployments() -> list[dict[str, Any]]:
    return list(_by(_docs(_committed()), "Deployment").values())


@pytest.mark.parametrize("doc", _serving_deployments(), ids=lambda d: d["metadata"]["name"])
def test_each_serving_command_line_yields_its_roles_settings(
    doc: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retriever.cluster.root import Fanout

    run = _serving(doc, tmp_path, monkeypatch)
    s, c = run.settings, run.container
    assert run.root == tmp_path / "data" / "root"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert s.server.host == "0.0.0.0" and s.server.port == ports["grpc"]
    assert s.server.metrics_port == ports["metrics"]
    assert s.cluster.dns_refresh_s <= 10
    if doc["metadata"]["name"] == "quarry-root":
        assert s.cluster.role == "root" and s.cluster.shard is None
        fanout = Fanout.from_settings(s.cluster)  # the root's own parsing of its replica targets
        assert len(fanout.sets) == SHARDS
        assert s.redis.cluster is True
        redis = _by(_docs(_committed()), "Service")["quarry-redis-cluster"]
        assert s.redis.url == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}"
        assert s.admin.watch is True, "a root follows CURRENT with a coordinated reload"
        assert s.admin.token is not None, "build.sh asks each root for its status; the AdminService"
        shard_token = s.cluster.shard_token or s.admin.token
        assert shard_token.get_secret_value() == "from-a-secret", "the root authenticates to the shards"
    else:
        assert s.cluster.role == "shard" and s.cluster.shard == int(doc["metadata"]["name"].rsplit("-", 1)[1])
        assert s.admin.watch is True, "shards follow CURRENT"
        assert s.admin.token is not None, "build.sh and the roots call each shard's AdminService"
        assert s.cluster.release_previous_s >= 300, "long enough for every root to switch"


def _env_entries() -> list[dict[str, Any]]:
    docs = [
        d
        for p in (K8S / "base").glob("*.yaml")
        if p.name != "kustomization.yaml"
        for d in _parse(p.read_text())
    ]
    docs += _parse((K8S / "overlays" / "gpu" / "retriever-gpu.yaml").read_text())
    docs += _docs(_committed())
    out = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec.get("template", {}).get("spec", {})
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            out += c.get("env", [])
    return out


def _is_setting(name: str) -> bool:
    from common.settings import QuarrySettings

    model: type[BaseModel] = QuarrySettings
    parts = name.removeprefix("QUARRY_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        last = i == len(parts) - 1
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if last:
                return False  # a whole section from one variable is not how the manifests set things
            model = ann
        elif get_origin(ann) is dict:
            return True  # keys below (collection names, branch names) are checked by loading the settings
        else:
            return last
    return False


def test_every_quarry_variable_is_a_settings_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import QuarrySettings

    names = {e["name"] for e in _env_entries() if e["name"].startswith("QUARRY_")}
    assert {
        "QUARRY_CLUSTER__SHARDS",
        "QUARRY_REDIS__CLUSTER",
        "QUARRY_REDIS__URL",
        "QUARRY_ADMIN__WATCH",
        "QUARRY_ADMIN__TOKEN",
    } <= names
    bad = sorted(n for n in names - NOT_SETTINGS if not _is_setting(n))
    assert not bad, f"not settings fields: {bad}"
    assert not _is_setting("QUARRY_CLUSTER__SHARD_LIST") and not _is_setting("QUARRY_REDIS")
    assert not _is_setting("QUARRY_SERVER_PORT"), "one underscore is not a level"
    # Every container's values load too (types, JSON lists).
    for d in _docs(_committed()):
        if d["kind"] in ("Deployment", "Job"):
            _clear_quarry_env(monkeypatch)
            for e in _container(d).get("env", []):
                monkeypatch.setenv(e["name"], e.get("value", "from-a-secret"))
            QuarrySettings()


def test_the_cluster_config_tunes_collections_like_the_example() -> None:
    from common.settings import QuarrySettings, load_settings

    cluster = load_settings(CLUSTER / "quarry.toml")
    example = load_settings(ROOT / "deploy" / "quarry.example.toml")
    assert cluster.collections == example.collections and cluster.defaults == example.defaults
    assert cluster.limits == example.limits
    raw = tomllib.loads((CLUSTER / "quarry.toml").read_text())
    assert "role" not in raw.get("cluster", {}) and "shards" not in raw.get("cluster", {}), (
        "role and shard list come from each pod, not the shared file"
    )
    assert isinstance(cluster, QuarrySettings)


def test_the_redis_cluster_is_formed_from_every_node() -> None:
    docs = _docs(_committed())
    sts = _by(docs, "StatefulSet")["quarry-redis-cluster"]
    svc = _by(docs, "Service")[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None"
    args = _container(sts)["args"]
    assert _flag(args, "--cluster-enabled") == "yes"
    assert _flag(args, "--cluster-announce-hostname") == f"$(POD_NAME).{svc['metadata']['name']}"
    create = _by(docs, "Job")["quarry-redis-cluster-create"]
    script = _container(create)["args"][0]
    (loop,) = re.findall(r"for i in ([\d ]+);", script)
    assert [int(x) for x in loop.split()] == list(range(sts["spec"]["replicas"]))
    assert f"host={sts['metadata']['name']}-$i.{svc['metadata']['name']}" in script
    assert "--cluster-replicas 1" in script and sts["spec"]["replicas"] >= 6, "3 masters, 1 replica each"


# ------------------------------------------------------------------------------------------ the build


def _tiny_catalog(path: Path, n: int = 60) -> Path:
    words = ["alpha", "beta", "gamma", "delta", "river", "city", "lake", "forest", "harbor", "bridge"]
    with path.open("w") as f:
        for i in range(n):
            title = " ".join(words[(i * k) % len(words)] for k in (1, 3, 7))
            f.write(
                json.dumps({"id": f"p{i}", "text": {"title": title}, "lat": i % 60, "lon": i % 170}) + "\n"
            )
    return path


def test_the_build_jobs_publish_a_shard_set_when_run_in_order(tmp_path: Path) -> None:
    """The three Jobs' command lines, run as build.sh orders them (global, every completion index of the
    Indexed Job, assemble) on a small catalog in place of the data set, with /data in tmp_path."""
    jobs = _by(_docs(_committed()), "Job")
    catalog = _tiny_catalog(tmp_path / "geonames.jsonl")

    def local(args: list[str], index: int = 0) -> list[str]:
        out = []
        for a in args:
            a = a.replace("$(JOB_COMPLETION_INDEX)", str(index))
            out.append(str(tmp_path) + a if a.startswith("/data/") else a)
        i = out.index("--dataset")
        return [*out[:i], "--catalog", str(catalog), *out[i + 2 :]]

    runner = CliRunner()
    phases = [local(_container(jobs[f"quarry-build-global-{BUILD_ID}"])["args"])]
    shard_job = jobs[f"quarry-build-shards-{BUILD_ID}"]
    phases += [local(_container(shard_job)["args"], i) for i in range(shard_job["spec"]["completions"])]
    phases.append(local(_container(jobs[f"quarry-build-assemble-{BUILD_ID}"])["args"]))
    for argv in phases:
        r = runner.invoke(main, argv)
        assert r.exit_code == 0, f"{argv}: {r.output}"
    root = tmp_path / "data" / "root" / "geonames"
    assert (root / "CURRENT").read_text().strip() == "gen-000001"
    manifest = json.loads((root / "gen-000001" / "manifest.json").read_text())
    assert manifest["parts"]["shards"]["count"] == SHARDS
    assert not (tmp_path / "data" / "staging" / BUILD_ID).exists(), "assemble moved the staging directory in"
    r = runner.invoke(main, ["index", "verify", str(root / "gen-000001")])
    assert r.exit_code == 0, r.output


FAKE_KUBECTL = r"""#!{python}
# A stand-in for kubectl that build.sh drives: it keeps Jobs in a JSON state file, logs every call and
# answers from a scenario (which phase fails, the roots' shard list, which Deployments exist, which pods
# are running in which listing, what each pod's `quarry admin status` prints).
import json, os, re, sys
from pathlib import Path
import yaml

state_path = Path(os.environ["FAKE_KUBECTL_STATE"])
state = json.loads(state_path.read_text())
args = sys.argv[1:]
state["raw"].append(args)
if args[:1] == ["--namespace"]:
    args = args[2:]
state["log"].append(args)
code = 0
if args[0] == "kustomize":
    d = Path(args[1])
    kust = yaml.safe_load((d / "kustomization.yaml").read_text())
    print("---\n".join((d / f).read_text() for f in kust["resources"]))
elif args[:2] == ["create", "-f"]:
    text = sys.stdin.read()
    state["created"].append(text)
    for doc in yaml.safe_load_all(text):
        if doc and doc["kind"] == "Job":
            state["jobs"][doc["metadata"]["name"]] = {{"suspended": bool(doc["spec"].get("suspend")), "polls": 0}}
elif args[0] == "get" and args[1].startswith("job/"):
    job = state["jobs"].get(args[1][4:])
    if job is None:
        code = 1
    elif job["suspended"]:
        print("Suspended")
    else:
        job["polls"] += 1
        phase = args[1].split("-")[2]
        if job["polls"] == 1:
            print("")  # still running
        elif phase == state["fail"]:
            print("FailureTarget Failed")
        else:
            print("SuccessCriteriaMet Complete")
elif args[:2] == ["get", "deployment/quarry-root"]:
    if state["roots"] is None:
        print('Error from server (NotFound): deployments.apps "quarry-root" not found', file=sys.stderr)
        code = 1
    else:
        print(state["roots"], end="")
elif args[:2] == ["get", "deployments"]:
    (notin,) = re.findall(r"quarry/shard notin \(([\d,]*)\)", args[args.index("-l") + 1])
    keep = notin.split(",")
    print(" ".join(d for d in state["deployments"] if d.rsplit("-", 1)[1] not in keep), end="")
elif args[:2] == ["get", "pods"]:
    role = "root" if "component=root" in args[args.index("-l") + 1] else "shard"
    n = state["listings"][role] = state["listings"].get(role, -1) + 1
    for pod in state["status"]:
        first, last = state["listed"].get(pod, [0, None])
        if f"quarry-{{role}}-" in pod and first <= n and (last is None or n <= last):
            print(pod)
elif args[:2] == ["rollout", "status"] and args[2] in state["unready"]:
    print(f"error: timed out waiting for the condition on {{args[2]}}", file=sys.stderr)
    code = 1
elif args[0] == "patch":
    state["jobs"][args[1][4:]]["suspended"] = False
elif args[0] == "logs":
    print("assembled geonames-v: 60 items in 4 shards → /data/root/geonames/gen-000002 (live)")
elif args[0] == "exec" and "status" in args:
    answers = state["status"][args[1]]
    print(answers.pop(0) if len(answers) > 1 else answers[0], end="")
state_path.write_text(json.dumps(state))
sys.exit(code)
"""


def _status_text(*generations: str, role: str = "shard") -> str:
    """What `quarry admin status` prints for a pod serving `generations` (one collection each: geonames,
    then scifact) while CURRENT names gen-000002: the CLI's own formatting of the AdminService's answer, as
    a shard or as a root (the set id and every shard's replicas, no change log)."""
    from quarry.cli import _echo_status
    from retriever.api.admin import _status
    from retriever.lifecycle import GenerationStatus

    out = io.StringIO()
    for name, generation in zip(("geonames", "scifact"), generations or ("gen-000002",), strict=False):
        replica = {"address": "10.0.0.7:50051", "in_flight": 0, "ejected": False, "failures": 0}
        status = GenerationStatus(
            collection=name,
            snapshot_version=f"{name}-v",
            generation=generation,
            path=Path(f"/data/root/{name}/{generation}"),
            items=15,
            branches=["geo", "inverted"],
            unavailable={} if role == "root" else {"ann": "the snapshot has no vectors part"},
            ranker="fused",
            serving_since=0.0,
            generations=["gen-000001", "gen-000002"],
            root_live="gen-000002",
            changelog="" if role == "root" else f"/data/root/{name}/changes/shard-0000",
            set_id="set-2" if role == "root" else "",
            shards=[[{**replica, "p50_ms": 1.0, "p95_ms": 3.0}]] * 4 if role == "root" else [],
        )
        with contextlib.redirect_stdout(out):
            _echo_status(_status(status))
    return out.getvalue()


def _drive(
    tmp_path: Path,
    *,
    fail: str = "",
    status: dict[str, list[str]],
    follow_s: int = 60,
    roots: int | None = SHARDS,
    deployments: int | None = SHARDS,
    listed: dict[str, tuple[int, int | None]] | None = None,
    unready: tuple[str, ...] = (),
) -> Any:
    """Run build.sh against the stand-in kubectl. `roots`: the shard count of the roots' list (None: no
    root Deployment); `deployments`: the shard Deployments there are; `listed`: in which listings of its
    role (0, 1, ...; None: every later one) a pod of `status` is running (default: all of them);
    `unready`: Deployments whose rollout does not complete."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "state.json"
    root_list = None if roots is None else json.dumps([[gen.shard_target(i)] for i in range(roots)])
    state.write_text(
        json.dumps(
            {
                "raw": [],
                "log": [],
                "created": [],
                "jobs": {},
                "fail": fail,
                "status": status,
                "roots": root_list,
                "deployments": [gen.shard_service(i) for i in range(deployments or 0)],
                "listed": listed or {},
                "listings": {},
                "unready": list(unready),
            }
        )
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_KUBECTL_STATE": str(state),
        "POLL_S": "0",
        "JOB_TIMEOUT_S": "20",  # a driver waiting on a Job it never resumed fails fast
        "FOLLOW_TIMEOUT_S": str(follow_s),
        "NAMESPACE": "search",
    }
    r = subprocess.run(
        ["bash", str(CLUSTER / "build.sh"), BUILD_ID], env=env, capture_output=True, text=True, timeout=120
    )
    return SimpleNamespace(rc=r.returncode, output=r.stdout + r.stderr, **json.loads(state.read_text()))


def _steps(log: list[list[str]]) -> list[str]:
    """The calls that matter for the order, as short strings."""
    out = []
    for a in log:
        if a[0] in ("create", "patch", "logs"):
            out.append(f"{a[0]} {a[1]}")
        elif a[:2] == ["rollout", "restart"]:
            out.append(f"restart {a[2]}")
        elif a[:2] == ["rollout", "status"]:
            out.append(f"ready {a[2]}")
        elif a[0] == "apply":
            out.append(" ".join(["apply", *(a[a.index("-l") + 1 :][:1] if "-l" in a else [])]))
        elif a[0] == "delete":
            out.append(" ".join(x for x in a if not x.startswith("-")))
        elif a[0] == "get" and a[1].startswith("job/") and (not out or out[-1] != f"wait {a[1]}"):
            out.append(f"wait {a[1]}")
        elif a[0] == "exec" and "status" in a and (not out or out[-1] != f"status {a[1]}"):
            out.append(f"status {a[1]}")
        elif a[0] == "exec" and "gc" in a:
            out.append("gc")
    return out


def _job(phase: str) -> str:
    return f"job/quarry-build-{phase}-{BUILD_ID}"


PHASES = [
    "create -f",
    f"wait {_job('global')}",
    f"patch {_job('shards')}",
    f"wait {_job('shards')}",
    f"patch {_job('assemble')}",
    f"wait {_job('assemble')}",
    f"logs {_job('assemble')}",
]
SHARD_PODS = [f"pod/quarry-shard-{i}-x" for i in range(2)]
ROOT_PODS = [f"pod/quarry-root-{c}" for c in "ab"]


def _check_exec_calls(log: list[list[str]]) -> None:
    """Every `kubectl exec` names the pod's container and runs a real quarry command line."""
    for a in log:
        if a[0] == "exec":
            container = _flag(a, "-c")
            assert container in ("shard", "root") and f"quarry-{container}-" in a[1], a
            argv = a[a.index("--") + 1 :]
            assert argv[0] == "quarry"
            r = CliRunner().invoke(main, [*argv[1:], "--help"])
            assert r.exit_code == 0, (argv, r.output)


def test_build_sh_runs_the_phases_in_order_then_waits_for_every_root(tmp_path: Path) -> None:
    behind, live = _status_text("gen-000001"), _status_text("gen-000002")
    root_behind = _status_text("gen-000001", role="root")
    root_live = _status_text("gen-000002", role="root")
    assert "  root: gen-000001, gen-000002 (live gen-000002)" in root_behind.splitlines()
    run = _drive(
        tmp_path,
        status={
            SHARD_PODS[0]: [behind, behind, live],
            SHARD_PODS[1]: [live],
            # a (still on the previous set) switches while it is watched; b had switched already
            ROOT_PODS[0]: [root_behind, root_behind, root_live],
            ROOT_PODS[1]: [root_live],
        },
    )
    assert run.rc == 0, run.output
    assert _steps(run.log) == [
        *PHASES,
        f"status {SHARD_PODS[0]}",
        f"status {SHARD_PODS[1]}",
        f"status {ROOT_PODS[0]}",
        f"status {ROOT_PODS[1]}",
        "gc",
    ], "no restart, no apply: the roots switch by themselves"
    statuses = [a[1] for a in run.log if a[0] == "exec" and "status" in a]
    assert statuses.count(SHARD_PODS[0]) == 3, "shard pod 0 was asked until it served the live generation"
    assert statuses.count(ROOT_PODS[0]) == 3, "root a was asked until it served the live generation"
    assert statuses.count(ROOT_PODS[1]) == 1
    for pod in ROOT_PODS:
        assert f"{pod} serves the new generation" in run.output
    assert all(a[:2] == ["--namespace", "search"] for a in run.raw if a[0] != "kustomize"), (
        "NAMESPACE is used"
    )
    # What it created: the generated Jobs with this build's id, valid, nothing left to fill in.
    (created,) = run.created
    assert gen.BUILD not in created
    docs = _parse(created)
    assert sorted(_by(docs, "Job")) == sorted(
        f"quarry-build-{p}-{BUILD_ID}" for p in ("global", "shards", "assemble")
    )
    for d in docs:
        kubernetes_validate.validate(d, VERSION, strict=True)
    # The pod selectors name the new set's shards, and the roots; the quarry commands run in pods are real.
    selectors = [a[a.index("-l") + 1] for a in run.log if a[:2] == ["get", "pods"]]
    (shard_selector,) = [x for x in selectors if "component=shard" in x]
    assert f"quarry/shard in ({','.join(str(i) for i in range(SHARDS))})" in shard_selector
    root_selector = "app.kubernetes.io/name=quarry,app.kubernetes.io/component=root"
    # Listed before each status call (a three times, b once) and once more: every pod listed serves it.
    assert [x for x in selectors if x != shard_selector] == [root_selector] * 5, (
        "the roots are listed again each round, so pods that come and go count"
    )
    root_labels = _by(_docs(_committed()), "Deployment")["quarry-root"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert _matches(dict(kv.split("=") for kv in root_selector.split(",")), root_labels)
    _check_exec_calls(run.log)


def test_build_sh_stops_when_a_phase_fails(tmp_path: Path) -> None:
    run = _drive(tmp_path, fail="shards", status={})
    assert run.rc != 0
    steps = _steps(run.log)
    assert steps[-1] == f"wait job/quarry-build-shards-{BUILD_ID}"
    assert not any(s.startswith("patch job/quarry-build-assemble") for s in steps), "nothing is published"
    assert "failed" in run.output


def test_build_sh_keeps_the_roots_when_a_shard_does_not_follow(tmp_path: Path) -> None:
    pod = "pod/quarry-shard-0-x"
    run = _drive(
        tmp_path,
        status={pod: [_status_text("gen-000001")], ROOT_PODS[0]: [_status_text(role="root")]},
        follow_s=0,
    )
    assert run.rc != 0 and f"{pod} does not serve the new generation" in run.output
    steps = _steps(run.log)
    assert not any(s.startswith(("restart", "apply", f"status {ROOT_PODS[0]}")) for s in steps)
    assert "gc" not in steps


def test_build_sh_fails_naming_a_root_that_does_not_switch(tmp_path: Path) -> None:
    """A root still serving the previous generation of one collection (its coordinated reload refused)
    when the time is up: build.sh names it, exits non-zero and keeps every generation (no gc)."""
    stuck = _status_text("gen-000002", "gen-000001", role="root")  # geonames switched, scifact did not
    run = _drive(
        tmp_path,
        status={
            SHARD_PODS[0]: [_status_text("gen-000002")],
            ROOT_PODS[0]: [_status_text("gen-000002", "gen-000002", role="root")],
            ROOT_PODS[1]: [stuck],
        },
        follow_s=0,
    )
    assert run.rc != 0
    assert f"{ROOT_PODS[1]} does not serve the new generation" in run.output
    assert f"{ROOT_PODS[0]} serves the new generation" in run.output
    steps = _steps(run.log)
    assert steps == [*PHASES, f"status {SHARD_PODS[0]}", f"status {ROOT_PODS[0]}", f"status {ROOT_PODS[1]}"]


def test_build_sh_fails_when_no_root_runs(tmp_path: Path) -> None:
    run = _drive(tmp_path, status={SHARD_PODS[0]: [_status_text("gen-000002")]}, follow_s=0)
    assert run.rc != 0 and "no root pod is running" in run.output
    assert "gc" not in _steps(run.log)


def test_build_sh_needs_the_root_deployment(tmp_path: Path) -> None:
    run = _drive(tmp_path, status={}, roots=None)
    assert run.rc != 0 and "kubectl apply -k" in run.output
    assert not run.created, "nothing is built for a deployment that is not there"


@pytest.mark.parametrize(("before", "surplus"), [(2, []), (6, [4, 5])], ids=["growing", "shrinking"])
def test_build_sh_changes_the_shard_count_with_the_set(
    tmp_path: Path, before: int, surplus: list[int]
) -> None:
    """The committed files have SHARDS shards, the roots list `before`: once the set is published the
    shards are applied (and ready) before the roots, the old roots (which refuse the set) are waited out
    while the rollout replaces them, and only then are the shards beyond the count deleted."""
    old, new = "pod/quarry-root-old", "pod/quarry-root-new"
    run = _drive(
        tmp_path,
        status={
            SHARD_PODS[0]: [_status_text("gen-000002")],
            old: [_status_text("gen-000001", role="root")],
            new: [_status_text("gen-000002", role="root")],
        },
        roots=before,
        deployments=max(before, SHARDS or 0),
        listed={old: (0, 1), new: (1, None)},  # the rollout: new comes up, then old goes
    )
    assert run.rc == 0, run.output
    assert SHARDS is not None
    not_root = "app.kubernetes.io/component!=root"
    assert _steps(run.log) == [
        *PHASES,
        f"apply {not_root}",
        *(f"ready deployment/quarry-shard-{i}" for i in range(SHARDS)),
        f"status {SHARD_PODS[0]}",
        "apply",
        f"status {old}",
        f"status {new}",
        *(
            [
                f"delete deployment,service,poddisruptionbudget {' '.join(gen.shard_service(i) for i in surplus)}"
            ]
            if surplus
            else []
        ),
        "gc",
    ]
    assert f"the roots list {before} shards, this build makes {SHARDS}" in run.output
    applies = [a for a in run.log if a[0] == "apply"]
    assert all(_flag(a, "-k") == str(CLUSTER) for a in applies), "the regenerated manifests"
    # The first apply leaves out exactly the root's Deployment and its client Service.
    key, value = not_root.split("!=")
    left_out = {
        f"{d['kind']}/{d['metadata']['name']}"
        for d in _docs(_committed())
        if d["metadata"].get("labels", {}).get(key) == value
    }
    assert left_out == {"Deployment/quarry-root", "Service/quarry-search"}


def test_build_sh_keeps_the_old_roots_when_a_new_shard_does_not_come_up(tmp_path: Path) -> None:
    assert SHARDS is not None
    last = f"deployment/{gen.shard_service(SHARDS - 1)}"
    run = _drive(
        tmp_path,
        status={SHARD_PODS[0]: [_status_text("gen-000002")], ROOT_PODS[0]: [_status_text(role="root")]},
        roots=SHARDS - 1,
        unready=(last,),
    )
    assert run.rc != 0 and f"{last} is not rolled out" in run.output
    steps = _steps(run.log)
    assert steps[-1] == f"ready {last}"
    assert "apply" not in steps, "the roots' list is not changed: they keep serving the previous set"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for its jsonpath) not installed")
def test_build_sh_reads_the_roots_shard_count_from_their_deployment(tmp_path: Path) -> None:
    """The query build.sh sends for the roots' shard list, evaluated by the real kubectl (offline, on the
    committed Deployment), and build.sh's way of counting it."""
    run = _drive(tmp_path, status={}, fail="global")
    (query,) = [a for a in run.log if a[:2] == ["get", "deployment/quarry-root"]]
    root = _by(_docs(_committed()), "Deployment")["quarry-root"]
    (tmp_path / "root.yaml").write_text(yaml.safe_dump(root))
    cmd = ["kubectl", "label", "--local", "-f", str(tmp_path / "root.yaml"), "x=y", *query[2:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == [[gen.shard_target(i)] for i in range(SHARDS or 0)]
    assert out.count("[") - 1 == SHARDS, "build.sh counts the lists' opening brackets"


def test_build_sh_rejects_a_bad_build_id() -> None:
    r = subprocess.run(
        ["bash", str(CLUSTER / "build.sh"), "Bad_ID"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "build id" in r.stderr
