"""BEIR SciFact (5,183 abstracts; claims as queries; train judgments). Read from DATA_DIR/scifact."""

from __future__ import annotations

import csv
import json
import lzma
from collections.abc import Iterator
from pathlib import Path

from common.catalog import Item
from common.index.text import Analyzer, TextField
from common.passages import PassageOptions
from indexer.datasets.base import Dataset, DatasetUnavailable

TEXT_FIELDS = [
    # Title boost 0.4 was tuned on the train judgments (0.4 → nDCG@10 0.698 vs 0.675 at 1.0); see README.
    TextField("title", Analyzer.ENGLISH, boost=0.4),
    TextField("body", Analyzer.ENGLISH, boost=1.0),
]


def _dir(data_dir: Path) -> Path:
    d = data_dir / "scifact"
    if not (d / "corpus.jsonl.xz").is_file() and not (d / "corpus.jsonl").is_file():
        raise DatasetUnavailable(
            f"SciFact not found under {d} (expected corpus.jsonl.xz, queries.jsonl, qrels/train.tsv); "
            "set --data-dir or QUARRY_DATA_DIR to the folder that holds scifact/"
        )
    return d


def _corpus(d: Path) -> Iterator[Item]:
    path = d / "corpus.jsonl.xz"
    opener = lzma.open if path.is_file() else open
    if not path.is_file():
        path = d / "corpus.jsonl"
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                doc = json.loads(line)
                yield Item(
                    id=str(doc["_id"]), text={"title": doc.get("title", ""), "body": doc.get("text", "")}
                )


def load(data_dir: Path) -> Dataset:
    d = _dir(data_dir)
    return Dataset(
        embed_fields=["title", "body"],
        # Abstracts run past MiniLM's 256 tokens and a claim matches one or two of their sentences: items
        # are also searched by their windows of 2 sentences (README "Quality and speed": ann +0.04,
        # hybrid +0.013 nDCG@10 on the train judgments).
        passages=PassageOptions(sentences=2, stride=1),
        name="scifact",
        text_fields=TEXT_FIELDS,
        items=lambda: _corpus(d),
        source={
            "dataset": "scifact",
            "path": str(d),
            "citation": "Wadden et al. 2020; BEIR (Thakur et al. 2021)",
        },
    )


def queries(data_dir: Path) -> dict[str, str]:
    d = _dir(data_dir)
    out: dict[str, str] = {}
    with open(d / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                out[str(q["_id"])] = q["text"]
    return out


def qrels(data_dir: Path, split: str = "train") -> dict[str, dict[str, int]]:
    """query id → {doc id: relevance}. Only the train split ships; test judgments are withheld on purpose."""
    d = _dir(data_dir)
    path = d / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} not found (only the train judgments are available)")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return out
