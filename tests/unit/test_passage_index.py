"""The passage index (items scored by their best passage) against its definition: brute-force max-pooling.

SYNTHETIC data: clustered unit vectors as items, and 0–6 passages an item, each its item's vector plus
noise (so an item's best passage is often not its own vector), like windows of one document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.synthetic import synthetic_clustered as clustered
from common.index.vectors import SearchParams, VectorIndex, build_vector_index, load_vector_index
from common.index.vectors.passages import PassageIndex, build_passage_index

N, D, NQ, K = 3_000, 48, 60, 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    x = clustered(N + NQ, D, seed=11)
    items, queries = np.ascontiguousarray(x[:N]), np.ascontiguousarray(x[N:])
    counts = rng.integers(0, 7, N)
    owner = np.repeat(np.arange(N), counts)
    passages = _unit(items[owner] + rng.normal(0, 0.12, (len(owner), D)))
    return {"items": items, "queries": queries, "owner": owner, "passages": passages}


def truth(data: dict[str, np.ndarray], queries: np.ndarray, k: int, allowed: Any = None) -> Any:
    """Each item's best row (its own vector or a passage), brute force; top-k items, best first."""
    rows = np.concatenate([data["items"], data["passages"]])
    owner = np.concatenate([np.arange(N), data["owner"]])
    best = np.full((len(queries), N), -np.inf, dtype=np.float32)
    for i, q in enumerate(queries):
        np.maximum.at(best[i], owner, rows @ q)
    if allowed is not None:
        best[:, ~allowed] = -np.inf
    order = np.argsort(-best, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(best, order, axis=1)


BACKENDS = {
    "exact": ("exact", {}),
    "hnsw": ("hnsw", {"M": 16, "ef_construction": 100}),
    "ivf-flat": ("ivf", {"quantizer": "flat", "use_gpu": "never"}),
}


@pytest.fixture(scope="module", params=list(BACKENDS))
def index(request: pytest.FixtureRequest, data: dict[str, np.ndarray]) -> PassageIndex:
    kind, params = BACKENDS[request.param]
    return build_passage_index(kind, data["items"], data["passages"], data["owner"], params)


def _mask(n_allowed: int, seed: int) -> np.ndarray:
    mask = np.zeros(N, dtype=bool)
    mask[np.random.default_rng(seed).choice(N, n_allowed, replace=False)] = True
    return mask


def test_is_a_vector_index_over_items(index: PassageIndex, data: dict[str, np.ndarray]) -> None:
    assert isinstance(index, VectorIndex)
    assert (index.kind, index.count, index.dim) == ("passages", N, D)
    assert index.rows == N + len(data["owner"])


def test_items_are_ranked_by_their_best_passage(index: PassageIndex, data: dict[str, np.ndarray]) -> None:
    ids, scores = index.search(data["queries"], K)
    want_ids, want_scores = truth(data, data["queries"], K)
    assert ids.shape == scores.shape == (NQ, K) and ids.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "best first"
    for row in ids:
        assert len(set(row.tolist())) == K, "an item appears once, however many passages match"
    if index.inner.kind == "exact":
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-5)
    else:
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(ids, want_ids, strict=True))
        assert hits / (NQ * K) >= 0.95
        # An item carries the score of the best of its rows the inner search saw: never above its best
        # row, and nearly always that one (an approximate search may miss a row).
        all_ids, all_scores = truth(data, data["queries"], N)
        best = np.empty((NQ, N), dtype=np.float32)
        np.put_along_axis(best, all_ids, all_scores, axis=1)
        theirs = np.take_along_axis(best, ids, axis=1)
        assert (scores <= theirs + 1e-4).all()
        assert np.isclose(scores, theirs, atol=1e-4).mean() >= 0.95


def test_passages_change_the_answer(data: dict[str, np.ndarray]) -> None:
    """Without its passages the same items rank differently (the test would pass on items alone else)."""
    with_p = build_passage_index("exact", data["items"], data["passages"], data["owner"])
    items_only = build_vector_index("exact", data["items"])
    a, _ = with_p.search(data["queries"], K)
    b, _ = items_only.search(data["queries"], K)
    assert (a != b).any(axis=1).mean() > 0.5


