"""Gradient-boosted trees for ranking (LightGBM LambdaMART), exported to ONNX by our own converter.

Training needs `lightgbm` (the `train` extra); serving never does: the trees become one ONNX-ML
`TreeEnsembleRegressor` node and a Sigmoid, so onnxruntime scores them exactly like the
MLP (same input/output names, same sidecar, same schema checks). The converter reads LightGBM's own
JSON dump (one TreeEnsembleRegressor, then a Sigmoid); each threshold is rounded *down* to the nearest float32, so `x <= t` decides every float32
input exactly as LightGBM's double comparison does (features are float32 by the schema).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ranker.model import INPUT_NAME, OUTPUT_NAME, finish_model, write_model
from ranker.schema import FeatureSchema

ML_OPSET = 3


class TrainingDependencyMissing(RuntimeError):
    pass


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as exc:
        raise TrainingDependencyMissing(
            "training a gbdt ranker needs lightgbm: pip install 'lightgbm>=4.5' (the `train` extra)"
        ) from exc
    return lightgbm


@dataclass
class GBDTRanker:
    """LambdaMART (or binary logistic) boosted trees over the ranker's feature vectors."""

    objective: str = "lambdarank"
    n_estimators: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 50
    feature_fraction: float = 0.9
    l2: float = 1.0
    early_stopping_rounds: int = 50
    seed: int = 0
    #: Bagging: this many boosters, each on its own random `bag_fraction` of the queries (and its own
    #: seed), their raw scores averaged. Few training queries make one booster's ranking vary from seed
    #: to seed; the average varies less. 1: one booster on every query.
    bags: int = 1
    bag_fraction: float = 0.8
    booster_: Any = field(default=None, repr=False)
    boosters_: list[Any] = field(default_factory=list, repr=False)
    dim_: int = 0

    def __post_init__(self) -> None:
        if self.bags < 1:
            raise ValueError(f"bags must be ≥ 1; got {self.bags}")
        if not 0.0 < self.bag_fraction <= 1.0:
            raise ValueError(f"bag_fraction must be in (0, 1]; got {self.bag_fraction}")

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        groups: Sequence[int],
        *,
        valid: tuple[np.ndarray, np.ndarray, Sequence[int]] | None = None,
    ) -> dict[str, float]:
        """`groups`: rows per query (user), in order. With `valid`, early stopping on its NDCG@10 (each
        bag's booster on the same validation queries)."""
        if self.bags == 1:
            self.boosters_ = [self._fit_one(X, y, groups, valid, self.seed)]
        else:
            starts = np.concatenate([[0], np.cumsum(groups)]).astype(np.int64)
            self.boosters_ = []
            for b in range(self.bags):
                seed = self.seed * 1000 + b
                rng = np.random.default_rng(seed)
                keep = np.flatnonzero(rng.random(len(groups)) < self.bag_fraction)
                if not len(keep):  # a handful of queries: every bag still learns from one
                    keep = rng.integers(len(groups), size=1)
                rows = np.concatenate([np.arange(starts[q], starts[q + 1]) for q in keep])
                part = [groups[int(q)] for q in keep]
                self.boosters_.append(self._fit_one(X[rows], y[rows], part, valid, seed))
        self.booster_ = self.boosters_[0]
        self.dim_ = X.shape[1]
        out = {
            "trees": float(sum(self._iterations(b) for b in self.boosters_)),
            "best_iteration": float(self.booster_.best_iteration),
            "bags": float(self.bags),
        }
        if valid is not None and self.booster_.best_score:
            for name, value in next(iter(self.booster_.best_score.values())).items():
                out[f"valid_{name}"] = float(value)
        return out

    def _fit_one(
        self,
        X: np.ndarray,
        y: np.ndarray,
        groups: Sequence[int],
        valid: tuple[np.ndarray, np.ndarray, Sequence[int]] | None,
        seed: int,
    ) -> Any:
        lgb = _lightgbm()
        params = {
            "objective": self.objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.l2,
            "seed": seed,
            "deterministic": True,
            "num_threads": os.cpu_count() or 1,
            "verbosity": -1,
            "metric": "ndcg" if self.objective == "lambdarank" else "auc",
            "eval_at": [10],
        }
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        train = lgb.Dataset(X32, label=y, group=list(groups) if self.objective == "lambdarank" else None)
        sets, callbacks = [], []
        if valid is not None:
            Xv, yv, gv = valid
            sets.append(
                lgb.Dataset(
                    np.ascontiguousarray(Xv, dtype=np.float32),
                    label=yv,
                    group=list(gv) if self.objective == "lambdarank" else None,
                    reference=train,
                )
            )
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        return lgb.train(
            params, train, num_boost_round=self.n_estimators, valid_sets=sets, callbacks=callbacks
        )

    @property
    def dim(self) -> int:
        return self.dim_

    @staticmethod
    def _iterations(booster: Any) -> int:
        best = int(booster.best_iteration or 0)
        return best if best > 0 else int(booster.num_trees())

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Logistic of the bags' averaged raw boosted score (what the ONNX graph outputs), float32."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        raw = np.mean(
            [np.asarray(b.predict(X32, num_iteration=self._iterations(b))) for b in self.boosters_], axis=0
        )
        return (1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=np.float64)))).astype(np.float32)

    def to_onnx_model(self, *, schema: FeatureSchema, model_version: str) -> onnx.ModelProto:
        if self.booster_ is None:
            raise ValueError("fit the model first")
        if schema.dim != self.dim:
            raise ValueError(f"schema has {schema.dim} features but the model was trained on {self.dim}")
        trees = [
            t for b in self.boosters_ for t in b.dump_model(num_iteration=self._iterations(b))["tree_info"]
        ]
        # One ensemble summing every bag's trees, each leaf weighted 1/bags: the average of raw scores.
        node = _tree_ensemble(trees, n_features=self.dim, scale=1.0 / len(self.boosters_))
        graph = helper.make_graph(
            [
                node,
                helper.make_node("Sigmoid", ["raw"], ["prob"]),
                helper.make_node("Reshape", ["prob", "flat_shape"], [OUTPUT_NAME]),
            ],
            "quarry_gbdt_ranker",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", self.dim])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])],
            initializer=[helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1])],
        )
        return finish_model(
            graph, schema=schema, model_version=model_version, extra_opsets=[("ai.onnx.ml", ML_OPSET)]
        )

    def to_onnx(
        self,
        path: str | os.PathLike[str],
        *,
        schema: FeatureSchema,
        model_version: str,
        metrics: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        model = self.to_onnx_model(schema=schema, model_version=model_version)
        info = {
            "kind": f"gbdt-{self.objective}",
            "trees": sum(self._iterations(b) for b in self.boosters_),
            "bags": len(self.boosters_),
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            **(extra or {}),
        }
        return write_model(
            path, model, schema=schema, model_version=model_version, metrics=metrics, extra=info
        )


def _float32_floor(t: float) -> float:
    """The largest float32 ≤ t, so float32 x ≤ result ⇔ x ≤ t for every float32 x."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _tree_ensemble(trees: list[dict[str, Any]], *, n_features: int, scale: float = 1.0) -> onnx.NodeProto:
    attrs: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for tree_id, info in enumerate(trees):
        next_id = 0

        def visit(n: dict[str, Any], tree_id: int = tree_id) -> int:
            nonlocal next_id
            me = next_id
            next_id += 1
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(me)
            if "leaf_value" in n:  # a leaf (a single-leaf tree has no split at all)
                for k, v in (("nodes_featureids", 0), ("nodes_values", 0.0), ("nodes_modes", "LEAF")):
                    attrs[k].append(v)
                attrs["nodes_truenodeids"].append(0)
                attrs["nodes_falsenodeids"].append(0)
                attrs["nodes_missing_value_tracks_true"].append(0)
                for k, v in (("target_treeids", tree_id), ("target_nodeids", me), ("target_ids", 0)):
                    attrs[k].append(v)
                attrs["target_weights"].append(float(n["leaf_value"]) * scale)
                return me
            if n.get("decision_type", "<=") != "<=":
                raise ValueError(f"unsupported LightGBM split {n.get('decision_type')!r} (categorical?)")
            feature = int(n["split_feature"])
            if not 0 <= feature < n_features:
                raise ValueError(f"split on feature {feature}, but the model has {n_features}")
            slot = len(attrs["nodes_modes"])
            attrs["nodes_featureids"].append(feature)
            attrs["nodes_values"].append(_float32_floor(float(n["threshold"])))
            attrs["nodes_modes"].append("BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(-1)
            attrs["nodes_falsenodeids"].append(-1)
            attrs["nodes_missing_value_tracks_true"].append(1 if n.get("default_left", True) else 0)
            left = visit(n["left_child"])
            right = visit(n["right_child"])
            attrs["nodes_truenodeids"][slot] = left
            attrs["nodes_falsenodeids"][slot] = right
            return me

        visit(info["tree_structure"])
    # The ONNX attributes as make_node's **kwargs (none of the names is one of its own parameters).
    node_attrs: dict[str, Any] = attrs
    return helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT_NAME],
        ["raw"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        # onnxruntime's regressor does not apply LOGISTIC itself: a Sigmoid node follows instead.
        post_transform="NONE",
        base_values=[0.0],
        **node_attrs,
    )
