"""Offline retrieval quality: nDCG@k on real judgments, run through the same core as the server."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quarry.settings import BranchSpec, CollectionSettings, load_settings


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (as trec_eval's ndcg_cut and BEIR); 0 for a query without relevant docs."""
    dcg = sum(qrels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    rel = {d for d, g in qrels.items() if g > 0}
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


def evaluate_scifact(
    *,
    snapshot: Path | None,
    data_dir: Path | None,
    split: str = "train",
    k: int = 10,
    branch: str = "inverted",
) -> dict[str, Any]:
    from indexer.build import BuildOptions, build_snapshot
    from indexer.datasets import default_data_dir, scifact

    data = data_dir or default_data_dir()
    queries = scifact.queries(data)
    judgments = scifact.qrels(data, split)
    with tempfile.TemporaryDirectory(prefix="quarry-eval-") as tmp:
        if snapshot is None:
            ds = scifact.load(data)
            snapshot = Path(tmp) / "scifact"
            build_snapshot(
                ds.items(),
                snapshot,
                BuildOptions(collection="scifact", text_fields=ds.text_fields, progress=False),
                ds.source,
            )
        run = asyncio.run(_run(snapshot, {q: queries[q] for q in judgments}, k, branch))
    ndcg = [ndcg_at_k(run[q], judgments[q], k) for q in judgments]
    rec = [recall_at_k(run[q], judgments[q], 100) for q in judgments]
    return {
        "dataset": "scifact",
        "split": split,
        "branch": branch,
        "queries": len(judgments),
        f"ndcg@{k}": round(sum(ndcg) / len(ndcg), 4),
        "recall@100": round(sum(rec) / len(rec), 4),
        "reference": "BEIR BM25 nDCG@10 = 0.665 (test split)",
    }


async def _run(snapshot: Path, queries: Mapping[str, str], k: int, branch: str) -> dict[str, list[str]]:
    from retriever.core.service import SearchService
    from retriever.core.types import SearchQuery
    from retriever.generations import Collection, Registry

    settings = load_settings()
    coll_settings = CollectionSettings(branches={branch: BranchSpec(quota=max(100, k), timeout_ms=10_000)})
    registry = Registry()
    registry.put(Collection(snapshot, coll_settings))
    service = SearchService(settings, registry)
    out: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    try:
        for qid, text in queries.items():
            res = await service.search(SearchQuery(collection="scifact", text=text, top_k=100))
            out[qid] = [h.id for h in res.hits]
    finally:
        service.close()
    del t0
    return out