@pytest.mark.parametrize("n_allowed", [1, 7, 150, 1_500, 2_999])
@pytest.mark.parametrize("path", ["default", "force-ann"])
def test_filters_over_items(
    index: PassageIndex, data: dict[str, np.ndarray], n_allowed: int, path: str
) -> None:
    mask = _mask(n_allowed, seed=n_allowed)
    params = SearchParams(exact_threshold=0) if path == "force-ann" else None
    ids, scores = index.search(data["queries"][:20], K, allowed=mask, params=params)
    valid = ids >= 0
    assert mask[ids[valid]].all(), "a disallowed item was returned"
    assert (valid.sum(axis=1) == min(K, n_allowed)).all(), "k items whenever k are allowed"
    assert np.isneginf(scores[~valid]).all()
    for row in ids:
        assert len(set(row[row >= 0].tolist())) == min(K, n_allowed)
    if index.inner.kind == "exact":
        want, _ = truth(data, data["queries"][:20], K, mask)
        np.testing.assert_array_equal(
            np.where(valid, ids, -1)[:, : min(K, n_allowed)], want[:, : min(K, n_allowed)]
        )


def test_nothing_allowed_and_k_beyond_the_items(index: PassageIndex, data: dict[str, np.ndarray]) -> None:
    ids, scores = index.search(data["queries"][:2], K, allowed=np.zeros(N, dtype=bool))
    assert (ids == -1).all() and np.isneginf(scores).all()
    ids, _ = index.search(data["queries"][:2], N + 5)
    for row in ids:
        assert sorted(row[:N].tolist()) == list(range(N)), "every item once, then padding"
        assert (row[N:] == -1).all()


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "in-memory"])
def test_save_load_identical(
    index: PassageIndex, data: dict[str, np.ndarray], tmp_path: Path, mmap: bool
) -> None:
    meta = json.loads(json.dumps(index.save(tmp_path)))
    assert all((tmp_path / f).is_file() for f in meta["files"].values())
    again = index.save(tmp_path)  # a second save into the same directory reuses the files
    assert again["files"] == meta["files"]
    loaded = load_vector_index(tmp_path, meta, mmap=mmap, use_gpu="never")
    assert isinstance(loaded, PassageIndex) and (loaded.count, loaded.rows) == (index.count, index.rows)
    for allowed in (None, _mask(500, seed=2)):
        a = index.search(data["queries"], K, allowed=allowed)
        b = loaded.search(data["queries"], K, allowed=allowed)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_rows_must_start_with_the_items_in_order(data: dict[str, np.ndarray]) -> None:
    inner = build_vector_index("exact", np.concatenate([data["items"], data["passages"]]))
    owner = np.concatenate([np.arange(N), data["owner"]])
    with pytest.raises(ValueError, match="own vectors, in order"):
        PassageIndex(inner, owner[::-1].copy(), N)
    with pytest.raises(ValueError, match="item ordinals"):
        bad = owner.copy()
        bad[-1] = N
        PassageIndex(inner, bad, N)
    with pytest.raises(ValueError, match="rows"):
        PassageIndex(inner, owner[:-1], N)
    with pytest.raises(ValueError, match="owners"):
        build_passage_index("exact", data["items"], data["passages"], data["owner"][:-1])


def test_one_item_with_many_close_passages_does_not_crowd_out_the_rest(data: dict[str, np.ndarray]) -> None:
    """The first rows asked for all belong to one item: the search asks again until k items are found."""
    q = data["queries"][:1]
    rng = np.random.default_rng(3)
    crowd = _unit(np.repeat(q, 300, axis=0) + rng.normal(0, 0.01, (300, D)))
    passages = np.concatenate([data["passages"], crowd])
    owner = np.concatenate([data["owner"], np.full(300, 17)])
    index = build_passage_index("exact", data["items"], passages, owner)
    assert index.first_fetch(K) < 300  # so the first answer holds item 17 alone
    ids, _ = index.search(q, K)
    want, _ = truth({**data, "passages": passages, "owner": owner}, q, K)
    assert ids[0][0] == 17 and len(set(ids[0].tolist())) == K
    np.testing.assert_array_equal(ids, want)
