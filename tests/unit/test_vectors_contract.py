"""Contract tests that every VectorIndex backend must pass (hnsw, faiss ivf-flat, faiss ivf-pq+refine).

One parametrised fixture builds each backend once over the same data, and every test in
``TestVectorIndexContract`` runs against each of them: a new backend joins by adding one entry to BACKENDS.

The data is SYNTHETIC clustered unit vectors (20k x 64, ~140 Gaussian clusters under a few "topics"):
enough to exercise recall, filters and persistence in a unit test, and says nothing about recall on a
real corpus -- bench/ann_bench.py measures that on real embeddings.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.synthetic import synthetic_clustered as clustered  # one recipe for tests and benchmark
from common.index.vectors import (
    FaissIvfIndex,
    SearchParams,
    VectorIndex,
    build_vector_index,
    exact_search,
    load_vector_index,
)

N, D, NQ, K = 20_000, 64, 200, 10

# name -> (kind, build params).  Test-sized parameters: efC 100 builds the graph in ~1 s; the PQ variant
# uses 8-d sub-vectors (fast training) and re-ranks 16x candidates to stay above the recall bar.
BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "hnsw": ("hnsw", {"M": 16, "ef_construction": 100}),
    "ivf-flat": ("ivf", {"quantizer": "flat", "use_gpu": "never"}),
    "ivf-pq": ("ivf", {"quantizer": "pq", "pq_m": 8, "refine_k_factor": 16, "use_gpu": "never"}),
}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def random_mask(n_allowed: int, seed: int, n: int = N) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, n_allowed, replace=False)] = True
    return mask


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    # Queries come from the same distribution but are not in the index.
    x = clustered(N + NQ, D, seed=7)
    return np.ascontiguousarray(x[:N]), np.ascontiguousarray(x[N:])


@pytest.fixture(scope="module")
def truth(data: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    vectors, queries = data
    return exact_search(vectors, queries, K)[0]


@pytest.fixture(scope="module", params=list(BACKENDS))
def index(request: pytest.FixtureRequest, data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    kind, params = BACKENDS[request.param]
    return build_vector_index(kind, data[0], params)  # type: ignore[arg-type]


class TestVectorIndexContract:
    def test_is_a_vector_index(self, index: VectorIndex) -> None:
        assert isinstance(index, VectorIndex)
        assert index.kind in ("hnsw", "ivf")
        assert (index.count, index.dim) == (N, D)
        assert index.device in ("cpu", "gpu")

    def test_recall_vs_brute_force(self, index: VectorIndex, data: Any, truth: np.ndarray) -> None:
        ids, scores = index.search(data[1], K)
        assert ids.shape == scores.shape == (NQ, K)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        assert recall(ids, truth) >= 0.95
        assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be sorted best first"

    def test_single_query_vector(self, index: VectorIndex, data: Any) -> None:
        ids, scores = index.search(data[1][0], K)
        assert ids.shape == scores.shape == (1, K)
        np.testing.assert_array_equal(ids, index.search(data[1][:1], K)[0])

    def test_ordinal_round_trip(self, index: VectorIndex, data: Any) -> None:
        picks = np.random.default_rng(1).choice(N, 300, replace=False)
        ids, scores = index.search(data[0][picks], 1)
        # An approximate graph may in principle miss an item's own vector; allow 1% before calling it broken.
        assert np.mean(ids[:, 0] == picks) >= 0.99
        np.testing.assert_allclose(scores[ids[:, 0] == picks, 0], 1.0, atol=1e-4)

    @pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "in-memory"])
    def test_save_load_identical(self, index: VectorIndex, data: Any, tmp_path: Path, mmap: bool) -> None:
        meta = index.save(tmp_path)
        meta = json.loads(json.dumps(meta))  # must survive the snapshot manifest
        assert all((tmp_path / name).is_file() for name in meta["files"].values())
        loaded = load_vector_index(tmp_path, meta, mmap=mmap, use_gpu="never")
        assert (loaded.kind, loaded.count, loaded.dim) == (index.kind, index.count, index.dim)
        queries = data[1]
        for allowed in (None, random_mask(4000, seed=3), random_mask(30, seed=4)):
            a_ids, a_scores = index.search(queries, K, allowed=allowed)
            b_ids, b_scores = loaded.search(queries, K, allowed=allowed)
            np.testing.assert_array_equal(a_ids, b_ids)
            np.testing.assert_array_equal(a_scores, b_scores)

    def test_saving_twice_into_one_snapshot_shares_the_vectors(
        self, index: VectorIndex, tmp_path: Path
    ) -> None:
        first = index.save(tmp_path)
        again = index.save(tmp_path)  # e.g. a second backend of the same snapshot: file reused, not rewritten
        assert first == again
        assert np.load(tmp_path / first["files"]["vectors"], mmap_mode="r").shape == (N, D)

    def test_k_larger_than_n_pads(self, index: VectorIndex, data: Any) -> None:
        ids, scores = index.search(data[1][:2], N + 7)
        assert ids.shape == (2, N + 7)
        for row_ids, row_scores in zip(ids, scores, strict=True):
            assert sorted(row_ids[:N]) == list(range(N)), "every item once, before any padding"
            assert (row_ids[N:] == -1).all() and np.isneginf(row_scores[N:]).all()

    @pytest.mark.parametrize("n_allowed", [1, 9, 200, 1000, 4000, 10_000, 19_999])
    @pytest.mark.parametrize("path", ["default", "force-ann"])
    def test_filter_never_leaks_and_fills_k(
        self, index: VectorIndex, data: Any, n_allowed: int, path: str
    ) -> None:
        mask = random_mask(n_allowed, seed=n_allowed)
        params = SearchParams(exact_threshold=0) if path == "force-ann" else None
        ids, scores = index.search(data[1][:50], K, allowed=mask, params=params)
        valid = ids >= 0
        assert mask[ids[valid]].all(), "a disallowed ordinal was returned"
        assert (valid.sum(axis=1) == min(K, n_allowed)).all(), "k results whenever k items are allowed"
        assert np.isneginf(scores[~valid]).all()
        for row in ids:
            assert len(set(row[row >= 0])) == min(K, n_allowed), "no duplicates"

    def test_very_selective_filter_is_exact(self, index: VectorIndex, data: Any) -> None:
        mask = random_mask(30, seed=11)
        ids, scores = index.search(data[1], K, allowed=mask)
        t_ids, t_scores = exact_search(data[0], data[1], K, allowed=mask)
        np.testing.assert_array_equal(ids, t_ids)
        np.testing.assert_allclose(scores, t_scores, rtol=0, atol=1e-5)

    @pytest.mark.parametrize("path", ["default", "force-ann"])
    def test_moderate_filter_recall(self, index: VectorIndex, data: Any, path: str) -> None:
        mask = random_mask(N // 5, seed=12)  # 20%; at this N only "force-ann" is sure to skip brute force
        params = SearchParams(exact_threshold=0) if path == "force-ann" else None
        ids, _ = index.search(data[1], K, allowed=mask, params=params)
        assert recall(ids, exact_search(data[0], data[1], K, allowed=mask)[0]) >= 0.9

    def test_selective_filter_recall_on_the_ann_path(self, index: VectorIndex, data: Any) -> None:
        mask = random_mask(N // 50, seed=13)  # 2%, forced through over-fetch / widened IVF probing
        ids, _ = index.search(data[1], K, allowed=mask, params=SearchParams(exact_threshold=0))
        assert recall(ids, exact_search(data[0], data[1], K, allowed=mask)[0]) >= 0.9

    def test_all_false_mask(self, index: VectorIndex, data: Any) -> None:
        ids, scores = index.search(data[1][:5], K, allowed=np.zeros(N, dtype=bool))
        assert (ids == -1).all() and np.isneginf(scores).all()

    def test_all_true_mask_equals_unfiltered(self, index: VectorIndex, data: Any) -> None:
        a = index.search(data[1][:20], K, allowed=np.ones(N, dtype=bool))
        b = index.search(data[1][:20], K)
        np.testing.assert_array_equal(a[0], b[0])

    def test_search_params_trade_recall(self, index: VectorIndex, data: Any, truth: np.ndarray) -> None:
        low = SearchParams(ef=10, nprobe=1)
        high = SearchParams(ef=200, nprobe=128)
        assert recall(index.search(data[1], K, params=high)[0], truth) >= recall(
            index.search(data[1], K, params=low)[0], truth
        )

    def test_concurrent_filtered_searches(self, index: VectorIndex, data: Any) -> None:
        masks = [random_mask(m, seed=m) for m in (500, 3000, 8000, 15000)]
        efs = [SearchParams(ef=e, nprobe=p) for e, p in ((32, 8), (64, 16), (128, 32), (None, None))]

        def work(i: int) -> None:
            mask = masks[i % 4]
            ids, _ = index.search(data[1][i % NQ][None, :], K, allowed=mask, params=efs[i % 4])
            assert mask[ids[ids >= 0]].all() and (ids >= 0).sum() == K

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(200)))

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda ix, q: ix.search(q[:, :-1], K), "dimension"),
            (lambda ix, q: ix.search(q[None, :, :], K), "shape"),
            (lambda ix, q: ix.search(q, 0), "k must be"),
            (lambda ix, q: ix.search(q, -3), "k must be"),
            (lambda ix, q: ix.search(q, 2.5), "k must be"),
            (lambda ix, q: ix.search(q, K, allowed=np.ones(N - 1, dtype=bool)), "allowed mask"),
            (lambda ix, q: ix.search(q, K, allowed=np.arange(N)), "boolean"),
            (lambda ix, q: ix.search(q.tolist(), K), "numpy array"),
        ],
        ids=["wrong-dim", "3d", "k=0", "k<0", "k-float", "mask-length", "mask-dtype", "list"],
    )
    def test_bad_inputs_raise_value_error(
        self, index: VectorIndex, data: Any, call: Any, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            call(index, data[1][:3])


@pytest.fixture(scope="module")
def exact_index(data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    return build_vector_index("exact", data[0])


class TestExactIndexContract(TestVectorIndexContract):
    """The brute-force backend passes the same contract; only its kind differs."""

    @pytest.fixture
    def index(self, exact_index: VectorIndex) -> VectorIndex:
        return exact_index

    def test_is_a_vector_index(self, index: VectorIndex) -> None:
        assert isinstance(index, VectorIndex)
        assert (index.kind, index.device) == ("exact", "cpu")
        assert (index.count, index.dim) == (N, D)

    def test_answers_are_the_ground_truth(self, index: VectorIndex, data: Any, truth: np.ndarray) -> None:
        np.testing.assert_array_equal(index.search(data[1], K)[0], truth)


# ------------------------------------------------------------------------------------------------------------
# helpers, factory and GPU
# ------------------------------------------------------------------------------------------------------------


def test_exact_search_matches_naive_sort_and_batches() -> None:
    x = clustered(3000, 16, seed=2)
    q = clustered(50, 16, seed=3)
    mask = random_mask(700, seed=5, n=3000)
    for allowed in (None, mask):
        ids, scores = exact_search(x, q, 7, allowed=allowed)
        full = q @ x.T
        if allowed is not None:
            full[:, ~allowed] = -np.inf
        want = np.argsort(-full, axis=1, kind="stable")[:, :7]
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(scores, np.take_along_axis(full, want, axis=1), atol=1e-5)
    ids, scores = exact_search(x, q, 5, allowed=random_mask(3, seed=6, n=3000))
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_exact_search_blocks_bound_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import common.index.vectors.exact as vectors_mod

    x = clustered(2000, 8, seed=8)
    q = clustered(40, 8, seed=9)
    want = exact_search(x, q, 5)
    monkeypatch.setattr(vectors_mod, "_EXACT_BLOCK_ELEMS", 2000 * 3)  # 3 query rows per block
    got = exact_search(x, q, 5)
    np.testing.assert_array_equal(want[0], got[0])


def test_factory_rejects_unknown_kind_and_params() -> None:
    x = clustered(500, 8, seed=1)
    with pytest.raises(ValueError, match="unknown vector index kind"):
        build_vector_index("annoy", x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="efconstruction"):
        build_vector_index("hnsw", x, {"efconstruction": 10})
    with pytest.raises(ValueError, match="quantizer"):
        build_vector_index("ivf", x, {"quantizer": "sq8"})


def test_search_params_validate() -> None:
    with pytest.raises(ValueError, match="ef"):
        SearchParams(ef=0)
    with pytest.raises(ValueError, match="nprobe"):
        SearchParams(nprobe=-1)


def _faiss_gpu_unavailable() -> str | None:
    faiss = pytest.importorskip("faiss", reason="faiss is not installed")
    if not hasattr(faiss, "StandardGpuResources"):
        return "this faiss build has no GPU support (faiss-cpu is installed, not faiss-gpu)"
    if faiss.get_num_gpus() == 0:
        return "faiss-gpu is installed but no CUDA GPU is visible"
    return None


def test_use_gpu_always_fails_loudly_without_a_gpu() -> None:
    if _faiss_gpu_unavailable() is None:
        pytest.skip("a GPU is available here; the no-GPU error path cannot be exercised")
    with pytest.raises(RuntimeError, match="use_gpu=always"):
        FaissIvfIndex.build(clustered(2000, 8, seed=1), use_gpu="always")


@pytest.mark.gpu
@pytest.mark.parametrize("quantizer", ["flat", "pq"])
def test_faiss_gpu_search(quantizer: str, data: Any, truth: np.ndarray, tmp_path: Path) -> None:
    reason = _faiss_gpu_unavailable()
    if reason:
        pytest.skip(reason)
    params: dict[str, Any] = {"quantizer": quantizer, "use_gpu": "always"}
    if quantizer == "pq":
        params |= {"pq_m": 8, "refine_k_factor": 16}
    gpu_index = build_vector_index("ivf", data[0], params)
    assert gpu_index.device == "gpu"
    ids, _ = gpu_index.search(data[1], K)
    assert recall(ids, truth) >= 0.95
    # k and nprobe beyond the GPU's selection limit fall back to the CPU copy instead of failing.
    assert gpu_index.search(data[1][:2], 3000, params=SearchParams(nprobe=4096))[0].shape == (2, 3000)
    # Filtered searches run on the CPU copy: identical to a CPU-only load of the same snapshot.
    meta = gpu_index.save(tmp_path)
    cpu_index = load_vector_index(tmp_path, meta, mmap=True, use_gpu="never")
    reloaded_gpu = load_vector_index(tmp_path, meta, mmap=True, use_gpu="always")
    assert reloaded_gpu.device == "gpu"
    mask = random_mask(5000, seed=21)
    g_ids, _ = reloaded_gpu.search(data[1], K, allowed=mask)
    c_ids, _ = cpu_index.search(data[1], K, allowed=mask)
    assert mask[g_ids[g_ids >= 0]].all()
    np.testing.assert_array_equal(g_ids, c_ids)
