"""Global BM25 statistics for sharded text indexes, so that a shard scores a document exactly as one
node holding the whole collection would.

tantivy scores a term with idf(df, N) = ln(1 + (N - df + 0.5) / (df + 0.5)) and a length norm
k1 · (1 - b + b · dl / avgdl), where N is the index's document count, df the term's document count and
avgdl = (tokens in the field) / N — all read from the index itself, and tantivy-py offers no way to supply
them. A shard's own statistics differ from the whole collection's, so its scores (and the merge of shard
lists) would too. Two corrections make them agree:

- **avgdl** per field: each shard index carries *phantom* documents (no category, tags or attributes;
  text made only of PHANTOM_TERM, which the query side drops, so they never match), sized at build time
  so that (shard tokens + phantom tokens) / (shard docs + phantom docs) is the global average exactly,
  for every field at once (`phantom_plan`).
- **idf** per query term: the query multiplies each term's clause by idf(df_global, N_global) /
  idf(df_shard, N_shard) (`idf_correction`), the shard's own values read from its searcher, the global
  df sent by the root with the request: the root holds the set's one document-frequency table
  (`DfTable`, written once by the build), so shards need no copy of the vocabulary.

What is left is float32 rounding of the rescaled idf (relative differences ~1e-7; common.ordering treats
such near ties as ties). After real-time Upserts/Deletes a shard's
avgdl drifts from the build's by those changes, as with Elasticsearch's per-shard statistics, until the next
build realigns them.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import tantivy

from common.catalog import Item
from common.index.text import ORD_FIELD, TextField, analyze

#: The only word in phantom documents; a query term equal to it is dropped, so it never matches.
PHANTOM_TERM = "qqquarryphantomqq"
#: Phantom documents carry this ordinal: past any shard's items, and small enough that the ordinal fast
#: field stays 32 bits wide.
PHANTOM_ORD = 2**32 - 1
TOKENS_PER_PHANTOM = 10_000
DF_FILE = "global_df.arrow"


def bm25_idf(df: int, n: int) -> float:
    """tantivy's BM25 idf (in float64; tantivy computes it in float32)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


@dataclass
class TextStats:
    """Document count, tokens per field and document frequency per (field, term)."""

    docs: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    df: dict[str, Counter[str]] = field(default_factory=dict)


def item_tokens(item: Item, fields: Sequence[TextField]) -> dict[str, list[str]]:
    """The terms tantivy indexes for each text field of `item` (the index-time analysis)."""
    out: dict[str, list[str]] = {}
    for f in fields:
        value = item.text.get(f.name)
        # item_document hands tantivy pretokenize_for_index(value) (the CJK segmentation) and the field's
        # analyzer runs on that: analyze() is exactly those two steps.
        out[f.name] = analyze(value, f.analyzer) if value else []
    return out


def collect(items: Iterable[Item], fields: Sequence[TextField]) -> TextStats:
    """The BM25 statistics of `items`: documents, tokens per field, document frequency per term."""
    stats = TextStats(tokens={f.name: 0 for f in fields}, df={f.name: Counter() for f in fields})
    for item in items:
        stats.docs += 1
        for name, terms in item_tokens(item, fields).items():
            stats.tokens[name] += len(terms)
            stats.df[name].update(set(terms))
    return stats


