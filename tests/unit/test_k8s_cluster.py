"""deploy/k8s/cluster (shard sets on Kubernetes) stays valid and consistent with the code, checked offline:
the committed manifests are generate.py's output; every manifest validates against the Kubernetes 1.31
schemas; every `quarry` command line goes through the real CLI, and each serving one (with its container's
environment and the ConfigMap's file) yields the settings its role needs; every QUARRY_ variable is a
settings field; every shard index appears once, with its headless Service; the root names every shard's
Service; the build Jobs' command lines, run in build.sh's order on a small catalog, publish a shard set;
build.sh sequences the Jobs, against a stand-in kubectl."""

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
    assert {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}["/data"] is True
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
        assert s.admin.watch is False, "a root cannot reload a shard set: build.sh restarts it"
    else:
        assert s.cluster.role == "shard" and s.cluster.shard == int(doc["metadata"]["name"].rsplit("-", 1)[1])
        assert s.admin.watch is True, "shards follow CURRENT"
        assert s.admin.token is not None, "build.sh asks each shard for its status"
        assert s.cluster.release_previous_s >= 300, "long enough for the roots' rolling restart"


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
# answers from a scenario (which phase fails, what each shard pod's `quarry admin status` prints).
import json, os, sys
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
elif args[0] == "patch":
    state["jobs"][args[1][4:]]["suspended"] = False
elif args[0] == "logs":
    print("assembled geonames-v: 60 items in 4 shards → /data/root/geonames/gen-000002 (live)")
elif args[:2] == ["get", "pods"]:
    print("\n".join(state["status"]))
elif args[0] == "exec" and "status" in args:
    answers = state["status"][args[1]]
    print(answers.pop(0) if len(answers) > 1 else answers[0], end="")
state_path.write_text(json.dumps(state))
sys.exit(code)
"""


def _status_text(generation: str) -> str:
    """What `quarry admin status` prints for a shard serving `generation` while CURRENT names gen-000002."""
    from quarry.cli import _echo_status

    status = SimpleNamespace(
        collection="geonames",
        generation=generation,
        snapshot_version="geonames-v",
        items=15,
        ranker="fused",
        branches=["geo", "inverted"],
        unavailable={"ann": "the snapshot has no vectors part (built without an encoder)"},
        generations=["gen-000001", "gen-000002"],
        root_live="gen-000002",
        changelog="/data/root/geonames/changes/shard-0000",
        upserts=0,
        deletes=0,
        generation_log_seq=0,
        log_seq=0,
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _echo_status(status)
    return out.getvalue()


def _drive(tmp_path: Path, *, fail: str = "", status: dict[str, list[str]], follow_s: int = 60) -> Any:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps({"raw": [], "log": [], "created": [], "jobs": {}, "fail": fail, "status": status})
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
        if a[0] in ("create", "patch", "logs") or a[:2] == ["rollout", "restart"]:
            out.append(f"{a[0]} {a[1]}" if a[0] != "rollout" else f"restart {a[2]}")
        elif a[0] == "get" and a[1].startswith("job/") and (not out or out[-1] != f"wait {a[1]}"):
            out.append(f"wait {a[1]}")
        elif a[0] == "exec" and "status" in a and (not out or out[-1] != f"status {a[1]}"):
            out.append(f"status {a[1]}")
        elif a[0] == "exec" and "gc" in a:
            out.append("gc")
    return out


def test_build_sh_runs_the_phases_in_order_then_restarts_the_roots(tmp_path: Path) -> None:
    pods = [f"pod/quarry-shard-{i}-x" for i in range(2)]
    behind, live = _status_text("gen-000001"), _status_text("gen-000002")
    run = _drive(tmp_path, status={pods[0]: [behind, behind, live], pods[1]: [live]})
    assert run.rc == 0, run.output
    job = lambda p: f"job/quarry-build-{p}-{BUILD_ID}"  # noqa: E731
    assert _steps(run.log) == [
        "create -f",
        f"wait {job('global')}",
        f"patch {job('shards')}",
        f"wait {job('shards')}",
        f"patch {job('assemble')}",
        f"wait {job('assemble')}",
        f"logs {job('assemble')}",
        f"status {pods[0]}",
        f"status {pods[1]}",
        "restart deployment/quarry-root",
        "gc",
    ]
    statuses = [a for a in run.log if a[0] == "exec" and "status" in a]
    assert len(statuses) == 4, "pod 0 was asked until it served the live generation"
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
    # The pod selector names the new set's shards; the quarry commands it runs inside pods are real.
    (pods_call,) = [a for a in run.log if a[:2] == ["get", "pods"]]
    assert (
        f"quarry/shard in ({','.join(str(i) for i in range(SHARDS))})" in pods_call[pods_call.index("-l") + 1]
    )
    for a in run.log:
        if a[0] == "exec":
            argv = a[a.index("--") + 1 :]
            assert argv[0] == "quarry"
            r = CliRunner().invoke(main, [*argv[1:], "--help"])
            assert r.exit_code == 0, (argv, r.output)


def test_build_sh_stops_when_a_phase_fails(tmp_path: Path) -> None:
    run = _drive(tmp_path, fail="shards", status={})
    assert run.rc != 0
    steps = _steps(run.log)
    assert steps[-1] == f"wait job/quarry-build-shards-{BUILD_ID}"
    assert not any(s.startswith("patch job/quarry-build-assemble") for s in steps), "nothing is published"
    assert "failed" in run.output


def test_build_sh_keeps_the_roots_when_a_shard_does_not_follow(tmp_path: Path) -> None:
    pod = "pod/quarry-shard-0-x"
    run = _drive(tmp_path, status={pod: [_status_text("gen-000001")]}, follow_s=0)
    assert run.rc != 0 and "does not serve the new generation" in run.output
    assert not any(a[:2] == ["rollout", "restart"] for a in run.log)


def test_build_sh_rejects_a_bad_build_id() -> None:
    r = subprocess.run(
        ["bash", str(CLUSTER / "build.sh"), "Bad_ID"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "build id" in r.stderr
