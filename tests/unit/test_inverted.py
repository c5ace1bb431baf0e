"""The inverted branch on a tiny real tantivy snapshot: CJK, filters, and no query-syntax injection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.settings import BranchSpec, CollectionSettings
from common.types import GeoPoint
from retriever.core.errors import InvalidArgument
from retriever.core.types import BranchStatus, Filters, NumericRange, SearchQuery, SearchResult
from retriever.generations import Collection, Registry
from retriever.service import SearchService
from retriever.settings import load_settings


@pytest.fixture(scope="module")
def service(tiny_snapshot: Path) -> SearchService:
    settings = load_settings()
    reg = Registry()
    # Inverted recall alone: these tests pin down what BM25 recall returns (the snapshot also has vectors).
    reg.put(Collection(tiny_snapshot, CollectionSettings(branches={"inverted": BranchSpec()})))
    return SearchService(settings, reg)


def search(service: SearchService, text: str, **kw: object) -> SearchResult:
    return asyncio.run(service.search(SearchQuery(collection="tiny", text=text, **kw)))  # type: ignore[arg-type]


def ids(res: SearchResult) -> list[str]:
    return [h.id for h in res.hits]


def test_chinese_query_finds_english_named_city(service: SearchService) -> None:
    assert ids(search(service, "上海")) == ["sh"]
    assert ids(search(service, "旧金山")) == ["sf"]
    assert ids(search(service, "zurich")) == ["zu"]  # accent folding


def test_filters(service: SearchService) -> None:
    assert set(ids(search(service, "paris"))) == {"pa", "pt"}
    assert ids(search(service, "paris", filters=Filters(categories=("US",)))) == ["pt"]
    assert ids(search(service, "paris", filters=Filters(tags=("capital",)))) == ["pa"]
    big = Filters(ranges=(NumericRange("population", min=1_000_000),))
    assert ids(search(service, "paris", filters=big)) == ["pa"]
    excl = Filters(ranges=(NumericRange("population", max=24_171, max_exclusive=True),))
    assert ids(search(service, "paris", filters=excl)) == []
    assert ids(search(service, "paris", filters=Filters(exclude_ids=("pa",)))) == ["pt"]


def test_filters_do_not_change_bm25_scores(service: SearchService) -> None:
    plain = {h.id: h.sources[0].score for h in search(service, "paris").hits}
    filt = {
        h.id: h.sources[0].score for h in search(service, "paris", filters=Filters(categories=("US",))).hits
    }
    assert filt["pt"] == pytest.approx(plain["pt"])


@pytest.mark.parametrize(
    "text", ["name:paris", "*", "paris*", "paris OR beijing", '"paris"', "alt:*", "_category:US", "paris^100"]
)
def test_query_syntax_is_not_interpreted(service: SearchService, text: str) -> None:
    res = search(service, text)
    # Whatever the text, only items containing its plain words come back (never the whole index).
    assert set(ids(res)) <= {"pa", "pt", "bj"}


def test_empty_and_stopword_queries_skip_the_branch(service: SearchService) -> None:
    # A Search with nothing to search by is a bad request (issue 13), not an empty answer.
    with pytest.raises(InvalidArgument, match="a Search needs query text, a location or a user_id"):
        search(service, "")
    res = search(service, "", user_id="u1")  # only the user: the inverted branch has nothing to do
    assert res.hits == [] and res.branch_stats[0].status is BranchStatus.SKIPPED
    res = search(service, "!!! ???")
    assert res.hits == [] and res.branch_stats[0].status is BranchStatus.SKIPPED and not res.degraded


def test_hits_carry_display_fields_and_distance(service: SearchService) -> None:
    res = search(
        service, "paris", location=GeoPoint(48.85, 2.35), filters=Filters(categories=("FR",)), top_k=1
    )
    hit = res.hits[0]
    assert hit.id == "pa" and hit.title == "Paris" and hit.category == "FR" and "capital" in hit.tags
    assert hit.distance_m is not None and hit.distance_m < 1.0
    assert hit.attributes["population"] == 2_138_551
    assert hit.sources[0].branch == "inverted" and hit.sources[0].rank == 1


def test_unknown_range_attribute_is_invalid(service: SearchService) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown numeric attribute 'height'.*known: population"):
        search(service, "paris", filters=Filters(ranges=(NumericRange("height", min=1),)))


def test_top_k_default_and_limit(service: SearchService) -> None:
    assert (
        len(search(service, "paris beijing shanghai zurich francisco").hits) == 6
    )  # all matches < default 10
    assert len(search(service, "paris beijing shanghai zurich francisco", top_k=2).hits) == 2