def phantom_plan(
    global_stats: TextStats, shard_docs: int, shard_tokens: Mapping[str, int]
) -> tuple[int, dict[str, int]]:
    """(phantom documents, phantom tokens per field) that make the shard's index hold M documents and
    T_f · M / N tokens in every field f — the global average exactly, so tantivy computes the very same
    float32 avgdl. M is the smallest multiple of lcm_f(N / gcd(N, T_f)) (which divides N) that leaves no
    field short of tokens: at worst the whole collection's N, i.e. (N - shard docs) empty documents,
    ~9 bytes each on disk and never read by a query."""
    n = global_stats.docs
    step = 1
    for t in global_stats.tokens.values():
        if t:
            step = math.lcm(step, n // math.gcd(n, t))
    need = max(
        [shard_docs]
        + [math.ceil(shard_tokens.get(f, 0) * n / t) for f, t in global_stats.tokens.items() if t]
    )
    m = step * math.ceil(need / step) if need else 0
    extra = {f: m * t // n - shard_tokens.get(f, 0) for f, t in global_stats.tokens.items()}
    assert all(x >= 0 for x in extra.values()), extra
    return m - shard_docs, extra


def phantom_documents(
    docs: int, tokens: Mapping[str, int], fields: Sequence[TextField]
) -> Iterator[tantivy.Document]:
    """The phantom documents of a plan: the phantom tokens spread over the first ones (at most
    TOKENS_PER_PHANTOM per field each), the rest empty."""
    left = {f.name: tokens.get(f.name, 0) for f in fields}
    for _ in range(docs):
        doc = tantivy.Document()
        doc.add_unsigned(ORD_FIELD, PHANTOM_ORD)
        for f in fields:
            n = min(left[f.name], TOKENS_PER_PHANTOM)
            if n:
                doc.add_text(f.name, " ".join([PHANTOM_TERM] * n))
                left[f.name] -= n
        yield doc
    if any(left.values()):
        raise ValueError(f"{docs} phantom documents cannot carry {dict(tokens)} tokens")


def term_key(field: str, term: str) -> int:
    """A 64-bit key of (field, term): the df table is two sorted integer arrays, compact and memory-mapped
    (a Python dict of GeoNames' terms would cost tens of MB in every shard process)."""
    return int.from_bytes(hashlib.blake2b(f"{field}\0{term}".encode(), digest_size=8).digest(), "big")


def write_df(stats: TextStats, directory: Path) -> str:
    """The document-frequency table: keys (term_key, sorted) and their df, as one Arrow IPC file."""
    keys = np.fromiter(
        (term_key(name, term) for name, counter in stats.df.items() for term in counter),
        dtype=np.uint64,
    )
    dfs = np.fromiter((n for counter in stats.df.values() for n in counter.values()), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    keys, dfs = keys[order], dfs[order]
    if len(keys) > 1 and bool(np.any(keys[1:] == keys[:-1])):
        raise ValueError("two (field, term) pairs share a 64-bit key; cannot write the df table")
    table = pa.table({"key": pa.array(keys, pa.uint64()), "df": pa.array(dfs, pa.int64())})
    directory.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(directory / DF_FILE), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return DF_FILE


def global_meta(stats: TextStats, phantoms: int, phantom_tokens: Mapping[str, int]) -> dict[str, Any]:
    """The text part's `global` entry of a shard."""
    return {
        "docs": stats.docs,
        "tokens": dict(stats.tokens),
        "phantom_docs": phantoms,
        "phantom_tokens": dict(phantom_tokens),
        "phantom_term": PHANTOM_TERM,
    }


class DfTable:
    """The whole set's document frequencies (write_df's file), held by the root: it looks up the query's
    terms once per request and sends them to the shards, so no shard holds a copy of the vocabulary."""

    def __init__(self, keys: np.ndarray, df: np.ndarray) -> None:
        self._keys = keys
        self._df = df

    @classmethod
    def load(cls, path: Path) -> DfTable:
        table = ipc.open_file(pa.memory_map(str(path), "r")).read_all().combine_chunks()
        return cls(table.column("key").to_numpy(), table.column("df").to_numpy())

    def __len__(self) -> int:
        return len(self._keys)

    def df(self, field: str, term: str) -> int:
        if not len(self._keys):
            return 0
        key = np.uint64(term_key(field, term))
        i = int(np.searchsorted(self._keys, key))
        return int(self._df[i]) if i < len(self._keys) and self._keys[i] == key else 0


def idf_correction(
    global_df: int, global_docs: int, field: str, term: str, searcher: tantivy.Searcher
) -> float:
    """The factor turning a shard's idf of (field, term) into the whole set's; 0 when the shard has no
    document with the term (the clause then matches nothing anyway)."""
    local_df = searcher.doc_freq(field, term)
    if local_df == 0:
        return 0.0
    # Every term a shard's built documents hold is in the set's table; one only a real-time Upsert
    # brought counts its local documents.
    return bm25_idf(max(global_df, local_df), global_docs) / bm25_idf(local_df, searcher.num_docs)
