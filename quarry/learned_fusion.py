"""Fitting learned fusion offline: L2-regularised logistic regression in NumPy, query-grouped K-fold CV.

The rows come from `retriever.core.fusion.learned_features` (the function the server scores with), one
block per query: every candidate any branch found, its features, its judgment grade. Two losses:
- pointwise: P(relevant | x) per candidate;
- pairwise: P(x_i above x_j) for each (relevant i, non-relevant j) of a query, each query weighted equally
  (RankNet's loss with a linear scorer), which optimises order inside a query rather than calibration.
Which loss, which feature subset and how much L2 are chosen by an inner CV on the training folds only, so
an outer held-out fold never influences the model that scores it. No dependency beyond NumPy: the model
has a handful of weights, and Newton's method with a line search fits it in a few iterations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from common.types import LEARNED_FEATURES, Candidate, LearnedFeature
from retriever.core.fusion import learned_features

Loss = Literal["pointwise", "pairwise"]

#: Feature subsets the inner CV chooses from (each for every branch); "found" is the offset for being
#: found at all, which every subset needs.
FEATURE_SETS: dict[str, tuple[LearnedFeature, ...]] = {
    "all": LEARNED_FEATURES,
    "scores": ("minmax", "zscore", "found"),
    "minmax": ("minmax", "found"),
    "ranks": ("rrf", "found"),
}
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
LOSSES: tuple[Loss, ...] = ("pointwise", "pairwise")


@dataclass(frozen=True, slots=True)
class Config:
    loss: Loss
    features: str  # a FEATURE_SETS key
    l2: float


GRID = tuple(Config(loss, fs, l2) for loss in LOSSES for fs in FEATURE_SETS for l2 in L2_GRID)


@dataclass(frozen=True, slots=True)
class QueryRows:
    """One query's candidates (learned_features order) with every feature of every branch."""

    qid: str
    ordinals: tuple[int, ...]
    X: np.ndarray  # (candidates, len(names)) for `feature_names(branches)`
    gains: np.ndarray  # judgment grade per candidate (0 = not judged relevant)
    idcg: float  # ideal DCG@k over ALL the query's judgments, found or not


@dataclass(frozen=True, slots=True)
class Fitted:
    """A fitted linear model in raw feature units, as LearnedFusion stores it."""

    weights: dict[str, float]
    intercept: float
    config: Config


def feature_names(branches: Sequence[str], features: Sequence[str] = LEARNED_FEATURES) -> list[str]:
    return [f"{b}.{f}" for b in branches for f in features]


