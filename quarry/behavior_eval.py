"""`quarry eval behavior`: temporal hold-out evaluation of the item-to-item tables (ItemCF, Swing) and
popularity, on MovieLens-100K or any event log."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.catalog import Event
from common.index.behavior import BehaviorIndex
from indexer.behavior import BehaviorParams, build_behavior

#: History items expanded per user by default (the snapshot keeps more: `BehaviorParams.history_len`).
DEFAULT_SEEDS = 50


def evaluate_behavior(
    events: Iterable[Event],
    ord_of: Mapping[str, int],
    *,
    split_ts: float | None = None,
    fraction: float = 0.8,
    k: int = 50,
    params: BehaviorParams | None = None,
    seeds: int | None = None,
    seed_decay: float = 1.0,
) -> dict[str, Any]:
    """Temporal hold-out evaluation of the i2i methods (ItemCF, Swing, EASE) and popularity recall.

    Events before the cut (default: the `fraction` quantile of all timestamps) build the tables; each user
    with a training history and at least one positive test item not seen in training is a query: the last
    `seeds` (default DEFAULT_SEEDS) training positives, weighted seed_decay**rank (newest rank 0), are
    expanded, excluding every item the user interacted with in training. Recall@k is the user's share of
    test positives retrieved, averaged over users; HitRate@k the share of users with at least one.
    """
    params = params or BehaviorParams()
    evs = list(events)
    ts = np.fromiter((e.ts for e in evs), dtype=np.float64, count=len(evs))
    if split_ts is None:
        if not 0.0 < fraction < 1.0:
            raise ValueError("fraction must be in (0, 1)")
        split_ts = float(np.quantile(ts, fraction))
    train = [e for e in evs if e.ts < split_ts]
    test = [e for e in evs if e.ts >= split_ts]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quarry-behavior-eval-") as tmp:
        directory = Path(tmp) / "behavior"
        meta = build_behavior(train, ord_of, directory, params=params)
        build_s = time.perf_counter() - t0
        index = BehaviorIndex.load(directory, meta)
        seen: dict[str, set[int]] = {}
        for e in train:
            o = ord_of.get(e.item)
            if o is not None:
                seen.setdefault(e.user, set()).add(o)
        targets: dict[str, set[int]] = {}
        for e in test:
            o = ord_of.get(e.item)
            w = params.type_weights.get(e.type, 1.0) * e.weight
            if o is not None and w > 0 and w >= params.min_weight and o not in seen.get(e.user, ()):
                targets.setdefault(e.user, set()).add(o)
        methods = ["popularity", *params.methods]
        hits = {m: 0 for m in methods}
        recall = {m: 0.0 for m in methods}
        returned = {m: 0 for m in methods}
        n_seeds = seeds or DEFAULT_SEEDS
        expand_s = 0.0
        users = positives = 0
        for user in sorted(targets):
            history = index.user_history(user)
            if not history:
                continue
            users += 1
            truth = targets[user]
            positives += len(truth)
            excluded = seen[user]
            allowed = np.ones(index.num_items, dtype=bool)
            allowed[list(excluded)] = False
            recs: dict[str, list[tuple[int, float]]] = {"popularity": index.popular(k, allowed)}
            weighted = [(o, seed_decay**r) for r, o in enumerate(history[:n_seeds])]
            for method in params.methods:
                t1 = time.perf_counter()
                recs[method] = index.expand(method, weighted, k, exclude=excluded)
                expand_s += time.perf_counter() - t1
            for method, rec in recs.items():
                got = len(truth.intersection(o for o, _ in rec))
                recall[method] += got / len(truth)
                hits[method] += got > 0
                returned[method] += len(rec)
        del index
    denom = max(users, 1)
    return {
        "split_ts": split_ts,
        "split_utc": datetime.fromtimestamp(split_ts, UTC).isoformat(),
        "train_events": len(train),
        "test_events": len(test),
        "users": users,
        "test_positives": positives,
        "k": k,
        "seeds": n_seeds,
        "seed_decay": seed_decay,
        "build_seconds": round(build_s, 2),
        "expand_ms_mean": round(1000 * expand_s / max(users * len(params.methods), 1), 3),
        "build": meta,
        "methods": {
            m: {
                f"recall@{k}": recall[m] / denom,
                f"hit_rate@{k}": hits[m] / denom,
                "avg_returned": returned[m] / denom,
            }
            for m in methods
        },
    }


def format_eval(result: Mapping[str, Any]) -> str:
    k = result["k"]
    lines = [
        f"temporal split at ts={result['split_ts']:.0f} ({result['split_utc']}): "
        f"{result['train_events']} train / {result['test_events']} test events; "
        f"{result['users']} test users with {result['test_positives']} unseen positives; seeds={result['seeds']} decay={result['seed_decay']}",
        f"build {result['build_seconds']:.2f}s, expand {result['expand_ms_mean']:.3f} ms/query",
        f"{'method':<12}{f'Recall@{k}':>12}{f'HitRate@{k}':>13}{'avg returned':>14}",
    ]
    for method, row in result["methods"].items():
        lines.append(
            f"{method:<12}{row[f'recall@{k}']:>12.4f}{row[f'hit_rate@{k}']:>13.4f}{row['avg_returned']:>14.1f}"
        )
    return "\n".join(lines)
