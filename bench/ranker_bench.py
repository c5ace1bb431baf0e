"""Ranking-stage benchmark: per-request scoring latency and throughput with/without micro-batching.

The model is an MLP trained on SYNTHETIC data (random features, labels from a fixed random rule) with
the real `DEFAULT_SCHEMA` width: the cost of an MLP depends only on its shape, not on what it learned.
A raw `InferenceSession.run` baseline is measured in the same run so the wrapper's overhead (input
checks, counters) and the batcher's (futures, thread hop, window) are visible against it.

    python bench/ranker_bench.py
    python bench/ranker_bench.py --concurrency 32 --candidates 200 --windows 0 1 2 --json out.json

CPU, one intra-op thread by default (the serving configuration). CPU time is printed beside wall time
because the development machine is shared; the load average is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from common.types import CandidateArrays, Fused, GeoPoint, ItemWindows, SourceScore, UserCounters
from ranker.features import FeatureInputs, feature_columns, feature_rows
from ranker.model import INPUT_NAME, OUTPUT_NAME, train_synthetic
from ranker.schema import DEFAULT_SCHEMA
from ranker.session import MicroBatcher, OnnxRanker


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def latency(ranker: OnnxRanker, sizes: list[int], iters: int) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    sess = ranker.session
    for n in sizes:
        X = rng.normal(size=(n, ranker.dim)).astype(np.float32)
        paths = {
            "raw session.run": lambda X=X: sess.run([OUTPUT_NAME], {INPUT_NAME: X}),
            "OnnxRanker.score": lambda X=X: ranker.score(X),
        }
        for fn in paths.values():
            for _ in range(min(200, iters)):
                fn()
        rows += _interleaved(paths, n, iters)
    # Vectorising dict rows is part of the per-request cost online; shown for scale.
    for n in sizes:
        dict_rows = [dict.fromkeys(DEFAULT_SCHEMA.names, 1.0) for _ in range(n)]
        vs: list[float] = []
        for _ in range(max(20, iters // 20)):
            t0 = time.perf_counter()
            DEFAULT_SCHEMA.vectorize(dict_rows)
            vs.append((time.perf_counter() - t0) * 1e6)
        rows.append(
            {"path": "schema.vectorize", "candidates": n, "p50_us": _pct(vs, 50), "p99_us": _pct(vs, 99)}
        )
    rows += _feature_paths(sizes, iters)
    return rows


def _feature_paths(sizes: list[int], iters: int) -> list[dict[str, Any]]:
    """Computing the features of n SYNTHETIC candidates (two branch sources each, a location, popularity,
    ages, a user with windows, item windows): the served columns vs the plain one-dict-a-row definition,
    interleaved."""
    rng = np.random.default_rng(2)
    n_items = 10_000
    lat, lon = rng.uniform(-80, 80, n_items), rng.uniform(-180, 180, n_items)
    pop, created = rng.random(n_items), rng.uniform(1e9, 1.7e9, n_items)
    counters = UserCounters(40, 90.0, 30, 1.7e9, recent_windows=(1, 4, 9))
    out = []
    for n in sizes:
        ords = rng.choice(n_items, n, replace=False).tolist()
        fused = [
            Fused(o, 1.0 / (i + 1), [SourceScore("behavior", 0.5, i + 1), SourceScore("popular", 0.2, n - i)])
            for i, o in enumerate(ords)
        ]
        inputs = FeatureInputs(
            lat=lat,
            lon=lon,
            popularity=pop,
            origin=GeoPoint(40.0, -74.0),
            counters=counters,
            created=lambda o: created[o],
            now=1.75e9,
            item_windows=ItemWindows({o: (0.5, 2.0, 9.0) for o in ords}),
        )
        paths = {
            "features as rows (definition)": lambda f=fused, x=inputs: DEFAULT_SCHEMA.vectorize(
                feature_rows(f, x)
            ),
            "features as columns (served)": lambda f=fused, x=inputs: DEFAULT_SCHEMA.vectorize_columns(
                feature_columns(CandidateArrays.of(f), x), len(f)
            ),
        }
        out += _interleaved(paths, n, max(20, iters // 10))
    return out


def _interleaved(paths: dict[str, Callable[[], object]], n: int, rounds: int) -> list[dict[str, Any]]:
    """µs p50/p99 of each path over `rounds`, interleaved so all see the same background load (a shared
    machine)."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e6)
    return [
        {"path": name, "candidates": n, "p50_us": _pct(s, 50), "p99_us": _pct(s, 99)}
        for name, s in samples.items()
    ]


