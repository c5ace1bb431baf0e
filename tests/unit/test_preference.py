"""User-preference recall on real MovieLens-100K: a profile from what the user did (history from the
snapshot, real-time events from the store) favours their genres; recall follows it, not raw popularity."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from common.profile import CATEGORY_PREFIX, TagTable
from common.settings import QuarrySettings
from retriever.core.types import SearchQuery
from retriever.features.recent import MemoryRecentStore, UserEvent
from retriever.generations import Collection
from retriever.recall.base import RecallRequest, analyze_query


@pytest.fixture(scope="module")
def generation(movielens_snapshot: Path) -> Collection:
    return Collection(movielens_snapshot, QuarrySettings().for_collection("movielens"))


def test_tag_table_lists_each_tags_items_by_popularity(generation: Collection) -> None:
    fw, behavior = generation.base_forward, generation.behavior
    assert behavior is not None
    table = TagTable.build(fw, behavior.popularity, per_tag=50)
    horror = table.vocab.index("Horror")
    items = table.items_of(horror)
    assert 0 < len(items) <= 50
    assert all("Horror" in fw.rows([int(o)])[0]["tags"] for o in items)
    pops = behavior.popularity[items]
    assert np.all(np.diff(pops) <= 0)  # most popular first
    # Categories are tags too, under their own prefix; every item's tags are its own.
    assert f"{CATEGORY_PREFIX}Horror" in table.vocab
    toy = fw.ord_of["1"]
    assert {table.vocab[t] for t in table.tags_of(toy)} == {
        "Animation",
        "Children's",
        "Comedy",
        f"{CATEGORY_PREFIX}Animation",
    }
    # A profile of horror films is mostly horror.
    aff = table.profile([(int(o), 1.0) for o in items[:10]])
    assert aff.sum() == pytest.approx(1.0) and table.vocab[int(np.argmax(aff))] in (
        "Horror",
        "category:Horror",
    )


def test_items_union_is_the_distinct_items_of_the_tags_lists(generation: Collection) -> None:
    """The preference pool: the merge of the tags' ordinal-sorted lists equals np.unique over their
    popularity-ordered lists, for random tag sets (repeats, single tags, none)."""
    behavior = generation.behavior
    assert behavior is not None
    table = TagTable.build(generation.base_forward, behavior.popularity, per_tag=40)
    rng = np.random.default_rng(5)
    for _ in range(40):
        tags = rng.integers(0, len(table.vocab), int(rng.integers(0, 8))).tolist()
        want = np.unique(np.concatenate([table.items_of(t) for t in tags] or [np.zeros(0, np.int64)]))
        got = table.items_union(tags)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64


def test_recall_follows_the_users_taste_from_real_time_events(generation: Collection) -> None:
    branch = generation.branches["preference"]
    fw = generation.base_forward
    horror = [o for o in range(len(fw)) if "Horror" in (fw.rows([o])[0]["tags"] or [])][:8]
    store = MemoryRecentStore()
    user = "horror-fan-never-seen-in-the-snapshot"
    events = [UserEvent(f"e{i}", user, fw.ids[o], "rating", float(i), 5.0) for i, o in enumerate(horror)]
    asyncio.run(store.append("movielens", events))
    q = SearchQuery(collection="movielens", user_id=user)
    with ThreadPoolExecutor(2) as pool:
        req = RecallRequest(
            query=q,
            collection=generation,
            pool=pool,
            terms=analyze_query("", generation.analyzers, 32),
            recent=store,
        )
        got = asyncio.run(branch.recall(req, 30))
    assert len(got) == 30
    ords = [c.ordinal for c in got]
    assert not set(ords) & set(horror)  # what the user already saw is not recalled again
    tags = Counter(t for o in ords for t in (fw.rows([o])[0]["tags"] or []))
    assert generation.behavior is not None
    popular = [o for o, _ in generation.behavior.popular(30)]
    popular_horror = sum("Horror" in (fw.rows([o])[0]["tags"] or []) for o in popular)
    # Most of it is horror (the seeds' other genres, Sci-Fi, Thriller, share the rest); popularity is not.
    assert tags["Horror"] >= 15 and tags["Horror"] >= 3 * popular_horror, (
        tags.most_common(5),
        popular_horror,
    )
    scores = [c.score for c in got]
    assert scores == sorted(scores, reverse=True)


def test_profile_and_match_equal_the_plain_definition(generation: Collection) -> None:
    """The vectorised profile/match against their definitions, written as plain loops (incl. repeated
    seeds, zero and negative weights, ordinals outside the table)."""
    table = generation.tag_table
    assert table is not None
    rng = np.random.default_rng(3)
    n = len(generation.base_forward)
    seeds = [(int(o), float(w)) for o, w in zip(rng.integers(0, n, 40), rng.normal(1, 1, 40), strict=True)]
    seeds += [(seeds[0][0], 2.0), (n + 5, 1.0), (-1, 1.0)]
    plain = np.zeros(len(table.vocab))
    for o, w in seeds:
        if 0 <= o < n and w > 0 and len(table.tags_of(o)):
            plain[table.tags_of(o)] += w / len(table.tags_of(o))
    plain /= plain.sum()
    np.testing.assert_allclose(table.profile(seeds), plain, rtol=1e-12, atol=1e-15)
    ords = np.array([*rng.integers(0, n, 30).tolist(), n + 1, -3])
    want = [plain[table.tags_of(o)].sum() if 0 <= o < n else 0.0 for o in ords.tolist()]
    np.testing.assert_allclose(table.match(ords, plain), want, rtol=1e-12, atol=1e-15)
    assert table.profile([]).sum() == 0.0 and len(table.match(np.zeros(0, np.int64), plain)) == 0
