"""Oracle test: tantivy's BM25 (through our inverted branch) against a reference Lucene BM25.

Documents are short (< 40 tokens) so tantivy's 1-byte fieldnorm encoding is exact and scores must
match the reference to float precision, not just in order.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.catalog import Item
from common.index.text import Analyzer, TextField, analyze
from common.settings import CollectionSettings
from indexer.build import BuildOptions, build_snapshot
from retriever.core.types import Filters, SearchQuery
from retriever.generations import Collection
from retriever.recall.base import RecallRequest

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a quick brown dog outpaces a quick fox",
    "lazy dogs sleep all day long in the sun",
    "foxes are quick and clever animals",
    "the sun rises in the east and sets in the west",
    "brown bears and brown foxes live in the forest",
    "dog dog dog dog",
    "an unrelated sentence about databases and indexes",
]
QUERIES = ["quick fox", "lazy dog", "brown", "sun east", "dog", "clever animals in the forest"]
K1, B = 1.2, 0.75


def reference_bm25(query: str) -> dict[int, float]:
    docs = [analyze(d, Analyzer.ENGLISH) for d in CORPUS]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    terms = list(dict.fromkeys(analyze(query, Analyzer.ENGLISH)))
    scores: dict[int, float] = {}
    for i, doc in enumerate(docs):
        tf = Counter(doc)
        s = 0.0
        for t in terms:
            if tf[t] == 0:
                continue
            df = sum(1 for d in docs if t in d)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf[t] * (K1 + 1) / (tf[t] + K1 * (1 - B + B * len(doc) / avgdl))
        if s > 0:
            scores[i] = s
    return scores


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Collection:
    out: Path = tmp_path_factory.mktemp("bm25") / "snap"
    items = [Item(id=str(i), text={"body": t}) for i, t in enumerate(CORPUS)]
    build_snapshot(
        items,
        out,
        BuildOptions(collection="bm25", text_fields=[TextField("body")], progress=False, writer_threads=1),
        {},
    )
    return Collection(out, CollectionSettings())


@pytest.mark.parametrize("query", QUERIES)
def test_scores_match_reference(collection: Collection, query: str) -> None:
    branch = collection.branches["inverted"]
    req = RecallRequest(
        query=SearchQuery(collection="bm25", text=query, filters=Filters()),
        collection=collection,
        pool=ThreadPoolExecutor(1),
        terms={Analyzer.ENGLISH: list(dict.fromkeys(analyze(query, Analyzer.ENGLISH)))},
    )
    got = asyncio.run(branch.recall(req, 100))
    expected = reference_bm25(query)
    assert {c.ordinal for c in got} == set(expected)
    for c in got:
        assert c.score == pytest.approx(expected[c.ordinal], rel=1e-5), c
    # Same ranking (ties broken arbitrarily by both, so compare score sequences).
    assert [round(c.score, 4) for c in got] == sorted((round(s, 4) for s in expected.values()), reverse=True)
