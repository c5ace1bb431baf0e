"""The plain-pip path a new user takes (README "Install"): `pip install -e '.[cpu]'` into a fresh stdlib
venv, then the `quarry` CLI of that venv without the MiniLM weights: `--help`; a SciFact build that goes
text-only with a warning naming `quarry models install`; `index verify`; `serve` + `query`; and asking for
MiniLM vectors explicitly is one clear error line, not a traceback.

Slow: pip builds hnswlib and jieba from their sdists (measured on 2 cores: ~60 s cold, ~25 s once pip's
wheel cache is warm; the whole module ~40 s warm). Skipped, with the reason, when the package index
cannot be reached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT, free_port, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INSTALL_TIMEOUT_S = 1800  # a cold install compiles hnswlib (C++) and builds jieba's wheel
CLI_TIMEOUT_S = 300
# A SciFact train claim and the abstract judged relevant to it (qrels/train.tsv: 2 → 13734012).
CLAIM, RELEVANT = "1 in 5 million in UK have abnormal PrP positivity.", "13734012"
# What pip prints when it cannot reach the index (urllib3 / pip's own messages); anything else is a bug.
NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Connection refused",
    "Network is unreachable",
    "ProxyError",
)


def _index_host() -> tuple[str, int]:
    url = urlsplit(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    return url.hostname or "pypi.org", url.port or (443 if url.scheme == "https" else 80)


def _index_reachable() -> bool:
    try:
        with socket.create_connection(_index_host(), timeout=3):
            return True
    except OSError:
        return False


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _untracked() -> set[str]:
    r = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {line for line in r.stdout.splitlines() if line.startswith("??")} if r.returncode == 0 else set()


def _env(venv_dir: Path) -> dict[str, str]:
    """The user's environment as a shell with that venv activated would see it: none of the test run's
    own venv, Python path or Quarry settings leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"} and not k.startswith("QUARRY_")
    }
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh stdlib venv (with pip) of the interpreter running the tests, and README's install in it."""
    if not _index_reachable():
        host, port = _index_host()
        pytest.skip(f"the package index ({host}:{port}) is unreachable: the plain-pip install needs it")
    venv_dir = tmp_path_factory.mktemp("plain-pip") / "venv"
    t0 = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    t_venv = time.monotonic() - t0
    before = _untracked()
    cmd = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "-e", f"{ROOT}[cpu]"]
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, env=_env(venv_dir), timeout=INSTALL_TIMEOUT_S, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"`{' '.join(cmd)}` took over {INSTALL_TIMEOUT_S} s:\n{_tail(out)}")
    t_pip = time.monotonic() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0:
        if any(marker in out for marker in NETWORK_ERRORS):
            pytest.skip(f"pip could not reach the package index:\n{_tail(out, 8)}")
        pytest.fail(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{_tail(out)}")
    print(f"\nplain pip: venv {t_venv:.1f} s, `pip install -e '.[cpu]'` {t_pip:.1f} s")
    new = _untracked() - before
    assert not new, (
        f"the editable install left untracked files in the checkout (add them to .gitignore): {new}"
    )
    return venv_dir


def _quarry(venv_dir: Path, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_dir / "bin" / "quarry"), *args],
        capture_output=True,
        text=True,
        env=_env(venv_dir),
        timeout=timeout,
    )


def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_help_lists_the_subcommands(plain_venv: Path) -> None:
    r = _quarry(plain_venv, "--help")
    assert r.returncode == 0, r.stderr
    for sub in ("index", "models", "serve", "query"):
        assert f"  {sub} " in r.stdout, r.stdout
    _no_traceback(r)


@pytest.fixture(scope="module")
def served(plain_venv: Path, tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[str]:
    """SciFact built in the plain venv as README says (text-only without the weights), verified, and
    served by that venv's `quarry serve` on a free port."""
    snap = tmp_path_factory.mktemp("plain-pip-snap") / "scifact"
    t0 = time.monotonic()
    r = _quarry(
        plain_venv,
        "index",
        "build",
        "--dataset",
        "scifact",
        "--data-dir",
        str(data_dir),
        "--out",
        str(snap),
        "--no-progress",
    )
    t_build = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    _no_traceback(r)
    assert "warning: the MiniLM weights are not installed" in r.stderr and "quarry models install" in r.stderr
    assert "built scifact-" in r.stdout and "5183 items" in r.stdout, out
    r = _quarry(plain_venv, "index", "verify", str(snap))
    assert r.returncode == 0 and r.stdout.startswith("ok: scifact-"), r.stdout + r.stderr
    print(f"plain pip: text-only SciFact build {t_build:.1f} s")

    port = free_port()
    cmd = [str(plain_venv / "bin" / "quarry"), "--log-level", "WARNING", "serve", "--snapshot", str(snap)]
    log = snap.parent / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=_env(plain_venv), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield wait_serving(proc, f"127.0.0.1:{port}", "scifact")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


def test_text_only_build_serves_and_answers(plain_venv: Path, served: str) -> None:
    r = _quarry(plain_venv, "query", "--target", served, "--collection", "scifact", "--json", CLAIM)
    assert r.returncode == 0, r.stdout + r.stderr
    hits = json.loads(r.stdout)["hits"]
    assert hits and RELEVANT in [h["id"] for h in hits], hits
    r = _quarry(plain_venv, "query", "--target", served, "--collection", "scifact", "--debug", CLAIM)
    assert r.returncode == 0 and f"[{RELEVANT}]" in r.stdout, r.stdout + r.stderr
    _no_traceback(r)


def test_asking_for_minilm_without_the_weights_is_one_clear_line(plain_venv: Path, tmp_path: Path) -> None:
    args = ["index", "build", "--dataset", "scifact", "--encoder", "minilm", "--out", str(tmp_path / "s")]
    r = _quarry(plain_venv, *args)
    assert r.returncode == 1, r.stdout + r.stderr
    _no_traceback(r)
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "quarry models install" in lines[0], lines
    assert not (tmp_path / "s").exists()
