"""ANN benchmark for common.index.vectors: recall@k vs brute force, single-query latency, build time.

    python bench/ann_bench.py --vectors corpus.f32.npy            # real embeddings (float32, L2-normalised)
    python bench/ann_bench.py --synthetic 100000,128              # synthetic clustered fallback
    python bench/ann_bench.py --synthetic 100000,128 --filter-sweep   # measures the exact-search threshold
    python bench/ann_bench.py --vectors corpus.f32.npy --plot-out ann.png   # + recall vs latency, PNG

Queries are held-out rows of the matrix (``--queries``) unless ``--query-vectors`` is given.  Latency is
per single query (one vector per call, one thread), which is what the service does per request.  For each
setting the raw library call (hnswlib ``knn_query`` / faiss ``index.search``) is timed interleaved with our
``VectorIndex.search`` wrapper on the same queries, and the ratio of the medians is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Single-query latency is measured on one thread, as one request uses one core in the service: a BLAS or
# OpenMP pool for one query mostly adds barrier waits, which on a busy 2-core box cost whole scheduler
# ticks (we saw p50s of 8 ms).  OpenBLAS reads this at import, hence before numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import synthetic_clustered  # path set up above so the script runs from a checkout
from common.index.vectors import (
    FaissIvfIndex,
    HnswIndex,
    SearchParams,
    exact_search,
)


@dataclass(frozen=True)
class Point:
    """One search setting's recall@k and single-query p50 latency, ours and the raw library's."""

    backend: str
    param: str
    recall: float
    ours_p50_us: float
    raw_p50_us: float


HNSW_EFS = (16, 32, 64, 128, 256)
IVF_NPROBES = (1, 4, 8, 16, 32, 64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found ∩ truth| / |truth| per query (ignoring -1 padding in the truth)."""
    hits = total = 0
    for f, t in zip(found, truth, strict=True):
        t = t[t >= 0]
        hits += len(np.intersect1d(f, t))
        total += len(t)
    return hits / max(total, 1)


@dataclass
class Timing:
    p50_us: float
    p99_us: float


def _pct(ns: list[int]) -> Timing:
    arr = np.asarray(ns, dtype=np.float64) / 1e3
    return Timing(float(np.percentile(arr, 50)), float(np.percentile(arr, 99)))


def time_single(fn: Callable[[np.ndarray], Any], queries: np.ndarray, warmup: int = 20) -> Timing:
    for i in range(min(warmup, len(queries))):
        fn(queries[i : i + 1])
    ns = []
    for i in range(len(queries)):
        q = queries[i : i + 1]
        t0 = time.perf_counter_ns()
        fn(q)
        ns.append(time.perf_counter_ns() - t0)
    return _pct(ns)


