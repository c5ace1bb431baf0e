"""Offline retrieval quality: nDCG@k on real judgments, run through the same core as the server."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.settings import AnnSettings, BranchSpec, CollectionSettings, FusionSettings
from common.snapshot import read_manifest
from retriever.settings import load_settings

if TYPE_CHECKING:
    from common.types import Candidate


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (as trec_eval's ndcg_cut and BEIR); 0 for a query without relevant docs."""
    dcg = sum(qrels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    rel = {d for d, g in qrels.items() if g > 0}
    return len(rel.intersection(ranked[:k])) / len(rel) if rel else 0.0


@contextlib.contextmanager
def _scifact_snapshot(
    snapshot: Path | None, data: Path, branches: Sequence[str], query_encoder: str = "model"
) -> Iterator[Path]:
    """`snapshot`, or SciFact built into a temporary directory for the call (with item vectors and the
    data set's passages when "ann" is asked for: encoding 5,183 abstracts and their ~40k windows with
    MiniLM takes ~16 minutes on 2 cores; a static query encoder several more)."""
    if snapshot is not None:
        yield snapshot
        return
    from indexer.build import build_snapshot
    from indexer.datasets import scifact

    with tempfile.TemporaryDirectory(prefix="quarry-eval-") as tmp:
        ds = scifact.load(data)
        out = Path(tmp) / "scifact"
        encoder = "minilm" if "ann" in branches else None
        static = "static" if encoder and "static" in _query_encoders(query_encoder) else None
        build_snapshot(ds.items(), out, ds.build_options(encoder=encoder, query_encoder=static), ds.source)
        yield out


def evaluate_scifact(
    *,
    snapshot: Path | None,
    data_dir: Path | None,
    split: str = "train",
    k: int = 10,
    branches: Sequence[str] = ("inverted",),
    fusion: str = "rrf",
    query_encoder: str = "model",
    passages: str = "on",
    against: Path | None = None,
) -> dict[str, Any]:
    """nDCG@k / Recall@100 of the given recall branches (fused when several) through the search core.

    Without `snapshot`, one is built in a temporary directory (with item vectors when "ann" is asked for:
    encoding 5,183 abstracts with MiniLM takes minutes on 2 cores). `query_encoder` "model", "static",
    "int8" (ann.query_encoder), or two of them "A,B" ("both" is "model,static"): each, and B − A paired
    per query with a bootstrap 95% CI.
    `passages` "on" (ann.passages: items scored by their best passage when the snapshot has them), "off"
    (the items' own vectors) or "both", likewise paired (passages − items); one "both" at a time.
    `against`: a second snapshot of the same catalog (another encoder, say) run with the same settings,
    likewise paired (against − snapshot), with each one's vector encoder named.
    """
    from indexer.datasets import default_data_dir, scifact

    pair = _query_encoders(query_encoder)
    if (len(pair) == 2) + (passages == "both") + (against is not None) > 1:
        raise ValueError("compare query encoders, passages or snapshots, one at a time")
    data = data_dir or default_data_dir()
    queries = scifact.queries(data)
    judgments = scifact.qrels(data, split)
    # (label, query encoder, passages): a label prefixes a variant's figures when there are two
    if len(pair) == 2:
        variants = [(name, name, passages != "off") for name in pair]
    elif passages == "both":
        variants = [("items", query_encoder, False), ("passages", query_encoder, True)]
    else:
        variants = [("", query_encoder, passages != "off")]
    scores: dict[str, tuple[list[float], list[float]]] = {}
    encoders: dict[str, str] = {}
    with _scifact_snapshot(snapshot, data, branches, query_encoder) as snap:
        vectors = read_manifest(snap).parts.get("vectors", {})
        runs = [(label, snap, encoder, use_passages) for label, encoder, use_passages in variants]
        if against is not None:
            ((_, encoder, use_passages),) = variants
            runs = [("base", snap, encoder, use_passages), ("against", against, encoder, use_passages)]
            for label, path in (("base", snap), ("against", against)):
                enc = read_manifest(path).parts.get("vectors", {}).get("encoder", {})
                encoders[label] = f"{path} ({enc.get('name', 'no vectors')})"
        for label, path, encoder, use_passages in runs:
            run = asyncio.run(
                _run(path, {q: queries[q] for q in judgments}, branches, fusion, encoder, use_passages)
            )
            ndcg = [ndcg_at_k(run[q], judgments[q], k) for q in judgments]
            rec = [recall_at_k(run[q], judgments[q], 100) for q in judgments]
            scores[label] = (ndcg, rec)
    report: dict[str, Any] = {
        "dataset": "scifact",
        "split": split,
        "branches": list(branches),
        "fusion": fusion if len(branches) > 1 else None,
        "queries": len(judgments),
        "passages": _passages_note(vectors) if "ann" in branches else None,
    }
    if encoders:
        report["snapshots"] = encoders
    for label, (ndcg, rec) in scores.items():
        prefix = f"{label}." if label else ""
        report[f"{prefix}ndcg@{k}"] = round(sum(ndcg) / len(ndcg), 4)
        report[f"{prefix}recall@100"] = round(sum(rec) / len(rec), 4)
    if len(scores) == 2:  # paired per query: the interval of the mean difference
        (a, (base, _)), (b, (other, _)) = scores.items()
        diff = [y - x for y, x in zip(other, base, strict=True)]
        report[f"{b}-{a}.ndcg@{k}"] = _score(diff)
    report["reference"] = "BEIR BM25 nDCG@10 = 0.665 (test split)"
    return report


def _query_encoders(spec: str) -> list[str]:
    """``"model"`` → ["model"]; ``"model,int8"`` → both; ``"both"`` → ["model", "static"] (its old name)."""
    names = [n.strip() for n in ("model,static" if spec == "both" else spec).split(",")]
    known = ("model", "static", "int8")
    if not 1 <= len(names) <= 2 or len(set(names)) != len(names) or any(n not in known for n in names):
        raise ValueError(f"query encoder {spec!r}: give one of {known} or two of them, comma-separated")
    return names


def _passages_note(vectors: Mapping[str, Any]) -> str:
    part = vectors.get("passages")
    if part is None:
        return "none in this snapshot (items' own vectors)"
    return (
        f"{part['windows']} windows of {part['sentences']} sentences every {part['stride']} "
        f"over {part['items_with_windows']} long items"
    )


async def _run(
    snapshot: Path,
    queries: Mapping[str, str],
    branches: Sequence[str],
    fusion: str,
    query_encoder: str = "model",
    passages: bool = True,
) -> dict[str, list[str]]:
    from retriever.core.types import SearchQuery
    from retriever.generations import Collection, Registry
    from retriever.service import SearchService

    settings = load_settings()
    registry = Registry()
    registry.put(Collection(snapshot, _eval_collection(branches, fusion, query_encoder, passages)))
    service = SearchService(settings, registry)
    out: dict[str, list[str]] = {}
    try:
        for qid, text in queries.items():
            res = await service.search(SearchQuery(collection="scifact", text=text, top_k=100))
            out[qid] = [h.id for h in res.hits]
    finally:
        service.close()
    return out


def _eval_collection(
    branches: Sequence[str], fusion: str, query_encoder: str = "model", passages: bool = True
) -> CollectionSettings:
    settings = load_settings()
    return CollectionSettings(
        ann=AnnSettings(query_encoder=query_encoder, passages=passages),  # type: ignore[arg-type]
        # fail_open=False: an evaluation must not silently score a degraded answer.
        branches={b: BranchSpec(quota=100, timeout_ms=60_000, fail_open=False) for b in branches},
        fusion=FusionSettings(strategy=fusion),  # type: ignore[arg-type]
        field_boosts=settings.for_collection("scifact").field_boosts,
    )


async def branch_lists(
    snapshot: Path,
    queries: Mapping[str, str],
    branches: Sequence[str],
    query_encoder: str = "model",
    passages: bool = True,
) -> tuple[dict[str, dict[str, Sequence[Candidate]]], dict[int, str]]:
    """Each branch's own candidate list per query (one Search each, debug answers), and ordinal → item id.

    Recall runs once per query through the real search core; every fusion is then replayed offline on
    these lists with the same pure functions the server calls."""
    from retriever.core.types import BranchStatus, SearchQuery
    from retriever.generations import Collection, Registry
    from retriever.service import SearchService

    registry = Registry()
    collection = Collection(snapshot, _eval_collection(branches, "rrf", query_encoder, passages))
    registry.put(collection)
    service = SearchService(load_settings(), registry)
    lists: dict[str, dict[str, Sequence[Candidate]]] = {}
    ids: dict[int, str] = {}
    try:
        for qid, text in queries.items():
            q = SearchQuery(collection=collection.name, text=text, top_k=1, debug=True)
            res = await service.search(q)
            assert res.debug is not None
            shown = dict(res.debug.branches)
            lists[qid] = {}
            for r in res.branch_stats:
                if r.status is not BranchStatus.OK:
                    raise RuntimeError(f"query {qid}: branch {r.branch} {r.status.value}: {r.detail}")
                lists[qid][r.branch] = r.candidates
                for c, item in zip(r.candidates, shown[r.branch], strict=True):
                    ids[c.ordinal] = item.id
    finally:
        service.close()
    return lists, ids


def _score(values: Sequence[float]) -> dict[str, Any]:
    from quarry.learned_fusion import bootstrap_ci

    lo, hi = bootstrap_ci(values)
    return {"mean": round(sum(values) / len(values), 4), "ci95": [round(lo, 4), round(hi, 4)]}


def cv_fusion(
    lists: Mapping[str, Mapping[str, Sequence[Candidate]]],
    ids: Mapping[int, str],
    judgments: Mapping[str, Mapping[str, int]],
    *,
    branches: Sequence[str],
    k: int = 10,
    folds: int = 5,
    inner_folds: int = 4,
    seed: int = 0,
    settings: CollectionSettings | None = None,
) -> dict[str, Any]:
    """nDCG@k per query of each branch alone, RRF, weighted and learned fusion; learned is K-fold
    cross-validated by query (each query scored by a model fitted without it, its configuration chosen by
    an inner CV on the training folds), then refitted on every query for serving.

    RRF and weighted use `settings` (default: the scifact collection's) k, weights and normalisation."""
    from quarry import learned_fusion as lf
    from retriever.core import fusion

    cs = settings or load_settings().for_collection("scifact")
    weights = {b: cs.branches[b].weight if b in cs.branches else 1.0 for b in branches}
    qids = list(judgments)
    ord_of = {item: o for o, item in ids.items()}

    def ndcg(fused: Sequence[Any], qid: str) -> float:
        return ndcg_at_k([ids[f.ordinal] for f in fused], judgments[qid], k)

    per_query: dict[str, list[float]] = {}
    for b in branches:
        per_query[b] = [ndcg(fusion.rrf({b: lists[q][b]}), q) for q in qids]
    per_query["rrf"] = [ndcg(fusion.rrf(lists[q], k=cs.fusion.rrf_k, weights=weights), q) for q in qids]
    per_query["weighted"] = [
        ndcg(fusion.weighted(lists[q], weights=weights, normalization=cs.fusion.normalization), q)
        for q in qids
    ]

    names = lf.feature_names(branches)
    rows = [
        lf.query_rows(
            q,
            lists[q],
            {ord_of[d]: g for d, g in judgments[q].items() if d in ord_of},
            branches,
            all_grades=list(judgments[q].values()),
            k=k,
        )
        for q in qids
    ]
    held_out: dict[str, float] = {}
    chosen = []
    for i, held in enumerate(lf.kfold(len(rows), folds, seed)):
        held_set = set(held.tolist())
        model = lf.train(
            [r for j, r in enumerate(rows) if j not in held_set],
            names,
            inner_folds=inner_folds,
            seed=seed + i,
            k=k,
        )
        chosen.append(model.config)
        for j in held:
            q = qids[j]
            held_out[q] = ndcg(fusion.learned(lists[q], weights=model.weights, intercept=model.intercept), q)
    per_query["learned"] = [held_out[q] for q in qids]
    final_config, inner_score = lf.select(rows, names, folds=folds, seed=seed, k=k)
    final = lf.fit(rows, names, final_config)
    diff = [a - b for a, b in zip(per_query["learned"], per_query["weighted"], strict=True)]
    return {
        "queries": len(qids),
        "folds": folds,
        "inner_folds": inner_folds,
        "seed": seed,
        f"ndcg@{k}": {name: _score(v) for name, v in per_query.items()},
        "learned_minus_weighted": _score(diff),
        "fold_configs": [asdict(c) for c in chosen],
        "final": {
            "config": asdict(final_config),
            f"cv_ndcg@{k}_of_config": round(inner_score, 4),
            "weights": {n: round(w, 6) for n, w in final.weights.items()},
            "intercept": round(final.intercept, 6),
        },
        "_model": final,
    }


def evaluate_scifact_fusion(
    *,
    snapshot: Path | None,
    data_dir: Path | None,
    split: str = "train",
    k: int = 10,
    branches: Sequence[str] = ("inverted", "ann"),
    folds: int = 5,
    seed: int = 0,
    learned_out: Path | None = None,
    max_queries: int | None = None,
    query_encoder: str = "model",
    passages: bool = True,
) -> dict[str, Any]:
    """`cv_fusion` on SciFact's judgments (train: the only split that ships), recall run once per query;
    with `learned_out`, writes the model fitted on all of them as a `[collections.scifact.fusion]` TOML
    snippet."""
    from indexer.datasets import default_data_dir, scifact
    from quarry.learned_fusion import toml_snippet

    data = data_dir or default_data_dir()
    queries = scifact.queries(data)
    judgments = scifact.qrels(data, split)
    if max_queries is not None:
        judgments = dict(list(judgments.items())[:max_queries])
    with _scifact_snapshot(snapshot, data, branches, query_encoder) as snap:
        vectors = read_manifest(snap).parts.get("vectors", {})
        lists, ids = asyncio.run(
            branch_lists(snap, {q: queries[q] for q in judgments}, branches, query_encoder, passages)
        )
    report = cv_fusion(lists, ids, judgments, branches=branches, k=k, folds=folds, seed=seed)
    model = report.pop("_model")
    cv = report[f"ndcg@{k}"]["learned"]
    version = (
        f"scifact {split} judgments, {len(judgments)} queries, {folds}-fold CV nDCG@{k} {cv['mean']}, "
        f"{model.config.loss} loss, features {model.config.features}, l2 {model.config.l2}"
    )
    snippet = toml_snippet(
        "scifact",
        list(branches),
        model,
        rrf_k=60.0,
        version=version,
        comments=(
            f"Learned fusion for {', '.join(branches)} (quarry eval scifact --cv-folds {folds}).",
            "Trained with quota = 100 per branch: min-max/z-score features depend on the list length.",
        ),
    )
    report.update(
        dataset="scifact",
        split=split,
        branches=list(branches),
        query_encoder=query_encoder,
        passages=_passages_note(vectors) if passages and "ann" in branches else "off",
        toml=snippet,
    )
    if learned_out is not None:
        learned_out.write_text(snippet)
        report["learned_out"] = str(learned_out)
    return report
