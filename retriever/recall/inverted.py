"""Inverted (BM25) recall over the snapshot's tantivy index.

The query text is analysed exactly as at index time and turned into term queries built through the API,
never through tantivy's query parser: user text cannot inject `field:value`, wildcards, ranges or boolean
syntax. Terms are OR-ed (each summed over the text fields with their boosts), like a multi-field BM25
`match` query; filters are non-scoring MUST clauses so they do not change BM25 scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

import numpy as np
import tantivy
from pydantic import BaseModel

from common.index.text import ATTR_PREFIX, CATEGORY_FIELD, ORD_FIELD, TAGS_FIELD, Analyzer, TextField
from common.index.textstats import PHANTOM_TERM, idf_correction
from common.ordering import TIE_MARGIN, best_first_arrays, cut_is_settled
from common.types import Ranked
from retriever.core.types import Filters
from retriever.recall.base import Generation, RecallRequest
from retriever.recall.registry import register


@register
class InvertedBranch:
    name = "inverted"
    options: ClassVar[type[BaseModel] | None] = None

    def __init__(
        self,
        index: tantivy.Index,
        fields: list[TextField],
        boosts: dict[str, float],
        weight_by: str | None,
        global_docs: int | None = None,
    ) -> None:
        self._index = index
        self._schema = index.schema
        self._searcher = index.searcher()
        self._fields = [
            (f.name, f.analyzer, boosts.get(f.name, f.boost))
            for f in fields
            if boosts.get(f.name, f.boost) > 0
        ]
        self._weight_by = ATTR_PREFIX + weight_by if weight_by else None
        #: On a shard, the whole set's document count: each term's clause is rescaled to the global idf
        #: with the document frequency the root sends (common.index.textstats).
        self._global_docs = global_docs

    @classmethod
    def create(cls, generation: Generation, options: None) -> Self:
        text = generation.manifest.parts["text"]
        fields = [TextField.from_json(f) for f in text["fields"]]
        stats = text.get("global")
        return cls(
            generation.text_index,
            fields,
            generation.settings.field_boosts,
            text.get("weight_by_attr"),
            None if stats is None else int(stats["docs"]),
        )

    def skip_reason(self, request: RecallRequest) -> str | None:
        if not request.query.text.strip():
            return "no query text"
        if not any(request.terms.get(a) for _n, a, _b in self._fields):
            return "query text has no searchable terms (only stop words or punctuation)"
        return None

    def build_query(
        self,
        terms: Mapping[Analyzer, list[str]],
        filters: Filters,
        searcher: tantivy.Searcher | None = None,
        term_df: Mapping[tuple[str, str], int] | None = None,
    ) -> tantivy.Query:
        should: list[tuple[tantivy.Occur, tantivy.Query]] = []
        searcher = searcher or self._searcher
        for name, analyzer, field_boost in self._fields:
            for term in terms.get(analyzer, ()):
                boost = field_boost
                if self._global_docs is not None:
                    if term == PHANTOM_TERM:
                        continue
                    if term_df is not None:  # no root inputs: a warm-up, local statistics
                        df = term_df.get((name, term), 0)
                        boost *= idf_correction(df, self._global_docs, name, term, searcher)
                    if boost == 0.0:
                        continue  # no document of this shard has the term
                q = tantivy.Query.term_query(self._schema, name, term, index_option="freq")
                should.append(
                    (tantivy.Occur.Should, q if boost == 1.0 else tantivy.Query.boost_query(q, boost))
                )
        text_query = tantivy.Query.boolean_query(should)
        must = [(tantivy.Occur.Must, text_query)]
        flt = self._filter_query(filters)
        if flt is not None:
            must.append((tantivy.Occur.Must, tantivy.Query.const_score_query(flt, 0.0)))
        return tantivy.Query.boolean_query(must) if len(must) > 1 else text_query

    def _filter_query(self, filters: Filters) -> tantivy.Query | None:
        clauses: list[tuple[tantivy.Occur, tantivy.Query]] = []
        if filters.categories:
            clauses.append(
                (
                    tantivy.Occur.Must,
                    tantivy.Query.term_set_query(self._schema, CATEGORY_FIELD, list(filters.categories)),
                )
            )
        if filters.tags:
            clauses.append(
                (
                    tantivy.Occur.Must,
                    tantivy.Query.term_set_query(self._schema, TAGS_FIELD, list(filters.tags)),
                )
            )
        for r in filters.ranges:
            clauses.append(
                (
                    tantivy.Occur.Must,
                    tantivy.Query.range_query(
                        self._schema,
                        ATTR_PREFIX + r.field,
                        tantivy.FieldType.Float,
                        r.min,
                        r.max,
                        include_lower=not r.min_exclusive if r.min is not None else True,
                        include_upper=not r.max_exclusive if r.max is not None else True,
                    ),
                )
            )
        if not clauses:
            return None
        return clauses[0][1] if len(clauses) == 1 else tantivy.Query.boolean_query(clauses)

    def _search(self, query: tantivy.Query, limit: int, searcher: tantivy.Searcher | None = None) -> Ranked:
        searcher = searcher or self._searcher
        # More than asked until the tie group at the cut is seen whole: tantivy picks among exact ties by
        # segment order (which depends on how the index was written); the canonical order picks by ordinal.
        want = limit + TIE_MARGIN
        while True:
            hits = searcher.search(query, limit=want, count=False, weight_by_field=self._weight_by).hits
            scores = np.fromiter((s for s, _a in hits), np.float64, len(hits))
            if len(hits) < want or cut_is_settled(scores, limit):
                break
            want *= 2
        if not hits:
            return Ranked.empty()
        ords = searcher.fast_field_values(ORD_FIELD, [addr for _s, addr in hits])
        return Ranked(*best_first_arrays(np.asarray(ords), scores, limit))

    async def recall(self, request: RecallRequest, quota: int) -> Ranked:
        # After real-time changes the view's working index serves: it holds the generation's documents
        # minus the dead ones plus the upserted ones, with index-wide BM25 statistics.
        searcher = request.live.searcher
        term_df = request.root.term_df if request.root is not None else None
        query = self.build_query(request.terms, request.query.filters, searcher, term_df)
        return await request.blocking(self._search, query, quota, searcher)
