"""Every registered recall branch passes the RecallBranchContract suite (tests/contracts/recall.py), over
real snapshots: the tiny synthetic catalog (text, MiniLM vectors, locations) and real MovieLens-100K
(events: behavior tables and popularity)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import CollectionSettings
from common.types import GeoPoint
from retriever.core.types import Filters, SearchQuery
from retriever.generations import Collection
from retriever.recall import branches
from tests.contracts.recall import RecallBranchContract


@pytest.fixture(scope="module")
def tiny_generation(tiny_snapshot: Path) -> Collection:
    return Collection(tiny_snapshot, CollectionSettings())


@pytest.fixture(scope="module")
def movielens_generation(movielens_snapshot: Path) -> Collection:
    return Collection(movielens_snapshot, CollectionSettings())


def _genre_filter(generation: Collection) -> Filters:
    # The most common category: a strict, non-empty subset of the catalog.
    codes = generation.forward.category_codes
    top = int(max(set(codes.tolist()) - {-1}, key=lambda c: int((codes == c).sum())))
    name = next(k for k, v in generation.forward.category_vocab.items() if v == top)
    return Filters(categories=(name,))


class TinyBranch(RecallBranchContract):
    @pytest.fixture
    def generation(self, tiny_generation: Collection) -> Collection:
        return tiny_generation

    @pytest.fixture
    def filters(self) -> Filters:
        return Filters(categories=("CN", "US"))


class MovieLensBranch(RecallBranchContract):
    @pytest.fixture
    def generation(self, movielens_generation: Collection) -> Collection:
        return movielens_generation

    @pytest.fixture
    def filters(self, movielens_generation: Collection) -> Filters:
        return _genre_filter(movielens_generation)


class TestInvertedBranch(TinyBranch):
    NAME = "inverted"

    @pytest.fixture
    def query(self) -> SearchQuery:
        return SearchQuery(collection="tiny", text="paris city 上海 san francisco")


class TestAnnBranch(TinyBranch):
    NAME = "ann"

    @pytest.fixture
    def query(self) -> SearchQuery:
        return SearchQuery(collection="tiny", text="harbour city")


class TestGeoBranch(TinyBranch):
    NAME = "geo"

    @pytest.fixture
    def query(self) -> SearchQuery:
        return SearchQuery(collection="tiny", location=GeoPoint(48.85, 2.35), radius_m=20_000_000.0)


class TestBehaviorBranch(MovieLensBranch):
    NAME = "behavior"

    @pytest.fixture
    def query(self, movielens_generation: Collection) -> SearchQuery:
        assert movielens_generation.behavior is not None
        user = movielens_generation.behavior.sample_users(1)[0]
        return SearchQuery(collection="movielens", user_id=user)


class TestPreferenceBranch(MovieLensBranch):
    NAME = "preference"

    @pytest.fixture
    def query(self, movielens_generation: Collection) -> SearchQuery:
        assert movielens_generation.behavior is not None
        user = movielens_generation.behavior.sample_users(1)[0]
        return SearchQuery(collection="movielens", user_id=user)


class TestPopularBranch(MovieLensBranch):
    NAME = "popular"

    @pytest.fixture
    def query(self) -> SearchQuery:
        return SearchQuery(collection="movielens")


def test_every_registered_branch_has_a_contract_test() -> None:
    """A branch without a RecallBranchContract subclass here would skip the contract silently."""
    covered = {
        getattr(obj, "NAME", None)
        for obj in globals().values()
        if isinstance(obj, type) and issubclass(obj, RecallBranchContract)
    }
    missing = sorted(set(branches()) - covered)
    assert not missing, f"recall branches without a contract test: {missing}"