def _dcg(gains: np.ndarray) -> float:
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def query_rows(
    qid: str,
    ranked: Mapping[str, Sequence[Candidate]],
    grade_of: Mapping[int, int],
    branches: Sequence[str],
    *,
    all_grades: Sequence[int],
    k: int,
    rrf_k: float = 60.0,
) -> QueryRows:
    """`grade_of`: judgment grade by ordinal; `all_grades`: every grade the query has (its ideal DCG)."""
    merged, X = learned_features(ranked, feature_names(branches), rrf_k=rrf_k)
    gains = np.array([grade_of.get(f.ordinal, 0) for f in merged], dtype=np.float64)
    ideal = np.array(sorted((g for g in all_grades if g > 0), reverse=True)[:k], dtype=np.float64)
    return QueryRows(qid, tuple(f.ordinal for f in merged), X, gains, _dcg(ideal))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def fit_logistic(
    A: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray,
    l2: float,
    *,
    penalised: np.ndarray,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> np.ndarray:
    """argmin_θ Σ s_i·logloss(y_i, A_i·θ) / Σ s + l2/2·Σ_penalised θ² by Newton's method with backtracking
    (the objective is convex; the line search keeps near-separable data from overshooting)."""
    s = sample_weight / sample_weight.sum()
    reg = np.where(penalised, l2, 0.0)
    sign = 2.0 * y - 1.0

    def objective(theta: np.ndarray) -> float:
        return float(s @ np.logaddexp(0.0, -sign * (A @ theta)) + 0.5 * reg @ (theta * theta))

    theta = np.zeros(A.shape[1])
    f = objective(theta)
    for _ in range(max_iter):
        p = _sigmoid(A @ theta)
        grad = A.T @ (s * (p - y)) + reg * theta
        hess = (A * (s * p * (1.0 - p))[:, None]).T @ A + np.diag(reg + 1e-10)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            candidate = theta - t * step
            f_new = objective(candidate)
            if f_new <= f:
                break
            t *= 0.5
        else:
            break
        theta, f_old, f = candidate, f, f_new
        if f_old - f < tol:
            break
    return theta


def _columns(names: Sequence[str], features: Sequence[str]) -> list[int]:
    return [j for j, n in enumerate(names) if n.rpartition(".")[2] in features]


def fit(rows: Sequence[QueryRows], names: Sequence[str], config: Config) -> Fitted:
    """Fit `config` on `rows`; features are standardised for the fit (so one L2 suits features of any
    scale, e.g. rrf's ~0.01) and the weights mapped back to raw units."""
    cols = _columns(names, FEATURE_SETS[config.features])
    X = np.concatenate([r.X[:, cols] for r in rows])
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    if config.loss == "pointwise":
        y = (np.concatenate([r.gains for r in rows]) > 0).astype(np.float64)
        A = np.hstack([Z, np.ones((len(Z), 1))])
        penalised = np.r_[np.ones(len(cols), dtype=bool), False]
        theta = fit_logistic(A, y, np.ones(len(y)), config.l2, penalised=penalised)
        w, b = theta[:-1], float(theta[-1])
    else:
        diffs, weights, start = [], [], 0
        for r in rows:
            z = Z[start : start + len(r.gains)]
            start += len(r.gains)
            pos, neg = np.flatnonzero(r.gains > 0), np.flatnonzero(r.gains <= 0)
            if len(pos) == 0 or len(neg) == 0:
                continue
            d = (z[pos][:, None, :] - z[neg][None, :, :]).reshape(-1, len(cols))
            diffs.append(d)
            weights.append(np.full(len(d), 1.0 / len(d)))
        if not diffs:
            raise ValueError("no query has both a relevant and a non-relevant candidate to order")
        # Each pair appears both ways round, so the fit is symmetric and needs no intercept.
        D = np.concatenate(diffs)
        A = np.concatenate([D, -D])
        y = np.r_[np.ones(len(D)), np.zeros(len(D))]
        sw = np.concatenate(weights * 2)
        w = fit_logistic(A, y, sw, config.l2, penalised=np.ones(len(cols), dtype=bool))
        b = 0.0
    raw = w / sd
    return Fitted(
        {names[j]: float(v) for j, v in zip(cols, raw, strict=True)},
        b - float(raw @ mu),
        config,
    )


def ndcg_of(rows: Sequence[QueryRows], names: Sequence[str], model: Fitted, k: int) -> np.ndarray:
    """nDCG@k per query of `model`'s order (the fast path for model selection; ties keep first-seen order,
    where serving breaks them by best rank — immaterial for choosing among configurations)."""
    index = {n: j for j, n in enumerate(names)}
    cols = [index[n] for n in model.weights]
    w = np.fromiter(model.weights.values(), dtype=np.float64, count=len(cols))
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        order = np.argsort(-(r.X[:, cols] @ w), kind="stable")[:k]
        out[i] = _dcg(r.gains[order]) / r.idcg if r.idcg > 0 else 0.0
    return out


def kfold(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of `n` queries split into `folds` groups after a seeded shuffle (folds are by query)."""
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 <= folds <= {n} queries, got {folds}")
    return [np.sort(f) for f in np.array_split(np.random.default_rng(seed).permutation(n), folds)]


def select(
    rows: Sequence[QueryRows], names: Sequence[str], *, folds: int, seed: int, k: int
) -> tuple[Config, float]:
    """The GRID configuration with the best mean nDCG@k over a K-fold CV inside `rows` alone."""
    splits = kfold(len(rows), folds, seed)
    scores = {c: 0.0 for c in GRID}
    for held in splits:
        held_set = set(held.tolist())
        train = [r for i, r in enumerate(rows) if i not in held_set]
        test = [rows[i] for i in held]
        for c in GRID:
            scores[c] += float(ndcg_of(test, names, fit(train, names, c), k).sum())
    best = max(GRID, key=lambda c: (scores[c], -GRID.index(c)))  # ties: the earlier (simpler) config
    return best, scores[best] / len(rows)


def train(rows: Sequence[QueryRows], names: Sequence[str], *, inner_folds: int, seed: int, k: int) -> Fitted:
    """Choose a configuration by CV inside `rows`, then fit it on all of `rows`."""
    config, _ = select(rows, names, folds=inner_folds, seed=seed, k=k)
    return fit(rows, names, config)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling queries."""
    from quarry.stats import paired_bootstrap

    _mean, lo, hi = paired_bootstrap({"v": values}, resamples=resamples, seed=seed, level=level)["v"]
    return lo, hi


def toml_snippet(
    collection: str,
    branches: Sequence[str],
    model: Fitted,
    *,
    rrf_k: float,
    version: str,
    comments: Sequence[str] = (),
) -> str:
    """The `[collections.<name>.fusion]` section that serves `model` (parsed back by a test)."""

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def num(x: float) -> str:
        if not math.isfinite(x):
            raise ValueError(f"cannot write a non-finite weight {x}")
        return repr(float(x))

    lines = [f"# {c}" for c in comments]
    lines += [
        f"[collections.{collection}.fusion]",
        'strategy = "learned"',
        "",
        f"[collections.{collection}.fusion.learned]",
        f"branches = [{', '.join(q(b) for b in branches)}]",
        f"intercept = {num(model.intercept)}",
        f"rrf_k = {num(rrf_k)}",
        f"version = {q(version)}",
        "",
        f"[collections.{collection}.fusion.learned.weights]",
        *(f"{q(n)} = {num(w)}" for n, w in model.weights.items()),
    ]
    return "\n".join(lines) + "\n"