async def _load(batcher: MicroBatcher, X: np.ndarray, concurrency: int, per_client: int) -> list[float]:
    lat: list[float] = []

    async def client() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            await batcher.score(X)
            lat.append((time.perf_counter() - t0) * 1e3)
            # Yield so the other clients interleave as separate requests would.
            await asyncio.sleep(0)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return lat


def throughput(
    ranker: OnnxRanker, windows: list[float], concurrency: int, candidates: int, per_client: int
) -> list[dict[str, Any]]:
    X = np.random.default_rng(1).normal(size=(candidates, ranker.dim)).astype(np.float32)
    total_req = concurrency * per_client
    rows = []
    sess = ranker.session
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(total_req):
        sess.run([OUTPUT_NAME], {INPUT_NAME: X})
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows.append(_tp_row("raw session.run (sequential)", total_req, candidates, wall, cpu, total_req, None))
    for w in windows:
        batcher = MicroBatcher(ranker, window_ms=w, max_batch_rows=max(4096, candidates))
        asyncio.run(_load(batcher, X, concurrency, max(1, per_client // 10)))  # warm-up
        batcher.batches = 0
        calls0 = ranker.calls
        t0, c0 = time.perf_counter(), time.process_time()
        lat = asyncio.run(_load(batcher, X, concurrency, per_client))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        label = f"MicroBatcher window={w:g}ms" + (" (direct)" if w == 0 else "")
        rows.append(_tp_row(label, total_req, candidates, wall, cpu, ranker.calls - calls0, lat))
    return rows


def _tp_row(
    label: str, reqs: int, cands: int, wall: float, cpu: float, calls: int, lat: list[float] | None
) -> dict[str, Any]:
    return {
        "path": label,
        "requests_per_s": reqs / wall,
        "candidates_per_s": reqs * cands / wall,
        "inference_calls": calls,
        "rows_per_call": reqs * cands / max(calls, 1),
        "req_p50_ms": _pct(lat, 50) if lat else None,
        "req_p99_ms": _pct(lat, 99) if lat else None,
        "cpu_s": cpu,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--per-client", type=int, default=200, help="requests per concurrent client")
    ap.add_argument("--windows", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads")
    ap.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 16])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model, metrics, _, _ = train_synthetic(DEFAULT_SCHEMA, n=20_000, hidden=args.hidden)
        path = model.to_onnx(
            Path(tmp) / "ranker.onnx", schema=DEFAULT_SCHEMA, model_version="bench", metrics=metrics
        )
        ranker = OnnxRanker(
            path, schema=DEFAULT_SCHEMA, providers=args.providers, intra_op_threads=args.threads
        )

    print(
        f"model: MLP {DEFAULT_SCHEMA.dim}->{'->'.join(map(str, args.hidden))}->1 trained on SYNTHETIC data "
        f"(val_auc {metrics['val_auc']:.3f}); onnxruntime {ort.__version__}; providers {ranker.providers}; "
        f"intra_op_threads {args.threads}"
    )
    print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, loadavg {os.getloadavg()}"
    )

    lat_rows = latency(ranker, args.sizes, args.iters)
    print("\n## latency per request (µs)")
    print(f"{'path':<20} {'cands':>6} {'p50':>9} {'p99':>9}")
    for r in lat_rows:
        print(f"{r['path']:<20} {r['candidates']:>6} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f}")

    tp_rows = throughput(ranker, args.windows, args.concurrency, args.candidates, args.per_client)
    print(
        f"\n## throughput: {args.concurrency} concurrent asyncio clients x {args.per_client} requests, "
        f"{args.candidates} candidates each"
    )
    print(
        f"{'path':<34} {'req/s':>9} {'cand/s':>11} {'calls':>6} {'rows/call':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu s':>6}"
    )
    for r in tp_rows:
        p50 = f"{r['req_p50_ms']:.3f}" if r["req_p50_ms"] is not None else "-"
        p99 = f"{r['req_p99_ms']:.3f}" if r["req_p99_ms"] is not None else "-"
        print(
            f"{r['path']:<34} {r['requests_per_s']:>9.0f} {r['candidates_per_s']:>11.0f} {r['inference_calls']:>6} "
            f"{r['rows_per_call']:>9.0f} {p50:>7} {p99:>7} {r['cpu_s']:>6.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"latency": lat_rows, "throughput": tp_rows, "metrics": metrics}, indent=2)
        )


if __name__ == "__main__":
    main()
