"""Without the MiniLM weights (a plain `pip install -e '.[cpu]'`), `quarry index build` never shows a
traceback: an explicit --encoder minilm is one clear line with the fix; the default builds text-only with a
warning. (The weights lookup is made to fail; everything else is the real build.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from common.snapshot import read_manifest
from quarry.cli import main
from tests.conftest import TINY_ITEMS


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.encoders.minilm as minilm

    def missing() -> Path:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights not found")

    monkeypatch.setattr(minilm, "find_model_dir", missing)


def _catalog(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.jsonl"
    p.write_text("\n".join(json.dumps(it.model_dump(exclude_none=True)) for it in TINY_ITEMS) + "\n")
    return p


def test_explicit_encoder_is_one_clear_line(no_weights: None, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        main,
        [
            "index",
            "build",
            "--catalog",
            str(_catalog(tmp_path)),
            "--out",
            str(tmp_path / "s"),
            "--encoder",
            "minilm",
        ],
    )
    assert r.exit_code == 1 and "quarry models install" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s").exists()


def test_default_encoder_builds_text_only_with_a_warning(no_weights: None, tmp_path: Path) -> None:
    out = tmp_path / "s"
    r = CliRunner().invoke(
        main,
        [
            "index",
            "build",
            "--catalog",
            str(_catalog(tmp_path)),
            "--out",
            str(out),
            "--text-field",
            "name:quarry_name",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "building without vectors" in r.output
    assert "vectors" not in read_manifest(out).parts and "text" in read_manifest(out).parts