def time_pair(
    raw: Callable[[np.ndarray], Any],
    wrapped: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    rounds: int = 2,
) -> tuple[Timing, Timing, np.ndarray]:
    """Time the raw library call and our wrapper interleaved call by call, so load drift on a shared box
    hits both alike -- but on different queries (i and i + n/2) and in alternating order: running both on
    the same query back to back hands the second a warm cache and flatters it by up to 2x."""
    n = len(queries)
    for i in range(min(20, n)):
        raw(queries[i : i + 1])
        wrapped(queries[i : i + 1])
    raw_ns: list[int] = []
    ours_ns: list[int] = []
    ids = np.empty((n, k), dtype=np.int64)
    clock = time.perf_counter_ns
    for r in range(rounds):
        for i in range(n):
            qa = queries[i : i + 1]
            j = (i + n // 2) % n
            qb = queries[j : j + 1]
            if (i + r) % 2:
                t0 = clock()
                raw(qa)
                t1 = clock()
                res = wrapped(qb)
                t2 = clock()
                raw_ns.append(t1 - t0)
                ours_ns.append(t2 - t1)
            else:
                t0 = clock()
                res = wrapped(qb)
                t1 = clock()
                raw(qa)
                t2 = clock()
                ours_ns.append(t1 - t0)
                raw_ns.append(t2 - t1)
            ids[j] = res[0][0]
    return _pct(raw_ns), _pct(ours_ns), ids


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    for r in rows:
        print(_row(r, widths))


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    if args.vectors:
        data = np.load(args.vectors)
        label = f"{args.vectors} {data.shape[0]}x{data.shape[1]} (real embeddings)"
    else:
        n, d = (int(s) for s in args.synthetic.split(","))
        extra = 0 if args.query_vectors else args.queries
        data = synthetic_clustered(n + extra, d, seed=args.seed)
        label = f"SYNTHETIC clustered data {n}x{d} (not a real corpus)"
    data = np.ascontiguousarray(data, dtype=np.float32)
    if args.query_vectors:
        return data, np.ascontiguousarray(np.load(args.query_vectors), dtype=np.float32), label
    rng = np.random.default_rng(args.seed + 1)
    held = rng.choice(data.shape[0], args.queries, replace=False)
    keep = np.ones(data.shape[0], dtype=bool)
    keep[held] = False
    return np.ascontiguousarray(data[keep]), np.ascontiguousarray(data[held]), label


def build_all(args: argparse.Namespace, x: np.ndarray) -> dict[str, tuple[Any, float]]:
    built: dict[str, tuple[Any, float]] = {}
    t0 = time.perf_counter()
    built["hnsw"] = (
        HnswIndex.build(x, M=args.hnsw_m, ef_construction=args.hnsw_efc, num_threads=args.threads),
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    built["ivf-flat"] = (FaissIvfIndex.build(x, quantizer="flat", use_gpu="never"), time.perf_counter() - t0)
    if x.shape[0] >= args.pq_min_n:
        t0 = time.perf_counter()
        built["ivf-pq+refine"] = (
            FaissIvfIndex.build(x, quantizer="pq", use_gpu="never"),
            time.perf_counter() - t0,
        )
    return built


def run_main_table(
    args: argparse.Namespace, x: np.ndarray, q: np.ndarray, built: dict[str, tuple[Any, float]]
) -> tuple[list[Point], float]:
    """Prints the table; returns its points and brute force's p50 (µs), for the plot."""
    import faiss

    k = args.k
    truth, _ = exact_search(x, q, k)
    rows: list[list[str]] = []
    points: list[Point] = []
    bf = time_single(lambda v: exact_search(x, v, k), q[: args.bf_queries])
    rows.append(["brute force", "-", "1.000", f"{bf.p50_us:.0f}", f"{bf.p99_us:.0f}", "-", "-", "-"])
    for name, (index, build_s) in built.items():
        if name == "hnsw":
            settings: list[tuple[str, SearchParams, Callable[[np.ndarray], Any]]] = []
            for ef in HNSW_EFS:

                def raw_hnsw(v: np.ndarray, ef: int = ef, h: Any = index.raw) -> Any:
                    return h.knn_query(v, k=k, num_threads=1)

                settings.append((f"ef={ef}", SearchParams(ef=ef), raw_hnsw))
        else:
            settings = []
            for nprobe in IVF_NPROBES:
                ivf_params = faiss.SearchParametersIVF()
                ivf_params.nprobe = nprobe
                fp: Any = ivf_params
                if index.quantizer == "pq":
                    fp = faiss.IndexRefineSearchParameters()
                    fp.k_factor = index.raw.k_factor
                    fp.base_index_params = ivf_params  # a raw pointer: ivf_params is kept alive below

                def raw_ivf(v: np.ndarray, fp: Any = fp, keep: Any = ivf_params, f: Any = index.raw) -> Any:
                    return f.search(v, k, params=fp)

                settings.append((f"nprobe={nprobe}", SearchParams(nprobe=nprobe), raw_ivf))
        for label, sp, raw in settings:
            if name == "hnsw":
                index.raw.set_ef(sp.ef)  # the raw call sees the same ef the wrapper sets

            def ours(
                v: np.ndarray, sp: SearchParams = sp, index: Any = index
            ) -> tuple[np.ndarray, np.ndarray]:
                return index.search(v, k, params=sp)

            t_raw, t_ours, ids = time_pair(raw, ours, q, k)
            points.append(Point(name, label, recall_at_k(ids, truth), t_ours.p50_us, t_raw.p50_us))
            rows.append(
                [
                    name,
                    label,
                    f"{recall_at_k(ids, truth):.3f}",
                    f"{t_ours.p50_us:.0f}",
                    f"{t_ours.p99_us:.0f}",
                    f"{t_raw.p50_us:.0f}",
                    f"{t_ours.p50_us / t_raw.p50_us:.2f}",
                    f"{build_s:.1f}",
                ]
            )
        if name == "hnsw":
            index.raw.set_ef(index.ef_search)
            index._ef = index.ef_search
    print_table(
        ["backend", "param", f"recall@{k}", "p50 us", "p99 us", "raw p50 us", "ours/raw", "build s"], rows
    )
    return points, bf.p50_us


def plot_recall_latency(points: list[Point], brute_p50_us: float, k: int, title: str, path: Path) -> None:
    """PNG: recall@k against single-query p50 latency, one curve a backend over its search parameter
    (ef, nprobe), ours solid and the raw library call dashed; brute force as the exact reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = iter(matplotlib.color_sequences["tab10"])
    for backend in dict.fromkeys(p.backend for p in points):
        mine = [p for p in points if p.backend == backend]
        color = next(colors)
        recalls = [p.recall for p in mine]
        ax.plot(recalls, [p.ours_p50_us for p in mine], marker="o", color=color, label=f"{backend} (Quarry)")
        ax.plot(
            recalls,
            [p.raw_p50_us for p in mine],
            marker=".",
            linestyle="--",
            color=color,
            label=f"{backend} (raw)",
        )
        for p in mine:
            ax.annotate(
                p.param, (p.recall, p.ours_p50_us), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
    ax.axhline(brute_p50_us, color="grey", linestyle=":", label="brute force (recall 1.0)")
    ax.set_xlabel(f"recall@{k} (against brute force)")
    ax.set_ylabel("single-query p50 latency (µs, one thread)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _masks(kind: str, x: np.ndarray, m: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` masks with exactly ``m`` allowed items each.

    uniform: a random subset, independent of the geometry (e.g. a tenant or availability flag).
    correlated: the m items furthest along a random direction (e.g. a language or region filter, which
    clusters in embedding space) -- the hard case for filtered ANN.
    """
    n = x.shape[0]
    out = []
    for _ in range(count):
        mask = np.zeros(n, dtype=bool)
        if kind == "uniform":
            mask[rng.choice(n, m, replace=False)] = True
        else:
            direction = rng.standard_normal(x.shape[1], dtype=np.float32)
            mask[np.argpartition(x @ direction, n - m)[n - m :]] = True
        out.append(mask)
    return out


def _run_filtered(
    index: Any,
    qs: np.ndarray,
    k: int,
    masks: list[np.ndarray],
    mask_of: np.ndarray,
    truth: np.ndarray,
    sp: SearchParams,
) -> tuple[Timing, float]:
    ns = []
    ids = np.empty((len(qs), k), dtype=np.int64)
    for i in range(len(qs)):
        v = qs[i : i + 1]
        t0 = time.perf_counter_ns()
        ids[i] = index.search(v, k, allowed=masks[mask_of[i]], params=sp)[0][0]
        ns.append(time.perf_counter_ns() - t0)
    return _pct(ns), recall_at_k(ids, truth)


def run_filter_sweep(
    args: argparse.Namespace, x: np.ndarray, q: np.ndarray, built: dict[str, tuple[Any, float]]
) -> None:
    """Brute force over the allowed rows vs the filtered ANN paths, per number of allowed items."""
    k = args.k
    n = x.shape[0]
    nq = min(args.sweep_queries, len(q))
    rng = np.random.default_rng(args.seed + 2)
    counts = [m for m in (100, 300, 1000, 2000, 3000, 4000, 5000, 7000, 10000, 20000, 50000) if m < n]
    forced_exact = SearchParams(exact_threshold=n)
    forced_ann = SearchParams(exact_threshold=0)
    anns = {name: idx for name, (idx, _) in built.items()}
    for idx in anns.values():
        if isinstance(idx, HnswIndex):
            # Measure the over-fetch path itself rather than its exact fallback, up to a sane ef.
            idx.max_overfetch = 16_384
    for kind in ("uniform", "correlated"):
        rows = []
        for m in counts:
            n_masks = 8
            masks = _masks(kind, x, m, n_masks, rng)
            mask_of = np.arange(nq) % n_masks
            truth = np.empty((nq, k), dtype=np.int64)
            for j in range(n_masks):
                truth[mask_of == j] = exact_search(x, q[:nq][mask_of == j], k, allowed=masks[j])[0]
            qs = q[:nq]
            cells = [str(m), f"{m / n:.2%}"]
            t_exact, _ = _run_filtered(anns["hnsw"], qs, k, masks, mask_of, truth, forced_exact)
            cells.append(f"{t_exact.p50_us:.0f}")
            for index in anns.values():
                t_ann, rec = _run_filtered(index, qs, k, masks, mask_of, truth, forced_ann)
                cells += [f"{t_ann.p50_us:.0f}", f"{rec:.3f}"]
            rows.append(cells)
        header = ["allowed", "share", "exact p50"]
        for name in anns:
            header += [f"{name} p50", "recall"]
        print(f"\nfilter sweep ({kind} filter, {nq} single queries, k={k}, latencies in us):")
        print_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--vectors", type=Path, help="float32 (N, d) .npy of L2-normalised embeddings")
    src.add_argument("--synthetic", metavar="N,D", help="synthetic clustered data instead (labelled as such)")
    parser.add_argument("--query-vectors", type=Path, help="separate query .npy (default: hold out rows)")
    parser.add_argument("--queries", type=int, default=1000, help="rows held out as queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=-1, help="hnsw build threads")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--hnsw-efc", type=int, default=200)
    parser.add_argument("--pq-min-n", type=int, default=50_000, help="also bench ivf-pq+refine from this N")
    parser.add_argument("--bf-queries", type=int, default=300, help="queries timed for the brute-force row")
    parser.add_argument("--filter-sweep", action="store_true", help="measure exact vs filtered-ANN cost")
    parser.add_argument("--sweep-queries", type=int, default=400)
    parser.add_argument("--plot-out", type=Path, help="PNG: recall@k vs single-query latency per backend")
    args = parser.parse_args(argv)

    import faiss

    x, q, label = load_data(args)
    print(f"data: {label}; {len(q)} queries; k={args.k}; single-query latency, 1 thread")
    built = build_all(args, x)
    faiss.omp_set_num_threads(1)  # builds used all cores; searches are timed on one
    ivf = built["ivf-flat"][0]
    pq = built.get("ivf-pq+refine", (None, 0.0))[0]
    pq_text = f", pq: m={pq.pq_m} k_factor={pq.refine_k_factor:g}" if pq is not None else ""
    print(
        f"params: hnsw M={args.hnsw_m} efC={args.hnsw_efc} | ivf nlist={ivf.nlist} "
        f"default nprobe={ivf.nprobe}{pq_text} | exact thresholds: hnsw {built['hnsw'][0].exact_threshold}, "
        f"ivf {ivf.exact_threshold} allowed items"
    )
    if args.filter_sweep:
        run_filter_sweep(args, x, q, built)
    else:
        points, brute = run_main_table(args, x, q, built)
        if args.plot_out:
            plot_recall_latency(points, brute, args.k, f"ANN recall vs latency: {label}", args.plot_out)
            print(f"plot: {args.plot_out}")


if __name__ == "__main__":
    main()
