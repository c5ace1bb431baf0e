"""The recall-branch registry: one registration per branch, tied to the settings schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from common.settings import AnnSettings, BranchSpec, CollectionSettings, GeoSettings
from retriever.generations import Collection
from retriever.recall import branch_class, branch_names, register
from retriever.recall.ann import AnnBranch
from retriever.settings import load_settings


def test_every_branch_module_is_registered() -> None:
    assert branch_names() == ("ann", "behavior", "geo", "inverted", "popular", "preference")
    assert branch_class("ann") is AnnBranch
    with pytest.raises(KeyError, match="unknown recall branch 'telepathy'; known: \\['ann'"):
        branch_class("telepathy")


def _branch(name: Any, options: Any) -> type:
    return type(
        "Probe", (), {"name": name, "options": options, "create": classmethod(lambda cls, g, o: cls())}
    )


def test_registration_is_checked_against_the_settings_schema() -> None:
    with pytest.raises(TypeError, match=r"declares options GeoSettings, but CollectionSettings\.ann is"):
        register(_branch("ann", GeoSettings))
    with pytest.raises(TypeError, match=r"CollectionSettings\.probe"):
        register(_branch("probe", AnnSettings))  # options without a settings section
    with pytest.raises(ValueError, match="registered twice"):
        register(_branch("ann", AnnSettings))
    with pytest.raises(TypeError, match="identifier"):
        register(_branch("not a name", None))
    assert branch_class("ann") is AnnBranch  # nothing above replaced it
    assert "probe" not in branch_names()


def test_settings_reject_unknown_branches_per_collection(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[collections.x.recommend_branches.telepathy]\nenabled = true\n")
    with pytest.raises(ValidationError, match="unknown recall branches \\['telepathy'\\]"):
        load_settings(bad)


def test_generation_refuses_an_unknown_branch(tiny_snapshot: Path) -> None:
    # The schema alone (without the registry) accepts any name; the loader still refuses it clearly.
    cs = CollectionSettings(branches={"inverted": BranchSpec(), "telepathy": BranchSpec()})
    with pytest.raises(ValueError, match="unknown recall branch 'telepathy'"):
        Collection(tiny_snapshot, cs)
