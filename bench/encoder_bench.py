"""Text-encoder benchmark on SciFact: bulk indexing throughput and single-query latency.

Why these two numbers: indexing cost is throughput-bound (and dominated by padding waste unless texts
are length-sorted), while serving cost is the latency of one query on one ORT thread, which is ~60% of
a Search request's CPU. Both are reported beside each other so a cheaper encoder has to show both.

    python bench/encoder_bench.py --limit 1000 --queries 300
    python bench/encoder_bench.py --encoder use-multilingual --json out.json
    python bench/encoder_bench.py --corpus geonames --limit 5000 --against minilm-int8 --repeat 3

``--corpus geonames`` encodes what a GeoNames build encodes (each place's "name. country", a random
sample of cities500): the short texts of the performance issue's bulk target. ``--against ENC`` times a
second encoder in the same run (bulk passes interleaved with the first's), prints its figures as ratios
to the first's and the cosine between the two encoders' vectors of every text.

The machine is shared in development, so CPU-time figures are printed beside wall-clock ones: they are
far less sensitive to other processes stealing cores. The load average is printed too; compare wall
figures only between runs with similar load.
"""

from __future__ import annotations

import argparse
import inspect
import json
import lzma
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.encoders import ONNX_ENCODERS, get_encoder, known_encoders


def find_scifact(explicit: str | None) -> Path:
    """--data, $QUARRY_SCIFACT_DIR, then shared/ beside the checkout (where CI puts it)."""
    here = Path(__file__).resolve()
    candidates = (
        explicit,
        os.environ.get("QUARRY_SCIFACT_DIR"),
        here.parents[2] / "shared" / "data" / "scifact",
        "/work/shared/data/scifact",
    )
    for cand in candidates:
        if cand and (Path(cand) / "corpus.jsonl.xz").is_file():
            return Path(cand)
    sys.exit("SciFact not found: pass --data DIR (the folder with corpus.jsonl.xz and queries.jsonl)")


