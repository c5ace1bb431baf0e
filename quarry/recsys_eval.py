"""`quarry eval movielens`: recommendation quality on MovieLens (1M by default) with a global temporal split.

Protocol (all from the real data, no synthetic events):
- Events are ordered by time and cut at two quantiles (default 0.8 and 0.9): train < a ≤ validation < b ≤
  test. A rating ≥ `min_rating` (4) is a positive; positives the user already had before the period they
  are judged in do not count, and every method's list excludes everything the user rated before.
- Model selection ("fit" phase): a snapshot from the train period only; its events are replayed into the
  embedded real-time store through LogEvents' own code path; candidates come from Quarry's own Recommend
  recall (behavior, preference, popularity: the serving pipeline, `SearchService.candidates`); labels are
  the validation positives. Users are split (seeded) into fitting and selection users; each ranker kind
  (the NumPy MLP, LightGBM LambdaMART exported to ONNX) is fitted on the first and the one with the best
  selection NDCG@10 is chosen — by validation, not by taste. The GBDT kinds each average five bagged
  boosters.
- Test phase: a snapshot from train + validation; the replayed store likewise; every test user with a
  history and a test positive is a query. Baselines in the same table: popularity, ItemCF and Swing
  (item-to-item expansion of the user's history, as the behavior branch does it), EASE (expansion of
  every item of the user's history, unweighted, as EASE is defined), Quarry's recall order
  (fused), and the chosen ranker's order over the same candidates.
- Metrics per user: NDCG@10, Recall@50, HitRate@10; means with bootstrap 95% confidence intervals over
  users (the same resamples for every method, so differences are paired).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.catalog import Event
from common.settings import BranchSpec, CollectionSettings
from indexer.build import build_snapshot
from indexer.datasets import load_dataset
from quarry.stats import paired_bootstrap
from quarry.training import replayed_service
from ranker.schema import DEFAULT_SCHEMA, ITEM_WINDOW_FEATURES, FeatureSchema
from retriever.core.types import SearchQuery
from retriever.generations import Collection
from retriever.service import SearchService

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "recall@50", "hit_rate@10")
#: Boosters averaged per GBDT ranker kind (ranker.gbdt.GBDTRanker.bags).
BAGS = 5
#: The i2i baselines: each expands the user's history over its own table.
BASELINE_I2I = ("itemcf", "swing", "ease")


def user_metrics(order: Sequence[int], positives: set[int]) -> tuple[float, float, float]:
    """NDCG@10 (binary gains), Recall@50, HitRate@10 of one ranked list."""
    dcg = sum(1.0 / math.log2(i + 2) for i, o in enumerate(order[:10]) if o in positives)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(10, len(positives))))
    got50 = len(positives.intersection(order[:50]))
    return (
        dcg / idcg if idcg else 0.0,
        got50 / len(positives),
        float(any(o in positives for o in order[:10])),
    )


@dataclass
class Phase:
    """One side of the split: a snapshot of the events before `cut`, its collection and service."""

    collection: Collection
    service: SearchService
    seen: dict[str, set[int]]
    positives: dict[str, set[int]]
    #: When the phase's requests happen: the start of the judged window (item ages, user and item windows).
    now: float


def _eval_settings() -> CollectionSettings:
    # Larger quotas than serving's defaults: every list is judged after removing what the user rated
    # before, which for a heavy user is most of the popular head.
    return CollectionSettings(
        recommend_branches={
            "behavior": BranchSpec(quota=300, timeout_ms=60_000),
            "preference": BranchSpec(quota=200, weight=0.5, timeout_ms=60_000),
            "popular": BranchSpec(quota=300, weight=0.3, timeout_ms=60_000),
        }
    )


def _phase(
    ds: Any,
    before: list[Event],
    judged: list[Event],
    out: Path,
    min_rating: float,
    now: float,
) -> Phase:
    build_snapshot(
        ds.items(), out, ds.build_options(encoder=None, overwrite=True, progress=False), ds.source, before
    )
    coll, svc = replayed_service(out, _eval_settings(), before)
    ord_of = coll.forward.ord_of
    seen: dict[str, set[int]] = {}
    for e in before:
        if e.item in ord_of:
            seen.setdefault(e.user, set()).add(ord_of[e.item])
    positives: dict[str, set[int]] = {}
    for e in judged:
        o = ord_of.get(e.item)
        if o is not None and e.weight >= min_rating and o not in seen.get(e.user, ()):
            positives.setdefault(e.user, set()).add(o)
    return Phase(coll, svc, seen, positives, now)


def _candidates(
    phase: Phase, users: Sequence[str], n: int, schema: FeatureSchema
) -> dict[str, tuple[list[int], np.ndarray]]:
    """Quarry's own Recommend candidates per user (what the ranker sees), minus what the user rated,
    with their features under `schema` (the item windows read only when it has them)."""

    async def run() -> dict[str, tuple[list[int], np.ndarray]]:
        out = {}
        for u in users:
            q = SearchQuery(collection=phase.collection.name, user_id=u, top_k=1000)
            fused = await phase.service.candidates(q, recommend=True)
            seen = phase.seen.get(u, set())
            fused = [f for f in fused if f.ordinal not in seen][:n]
            X = await phase.service.candidate_features(
                phase.collection, u, fused, schema=schema, now=phase.now
            )
            out[u] = ([f.ordinal for f in fused], X)
        return out

    return asyncio.run(run())


def _fit_rankers(
    rows: Mapping[str, tuple[list[int], np.ndarray]],
    positives: Mapping[str, set[int]],
    fit_users: Sequence[str],
    sel_users: Sequence[str],
    seed: int,
) -> tuple[str, dict[str, Any], dict[str, float]]:
    from ranker.gbdt import GBDTRanker, TrainingDependencyMissing
    from ranker.model import MLPRanker

    def stack(users: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        users = [u for u in users if rows[u][0]]
        X = np.concatenate([rows[u][1] for u in users])
        y = np.concatenate([np.array([o in positives[u] for o in rows[u][0]], float) for u in users])
        return X, y, [len(rows[u][0]) for u in users]

    # Early stopping watches a fifth of the fitting queries, never the selection users, so the
    # selection NDCG of every kind is measured on queries none of them was tuned on.
    order = list(fit_users)
    random.Random(seed + 1).shuffle(order)
    n_stop = max(1, len(order) // 5)
    X, y, g = stack(order[n_stop:])
    Xe, ye, ge = stack(order[:n_stop])
    models: dict[str, Any] = {}
    mlp = MLPRanker(seed=seed)
    mlp.fit(X, y, X_val=Xe, y_val=ye)
    models["mlp"] = mlp
    try:
        # Few candidates on purpose: with ~120 selection users, every extra variant is one more chance
        # to choose noise (a num_leaves grid 15/31/63 chose 63, the worst of the three on test).
        for name, objective in (("gbdt-lambdarank", "lambdarank"), ("gbdt-binary", "binary")):
            # Five bags (80% of the queries each, 80% of the features per tree): ~850 fitting queries
            # make one booster's test NDCG@10 move by ±0.005 from seed to seed; the average moves less.
            gbdt = GBDTRanker(objective=objective, seed=seed, bags=BAGS, feature_fraction=0.8)
            gbdt.fit(X, y, g, valid=(Xe, ye, ge))
            models[name] = gbdt
    except TrainingDependencyMissing as exc:
        log.warning("%s: choosing among the other ranker kinds", exc)
    users_with = [u for u in sel_users if rows[u][0]]
    selection: dict[str, float] = {
        # The baseline every model must beat to be chosen: no model at all (the fused order).
        "recall order": float(np.mean([user_metrics(rows[u][0], positives[u])[0] for u in users_with]))
    }
    for name, model in models.items():
        scores = [_order(rows[u][0], model.predict(rows[u][1])) for u in sel_users if rows[u][0]]
        users_with = [u for u in sel_users if rows[u][0]]
        selection[name] = float(
            np.mean([user_metrics(o, positives[u])[0] for o, u in zip(scores, users_with, strict=True)])
        )
    best = max(selection, key=lambda k: selection[k])
    return best, models, selection


def _order(ordinals: Sequence[int], scores: np.ndarray) -> list[int]:
    return [ordinals[i] for i in np.argsort(-np.asarray(scores), kind="stable")]


def evaluate_movielens(
    *,
    variant: str = "1m",
    data_dir: Path | None = None,
    cuts: Sequence[float] = (0.6, 0.7, 0.8, 0.9),
    min_rating: float = 4.0,
    candidates: int = 200,
    seed: int = 0,
    max_users: int | None = None,
    model_out: Path | None = None,
    item_windows: bool = False,
    horizon_days: float | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`cuts`: timestamp quantiles c0 < … < cn. Each window [c_i, c_i+1) is judged on a snapshot of
    everything before c_i; the windows before the last give fitting rows, the last (validation) window's
    users are split between fitting (3/4) and model selection (1/4); test is [cn, end) on a snapshot of
    everything before cn. MovieLens users rate in bursts, so one window holds few users that also have a
    history: several windows give the ranker several times more queries.

    `item_windows`: whether the rankers read the items' real-time 1 h / 1 d / 7 d counts. Off by default
    here: the windows that give fitting rows last 2–27 days, the test window 791, so a count of last
    week's events predicts the next weeks (fitting) but not the next two years (test) — with them the
    rankers learn a signal that does not hold on test (README gives the figures). `horizon_days` judges
    every window only on its first days (each phase's requests still happen at its start), which puts
    fitting, validation and test on one horizon."""
    if horizon_days is not None and not horizon_days > 0:
        raise ValueError(f"horizon_days must be positive; got {horizon_days}")
    if len(cuts) < 2 or list(cuts) != sorted(set(cuts)) or (not cuts[0] > 0 and cuts[-1] < 1):
        raise ValueError(f"cuts must be increasing quantiles in (0, 1), at least two; got {list(cuts)}")
    t0 = time.perf_counter()
    schema = DEFAULT_SCHEMA if item_windows else DEFAULT_SCHEMA.without(*ITEM_WINDOW_FEATURES)
    ds = load_dataset("movielens-1m" if variant == "1m" else "movielens", data_dir)
    assert ds.events is not None
    events = sorted(ds.events(), key=lambda e: e.ts)
    ts = np.array([e.ts for e in events])
    bounds = [float(x) for x in np.quantile(ts, cuts)]
    # Each judged window ends at the next cut, or `horizon_days` after its start if that comes first.
    span = math.inf if horizon_days is None else horizon_days * 86_400.0
    test = [e for e in events if bounds[-1] <= e.ts < bounds[-1] + span]
    progress(
        f"{ds.name}: {len(events):,} events; windows at quantiles {list(cuts)}; test {len(test):,} events"
    )
    rows: dict[str, tuple[list[int], np.ndarray]] = {}
    positives: dict[str, set[int]] = {}
    fit_keys: list[str] = []
    sel_keys: list[str] = []
    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="quarry-eval-ml-") as tmp:
        for w, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            before = [e for e in events if e.ts < lo]
            judged = [e for e in events if lo <= e.ts < min(hi, lo + span)]
            last = w == len(bounds) - 2
            progress(
                f"{'validation' if last else 'fitting'} window {w}: snapshot of {len(before):,} events, "
                f"{len(judged):,} judged; candidates from Recommend ..."
            )
            phase = _phase(ds, before, judged, Path(tmp) / f"w{w}", min_rating, now=lo)
            users = sorted(u for u in phase.positives if u in phase.seen)
            rnd.shuffle(users)
            if max_users:
                users = users[:max_users]
            for u, row in _candidates(phase, users, candidates, schema).items():
                rows[f"{w}:{u}"] = row
                positives[f"{w}:{u}"] = phase.positives[u]
            keys = [f"{w}:{u}" for u in users]
            if last:
                n_sel = max(1, len(keys) // 4)
                sel_keys, fit_keys = keys[:n_sel], fit_keys + keys[n_sel:]
            else:
                fit_keys += keys
            phase.service.close()
        chosen, models, selection = _fit_rankers(rows, positives, fit_keys, sel_keys, seed)
        progress(
            f"fitted on {len(fit_keys)} (window, user) queries; selection on {len(sel_keys)} users "
            f"(NDCG@10): {selection} → {chosen}"
        )

        progress("test phase: snapshot of everything before the test window, replay, candidates ...")
        before_test = [e for e in events if e.ts < bounds[-1]]
        tp = _phase(ds, before_test, test, Path(tmp) / "test", min_rating, now=bounds[-1])
        behavior = tp.collection.behavior
        assert behavior is not None
        test_users = sorted(u for u in tp.positives if behavior.user_history(u))
        if max_users:
            test_users = test_users[:max_users]
        cand = _candidates(tp, test_users, candidates, schema)
        bs = tp.collection.settings.behavior
        decay = 0.5 ** (1.0 / bs.decay_half_life)
        per: dict[str, list[tuple[float, float, float]]] = {
            k: []
            for k in (
                "popularity",
                *BASELINE_I2I,
                "recall order",
                *[f"ranker ({m})" for m in models],
            )
        }
        n_items = behavior.num_items
        for u in test_users:
            pos, seen = tp.positives[u], tp.seen.get(u, set())
            allowed = np.ones(n_items, dtype=bool)
            allowed[list(seen)] = False
            per["popularity"].append(user_metrics([o for o, _ in behavior.popular(50, allowed)], pos))
            history = behavior.user_history(u)
            # ItemCF and Swing as the behavior branch seeds them (the newest 50, decayed); EASE as it
            # is defined (every item of the user's, alike).
            decayed = [(o, decay**r) for r, o in enumerate(history[:50])]
            for method in BASELINE_I2I:
                seeds = [(o, 1.0) for o in history] if method == "ease" else decayed
                got = [o for o, _ in behavior.expand(method, seeds, 50, exclude=seen)]
                per[method].append(user_metrics(got, pos))
            ords, X = cand[u]
            per["recall order"].append(user_metrics(ords, pos))
            for m, model in models.items():
                order = _order(ords, model.predict(X)) if ords else []
                per[f"ranker ({m})"].append(user_metrics(order, pos))
        tp.service.close()
        if model_out is not None and chosen not in models:
            progress(f"no model beat the recall order on the selection users: nothing written to {model_out}")
        elif model_out is not None:
            from datetime import UTC, datetime

            version = f"{ds.name}-{chosen}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
            models[chosen].to_onnx(
                model_out,
                schema=schema,
                model_version=version,
                metrics={"selection_ndcg@10": selection},
                extra={"collection": ds.name, "split_ts": bounds},
            )
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    for i, metric in enumerate(METRICS):
        cis = paired_bootstrap({k: [m[i] for m in v] for k, v in per.items()}, seed=seed)
        for k, ci in cis.items():
            table.setdefault(k, {})[metric] = ci
    # The chosen ranker against each baseline, paired per user (the same users, the same resamples).
    versus: dict[str, dict[str, tuple[float, float, float]]] = {}
    mine = f"ranker ({chosen})"
    if mine in per:
        for i, metric in enumerate(METRICS):
            diffs = {
                other: [a[i] - b[i] for a, b in zip(per[mine], per[other], strict=True)]
                for other in ("popularity", *BASELINE_I2I, "recall order")
            }
            for other, ci in paired_bootstrap(diffs, seed=seed).items():
                versus.setdefault(other, {})[metric] = ci
    return {
        "dataset": ds.name,
        "versus": versus,
        "cuts": {"quantiles": list(cuts), "timestamps": bounds},
        "horizon_days": horizon_days,
        "events": {"total": len(events), "test": len(test)},
        "selection": {
            "users": len(sel_keys),
            "fit_queries": len(fit_keys),
            "ndcg@10": selection,
            "chosen": chosen,
        },
        "features": list(schema.names),
        "test_users": len(test_users),
        "candidates": candidates,
        "table": table,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def format_movielens(report: Mapping[str, Any]) -> str:
    horizon = report.get("horizon_days")
    judged = "each window whole" if horizon is None else f"the first {horizon:g} days of each window"
    lines = [
        f"{report['dataset']}: {report['test_users']} test users (with a history and a test positive); "
        f"candidates ≤ {report['candidates']} from Recommend; ranker chosen by selection NDCG@10: "
        f"{report['selection']['chosen']} ({report['selection']['ndcg@10']})",
        f"judged: {judged}; rankers read the items' real-time windows: "
        f"{'yes' if 'item_events_7d' in report['features'] else 'no'}",
        f"{'method':<16}" + "".join(f"{m:>26}" for m in METRICS),
    ]
    for name, row in report["table"].items():
        cells = "".join(f"{row[m][0]:>10.4f} [{row[m][1]:.4f}, {row[m][2]:.4f}]" for m in METRICS)
        lines.append(f"{name:<16}{cells}")
    if report.get("versus"):
        lines.append(f"ranker ({report['selection']['chosen']}) minus each baseline, paired per user:")
        for name, row in report["versus"].items():
            cells = "".join(f"{row[m][0]:>+10.4f} [{row[m][1]:+.4f}, {row[m][2]:+.4f}]" for m in METRICS)
            lines.append(f"  vs {name:<13}{cells}")
    lines.append(f"(bootstrap 95% CIs over users; {report['seconds']} s)")
    return "\n".join(lines)
