"""Text analysis and the tantivy inverted index: the part of the snapshot contract that both the
indexer (writing) and the retriever (querying) must agree on.

CJK: tantivy's simple tokenizer would keep a run of Han characters as one token ("中国上海" → one
term), so a query for 上海 would never match. Han runs are therefore segmented with jieba's search mode
(words and their sub-words: 上海市 → 上海, 海市, 上海市) and re-joined with spaces *before* tantivy's
analyzer runs; every other script goes through tantivy's analyzer unchanged. The same function runs at
index and query time, so terms always line up. Tokenizers are not stored in a tantivy index, which is why
`open_index` registers them on every open.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import tantivy

from common.catalog import Item

ORD_FIELD = "_ord"
CATEGORY_FIELD = "_category"
TAGS_FIELD = "_tags"
ATTR_PREFIX = "attr_"

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]+")
# Tokens longer than this are junk (base64 blobs, URLs) and would bloat the term dictionary.
MAX_TOKEN_CHARS = 40


class Analyzer(StrEnum):
    """Named analyzers a text field can use; the name is recorded in the manifest."""

    #: English prose: lowercase, ASCII folding, English stop words, Snowball stemming.
    ENGLISH = "quarry_en"
    #: Names and short labels in any language: lowercase and ASCII folding only (no stemming of names).
    NAME = "quarry_name"


def _build_analyzer(kind: Analyzer) -> tantivy.TextAnalyzer:
    builder = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS + 1))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
    )
    if kind is Analyzer.ENGLISH:
        builder = builder.filter(tantivy.Filter.stopword("english")).filter(tantivy.Filter.stemmer("english"))
    return builder.build()


_ANALYZERS: dict[Analyzer, tantivy.TextAnalyzer] = {kind: _build_analyzer(kind) for kind in Analyzer}

_jieba_lock = threading.Lock()
_jieba_tokenizer: object | None = None


def _jieba() -> object:
    # jieba builds its prefix dictionary on first use (~1 s); do it once, under a lock, in a private
    # Tokenizer so we never touch jieba's global state.
    global _jieba_tokenizer
    if _jieba_tokenizer is None:
        with _jieba_lock:
            if _jieba_tokenizer is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                tok = jieba.Tokenizer()
                tok.initialize()
                _jieba_tokenizer = tok
    return _jieba_tokenizer


def warm_up() -> None:
    """Load jieba's dictionary now rather than on the first Chinese query."""
    _jieba()


def segment_cjk(text: str) -> str:
    """Replace every Han run by its jieba search-mode segmentation, space-separated."""
    if not _HAN_RUN.search(text):
        return text
    tok = _jieba()

    def repl(m: re.Match[str]) -> str:
        words = tok.cut_for_search(m.group(0), HMM=True)  # type: ignore[attr-defined]
        return " " + " ".join(w for w in words if w.strip()) + " "

    return _HAN_RUN.sub(repl, text)


def analyze(text: str, analyzer: Analyzer) -> list[str]:
    """The index-time and query-time token stream of `text`."""
    return _ANALYZERS[analyzer].analyze(segment_cjk(text))


def register_analyzers(index: tantivy.Index) -> None:
    for kind, analyzer in _ANALYZERS.items():
        index.register_tokenizer(kind.value, analyzer)


@dataclass(frozen=True)
class TextField:
    """One searchable text field of a collection."""

    name: str
    analyzer: Analyzer = Analyzer.ENGLISH
    boost: float = 1.0

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "analyzer": self.analyzer.value, "boost": self.boost}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> TextField:
        return cls(name=str(d["name"]), analyzer=Analyzer(str(d["analyzer"])), boost=float(d["boost"]))  # type: ignore[arg-type]


def build_schema(text_fields: Iterable[TextField], attr_names: Iterable[str]) -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    # The dense item ordinal ties a tantivy doc to the forward store and the vector/geo indexes.
    sb.add_unsigned_field(ORD_FIELD, stored=True, indexed=True, fast=True)
    for f in text_fields:
        # Text is not stored: the forward store owns display fields.
        sb.add_text_field(f.name, stored=False, tokenizer_name=f.analyzer.value, index_option="position")
    sb.add_text_field(CATEGORY_FIELD, stored=False, tokenizer_name="raw", index_option="basic")
    sb.add_text_field(TAGS_FIELD, stored=False, tokenizer_name="raw", index_option="basic")
    for name in attr_names:
        sb.add_float_field(ATTR_PREFIX + name, stored=False, indexed=True, fast=True)
    return sb.build()


def create_index(directory: Path, schema: tantivy.Schema) -> tantivy.Index:
    directory.mkdir(parents=True, exist_ok=True)
    index = tantivy.Index(schema, path=str(directory), reuse=False)
    register_analyzers(index)
    return index


def open_index(directory: Path) -> tantivy.Index:
    if not tantivy.Index.exists(str(directory)):
        raise FileNotFoundError(f"no tantivy index in {directory}")
    index = tantivy.Index.open(str(directory))
    register_analyzers(index)
    return index


def pretokenize_for_index(text: str) -> str:
    """What the indexer hands tantivy for a text field (tantivy's analyzer then runs on it)."""
    return segment_cjk(text)


def item_document(ordinal: int, item: Item, fields: Iterable[TextField]) -> tantivy.Document:
    """The tantivy document of `item` at `ordinal`: what a build and a real-time Upsert both index."""
    doc = tantivy.Document()
    doc.add_unsigned(ORD_FIELD, ordinal)
    for f in fields:
        text = item.text.get(f.name)
        if text:
            doc.add_text(f.name, pretokenize_for_index(text))
    if item.category is not None:
        doc.add_text(CATEGORY_FIELD, item.category)
    for tag in item.tags:
        doc.add_text(TAGS_FIELD, tag)
    for name, number in item.attrs.items():
        doc.add_float(ATTR_PREFIX + name, number)
    return doc


def ordinal_query(schema: tantivy.Schema, ordinal: int) -> tantivy.Query:
    """Matches the one document at `ordinal` (for deleting it)."""
    return tantivy.Query.term_query(schema, ORD_FIELD, ordinal)