def load_corpus(data: Path, limit: int, fields: str) -> list[str]:
    texts: list[str] = []
    with lzma.open(data / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            body = doc.get("text", "") if fields == "title+abstract" else ""
            texts.append(f"{doc.get('title', '')} {body}".strip())
            if len(texts) >= limit:
                break
    return texts


def load_place_texts(limit: int, seed: int = 0) -> list[str]:
    """What a GeoNames build embeds: "name. country" of ``limit`` places drawn from cities500."""
    import random

    from common.catalog import embed_text
    from indexer.datasets import geonames

    ds = geonames.load(Path("."), variant="cities500")
    fields = ds.embed_fields or []
    texts = [embed_text(it, fields) for it in ds.items()]
    return random.Random(seed).sample(texts, min(limit, len(texts)))


def load_queries(data: Path, limit: int) -> list[str]:
    with (data / "queries.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(limit), f, strict=False)]


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def bench_bulk(encoder: Any, texts: list[str], batch_size: int, sort: bool | None) -> dict[str, float]:
    """Texts per wall second, and per CPU second of this process (all its threads)."""
    kwargs = {} if sort is None else {"sort_by_length": sort}
    encoder.encode(texts[: min(len(texts), batch_size)], batch_size=batch_size, **kwargs)  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    encoder.encode(texts, batch_size=batch_size, **kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"texts_per_s": round(len(texts) / wall, 1), "texts_per_cpu_s": round(len(texts) / cpu, 1)}


def bench_queries(encoder: Any, queries: list[str], warmup: int = 20) -> dict[str, float]:
    for q in queries[:warmup]:
        encoder.encode([q])
    wall = np.empty(len(queries))
    cpu = np.empty(len(queries))
    for i, q in enumerate(queries):
        # With one intra-op thread onnxruntime runs on the calling thread, so thread CPU time is the
        # query's whole CPU cost (tokenization included).
        c0, t0 = time.thread_time(), time.perf_counter()
        encoder.encode([q])
        wall[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
    wall_ms, cpu_ms = wall * 1e3, cpu * 1e3
    return {
        "p50_ms": float(np.percentile(wall_ms, 50)),
        "p90_ms": float(np.percentile(wall_ms, 90)),
        "p99_ms": float(np.percentile(wall_ms, 99)),
        "mean_ms": float(wall_ms.mean()),
        "cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
        "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
        "n": len(queries),
    }


def _make(name: str, threads: int, args: argparse.Namespace, tmp: str) -> tuple[Any, dict[str, Any]]:
    """Encoder ``name`` with ``threads`` threads, and its load figures."""
    thread_opt = "intra_op_threads" if name in ONNX_ENCODERS else "threads"
    extra: dict[str, Any] = {"cache_dir": tmp} if name in ONNX_ENCODERS and args.cold_export else {}
    t0 = time.perf_counter()
    enc = get_encoder(name, **{thread_opt: threads}, **extra)
    info: dict[str, Any] = {
        "load_s" + ("_with_cold_export" if extra else ""): round(time.perf_counter() - t0, 2)
    }
    if hasattr(enc, "providers"):
        info["providers"] = enc.providers
    return enc, info


def _bench_all(
    names: list[str], args: argparse.Namespace, corpus: list[str], queries: list[str], tmp: str
) -> dict[str, dict[str, Any]]:
    """Each encoder's bulk figures (sorted and unsorted, the best of ``--repeat``; every repeat runs each
    encoder and mode once, so a load change on a shared machine hits all of them alike) and one-thread
    query figures; with two encoders, each one's bulk vectors under ``_vectors`` for the cosine between them."""
    out: dict[str, dict[str, Any]] = {}
    bulk: dict[str, Any] = {}
    for name in names:
        bulk[name], out[name] = _make(name, args.bulk_threads, args, tmp)
    for _ in range(args.repeat):
        for name, enc in bulk.items():
            sortable = "sort_by_length" in inspect.signature(enc.encode).parameters
            modes: dict[str, bool | None] = (
                {"bulk_sorted": True, "bulk_unsorted": False} if sortable else {"bulk": None}
            )
            for label, sort in modes.items():
                r = bench_bulk(enc, corpus, args.batch_size, sort)
                best = out[name].get(label)
                if best is None or r["texts_per_s"] > best["texts_per_s"]:
                    out[name][label] = r
    if len(names) > 1:  # the vectors are only for the cosine between two encoders
        for name, enc in bulk.items():
            out[name]["_vectors"] = enc.encode(corpus, batch_size=args.batch_size)
    del bulk

    for name in names:
        single, _ = _make(name, 1, args, tmp)
        out[name]["query_latency_1_thread"] = {
            k: round(v, 2) for k, v in bench_queries(single, queries).items()
        }
        if args.static is not None and name == args.encoder:
            from common.encoders.static import StaticQueryEncoder

            static = StaticQueryEncoder.load(args.static / "vectors", single.tokenizer)
            out[name]["query_latency_static"] = {
                k: round(v, 4) for k, v in bench_queries(static, queries).items()
            }
            mine, theirs = static.encode(queries), single.encode(queries)
            out[name]["static_cosine_to_model"] = round(float((mine * theirs).sum(axis=1).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="minilm", choices=known_encoders())
    ap.add_argument(
        "--against", choices=known_encoders(), help="also time this encoder in the same run, as ratios"
    )
    ap.add_argument(
        "--corpus",
        choices=("scifact", "geonames"),
        default="scifact",
        help="bulk texts: SciFact documents (--fields) or GeoNames places' name + country",
    )
    ap.add_argument("--data", help="SciFact folder (corpus.jsonl.xz, queries.jsonl)")
    ap.add_argument("--limit", type=int, default=1000, help="corpus documents to encode (default 1000)")
    ap.add_argument(
        "--fields",
        choices=("title+abstract", "title"),
        default="title+abstract",
        help="what to embed per document (71%% of SciFact title+abstract texts hit the 256-token cap)",
    )
    ap.add_argument("--queries", type=int, default=300, help="queries for the latency test (default 300)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="bulk repeats; the best is reported (default 1)")
    ap.add_argument(
        "--bulk-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for bulk encoding (default: all cores)",
    )
    ap.add_argument(
        "--cold-export", action="store_true", help="minilm: export into an empty cache and time it"
    )
    ap.add_argument(
        "--static",
        type=Path,
        help="a snapshot built with --query-encoder static: also time its static query encoder",
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)

    data = find_scifact(args.data)
    if args.corpus == "geonames":
        corpus = load_place_texts(args.limit)
    else:
        corpus = load_corpus(data, args.limit, args.fields)
    queries = load_queries(data, args.queries)
    names = [args.encoder] + ([args.against] if args.against else [])
    results: dict[str, Any] = {
        "encoder": args.encoder,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": loadavg(),
        "corpus": args.corpus,
        "docs": len(corpus),
        "fields": args.fields if args.corpus == "scifact" else "name. country",
        "batch_size": args.batch_size,
        "bulk_threads": args.bulk_threads,
    }

    with tempfile.TemporaryDirectory() as tmp:
        by_name = _bench_all(names, args, corpus, queries, tmp)
    first = by_name[args.encoder]
    vectors = {name: by_name[name].pop("_vectors") for name in names if "_vectors" in by_name[name]}
    results.update(first)
    if args.against:
        other = by_name[args.against]
        bulk_key = "bulk_sorted" if "bulk_sorted" in first else "bulk"
        other["ratio_to_" + args.encoder] = {
            "bulk_texts_per_s": round(other[bulk_key]["texts_per_s"] / first[bulk_key]["texts_per_s"], 3),
            "query_cpu_p50": round(
                other["query_latency_1_thread"]["cpu_p50_ms"] / first["query_latency_1_thread"]["cpu_p50_ms"],
                3,
            ),
        }
        cos = np.einsum("ij,ij->i", vectors[args.encoder], vectors[args.against])
        other["cosine_to_" + args.encoder] = {
            "mean": round(float(cos.mean()), 4),
            "p1": round(float(np.percentile(cos, 1)), 4),
            "min": round(float(cos.min()), 4),
        }
        results["against"] = {"encoder": args.against, **other}
    results["loadavg_end"] = loadavg()

    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
