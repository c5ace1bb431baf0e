"""A small MLP ranker trained with plain numpy and exported to ONNX with `onnx.helper`.

torch is not a dependency (it cannot be installed in CI), and a two-hidden-layer MLP over ~20 dense
features does not need it: forward/backward are a handful of matmuls. Training runs in float64 (so the
gradient check is meaningful and Adam is not fighting rounding); the exported graph and `predict` run
in float32, the same arithmetic onnxruntime does, so parity can be asserted at 1e-5.

The standardisation (mean/std of the training features) is baked into the graph as Sub/Div, so the
server feeds the raw `FeatureSchema.vectorize` output and cannot forget or mis-version the scaler.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common.fsutil import atomic_write
from common.index.ranker_part import sidecar_path
from ranker.schema import FeatureSchema

OPSET = 17
# IR 8 is what opset 17 shipped with; pinning it keeps the file loadable by older onnxruntime builds
# (onnx 1.23 would otherwise stamp a newer IR version than some runtimes accept).
IR_VERSION = 8
INPUT_NAME = "features"
OUTPUT_NAME = "score"


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with tie-averaged ranks; NaN when only one class is present."""
    y = np.asarray(y).ravel().astype(bool)
    s = np.asarray(s, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _logloss_from_logits(z: np.ndarray, y: np.ndarray) -> float:
    # softplus(z) - y*z == -[y log p + (1-y) log(1-p)], computed without log(0).
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


Params = list[tuple[np.ndarray, np.ndarray]]


def forward_logits(params: Params, Xs: np.ndarray) -> np.ndarray:
    """Logits for already-standardised inputs; dtype follows the params/inputs."""
    h = Xs
    for W, b in params[:-1]:
        h = np.maximum(h @ W + b, 0.0)
    W, b = params[-1]
    return (h @ W + b)[:, 0]


def loss_and_grads(params: Params, Xs: np.ndarray, y: np.ndarray, l2: float = 0.0) -> tuple[float, Params]:
    """Mean logistic loss (+ l2/2 * sum W^2) and its gradients, by hand-written backprop."""
    acts = [Xs]
    pre: list[np.ndarray] = []
    h = Xs
    for W, b in params[:-1]:
        a = h @ W + b
        pre.append(a)
        h = np.maximum(a, 0.0)
        acts.append(h)
    W_out, b_out = params[-1]
    z = (h @ W_out + b_out)[:, 0]
    n = Xs.shape[0]
    loss = _logloss_from_logits(z, y) + 0.5 * l2 * sum(float(np.sum(W * W)) for W, _ in params)

    grads: Params = [(np.empty(0), np.empty(0))] * len(params)
    delta = ((_sigmoid(z) - y) / n)[:, None]
    for k in range(len(params) - 1, -1, -1):
        W, _ = params[k]
        gW = acts[k].T @ delta + l2 * W
        gb = delta.sum(axis=0)
        grads[k] = (gW, gb)
        if k > 0:
            delta = (delta @ W.T) * (pre[k - 1] > 0)
    return loss, grads


@dataclass
class MLPRanker:
    hidden: tuple[int, ...] = (32, 16)
    learning_rate: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    l2: float = 1e-5
    val_fraction: float = 0.1
    seed: int = 0
    mean_: np.ndarray | None = field(default=None, repr=False)
    std_: np.ndarray | None = field(default=None, repr=False)
    params_: Params | None = field(default=None, repr=False)

    # ---- training -------------------------------------------------------------------------------
    def _init_params(self, dim: int, rng: np.random.Generator) -> Params:
        sizes = [dim, *self.hidden, 1]
        params: Params = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            # He init: the hidden layers are ReLU.
            W = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
            params.append((W, np.zeros(fan_out)))
        return params

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Train with Adam on mini-batches; stop when validation logloss has not improved for `patience`."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X must be (n, dim) matching y; got {X.shape} and {y.shape}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0/1")
        rng = np.random.default_rng(self.seed)
        if X_val is None or y_val is None:
            perm = rng.permutation(X.shape[0])
            n_val = max(1, round(self.val_fraction * X.shape[0]))
            val_idx, tr_idx = perm[:n_val], perm[n_val:]
            X_tr, y_tr = X[tr_idx], y[tr_idx]
            X_v, y_v = X[val_idx], y[val_idx]
        else:
            X_tr, y_tr = X, y
            X_v = np.asarray(X_val, dtype=np.float64)
            y_v = np.asarray(y_val, dtype=np.float64).ravel()

        mean = X_tr.mean(axis=0)
        std = X_tr.std(axis=0)
        # A constant feature would divide by zero; 1 leaves it centred at 0.
        std = np.where(std > 1e-12, std, 1.0)
        self.mean_, self.std_ = mean.astype(np.float32), std.astype(np.float32)
        # Standardise with the float32-rounded scaler so training sees what serving computes.
        Xs_tr = (X_tr - self.mean_) / self.std_
        Xs_v = (X_v - self.mean_) / self.std_

        params = self._init_params(X.shape[1], rng)
        m = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
        v = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        step = 0
        best_loss = np.inf
        best_params = [(W.copy(), b.copy()) for W, b in params]
        best_epoch = 0
        epoch = 0
        train_loss = float("nan")
        n = Xs_tr.shape[0]
        for epoch in range(1, self.max_epochs + 1):
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                loss, grads = loss_and_grads(params, Xs_tr[idx], y_tr[idx], self.l2)
                total += loss * idx.size
                step += 1
                for k, ((W, b), (gW, gb)) in enumerate(zip(params, grads, strict=True)):
                    mW = beta1 * m[k][0] + (1 - beta1) * gW
                    mb = beta1 * m[k][1] + (1 - beta1) * gb
                    vW = beta2 * v[k][0] + (1 - beta2) * gW * gW
                    vb = beta2 * v[k][1] + (1 - beta2) * gb * gb
                    m[k], v[k] = (mW, mb), (vW, vb)
                    c1, c2 = 1 - beta1**step, 1 - beta2**step
                    W = W - self.learning_rate * (mW / c1) / (np.sqrt(vW / c2) + eps)
                    b = b - self.learning_rate * (mb / c1) / (np.sqrt(vb / c2) + eps)
                    params[k] = (W, b)
            train_loss = total / n
            val_loss = _logloss_from_logits(forward_logits(params, Xs_v), y_v)
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch = val_loss, epoch
                best_params = [(W.copy(), b.copy()) for W, b in params]
            elif epoch - best_epoch >= self.patience:
                break

        self.params_ = best_params
        val_scores = self.predict(X_v)
        train_scores = self.predict(X_tr)
        return {
            "train_loss": float(train_loss),
            "val_loss": float(best_loss),
            "train_auc": roc_auc(y_tr, train_scores),
            "val_auc": roc_auc(y_v, val_scores),
            "epochs": float(epoch),
            "best_epoch": float(best_epoch),
            "n_train": float(X_tr.shape[0]),
            "n_val": float(X_v.shape[0]),
        }

    # ---- inference ------------------------------------------------------------------------------
    def _params32(self) -> Params:
        if self.params_ is None or self.mean_ is None or self.std_ is None:
            raise RuntimeError("model is not fitted")
        return [(W.astype(np.float32), b.astype(np.float32)) for W, b in self.params_]

    @property
    def dim(self) -> int:
        if self.mean_ is None:
            raise RuntimeError("model is not fitted")
        return int(self.mean_.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float32 scores in (0, 1), computed as the ONNX graph does (for parity checks)."""
        params = self._params32()
        assert self.mean_ is not None and self.std_ is not None
        Xs = (np.asarray(X, dtype=np.float32) - self.mean_) / self.std_
        z = forward_logits(params, Xs).astype(np.float32)
        return _sigmoid(z).astype(np.float32)

    # ---- export ---------------------------------------------------------------------------------
    def to_onnx_model(self, *, schema: FeatureSchema, model_version: str) -> onnx.ModelProto:
        params = self._params32()
        assert self.mean_ is not None and self.std_ is not None
        if schema.dim != self.dim:
            raise ValueError(f"schema has {schema.dim} features but the model was trained on {self.dim}")
        inits = [
            numpy_helper.from_array(self.mean_.astype(np.float32), "mean"),
            numpy_helper.from_array(self.std_.astype(np.float32), "std"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat_shape"),
        ]
        nodes = [
            helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["h0"]),
        ]
        cur = "h0"
        for k, (W, b) in enumerate(params):
            inits += [numpy_helper.from_array(W, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
            nodes += [
                helper.make_node("MatMul", [cur, f"W{k}"], [f"mm{k}"]),
                helper.make_node("Add", [f"mm{k}", f"b{k}"], [f"a{k}"]),
            ]
            if k < len(params) - 1:
                nodes.append(helper.make_node("Relu", [f"a{k}"], [f"h{k + 1}"]))
                cur = f"h{k + 1}"
            else:
                nodes.append(helper.make_node("Sigmoid", [f"a{k}"], ["prob"]))
        nodes.append(helper.make_node("Reshape", ["prob", "flat_shape"], [OUTPUT_NAME]))
        graph = helper.make_graph(
            nodes,
            "quarry_mlp_ranker",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", self.dim])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])],
            initializer=inits,
        )
        return finish_model(graph, schema=schema, model_version=model_version)

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
        info = {"kind": "mlp", "hidden": list(self.hidden), **(extra or {})}
        return write_model(
            path, model, schema=schema, model_version=model_version, metrics=metrics, extra=info
        )


def finish_model(
    graph: onnx.GraphProto,
    *,
    schema: FeatureSchema,
    model_version: str,
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> onnx.ModelProto:
    """Every Quarry ranker graph as a checked model: our opset and IR version pinned, and the metadata
    the loader verifies (version, schema and its fingerprint, feature names)."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), *(helper.make_opsetid(d, v) for d, v in extra_opsets)],
        producer_name="quarry.ranker",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "model_version": model_version,
            "schema_version": schema.version,
            "schema_fingerprint": schema.fingerprint(),
            "feature_names": json.dumps(list(schema.names)),
            "schema": schema.to_json(),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(
    path: str | os.PathLike[str],
    model: onnx.ModelProto,
    *,
    schema: FeatureSchema,
    model_version: str,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `path` and its `.json` sidecar, each atomically (temp file + rename).

    The .onnx is renamed into place before the sidecar, so a reader racing the export sees either
    the old pair or a new .onnx whose sha256 does not match the old sidecar -- which the loader
    refuses, keeping its previous model -- never a silently mismatched pair.
    """
    path = Path(path)
    data = model.SerializeToString()
    sidecar = {
        "model_version": model_version,
        "schema_version": schema.version,
        "schema_fingerprint": schema.fingerprint(),
        "feature_names": list(schema.names),
        # The model's own schema: the server vectorises with it, after checking it computes every
        # feature the model reads, defined the same way (ranker.session).
        "schema": schema.to_dict(),
        "metrics": metrics,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    atomic_write(sidecar_path(path), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    return path


def train_synthetic(
    schema: FeatureSchema,
    *,
    n: int = 20_000,
    seed: int = 0,
    hidden: Sequence[int] = (32, 16),
    max_epochs: int = 30,
    like: np.ndarray | None = None,
) -> tuple[MLPRanker, dict[str, float], np.ndarray, np.ndarray]:
    """A model on synthetic (not real) data: random features, labels from a fixed random nonlinear rule.

    For tests and benchmarks, which need a realistically shaped trained model, not a useful one. `like`:
    real model inputs (rows × schema.dim) whose per-feature mean and spread the synthetic ones take, so
    the model sees its inputs' range when it serves them (trained on N(0, 1), an MLP fed raw counts and
    ratings answers saturated, float32-quantised scores, where tiny input differences swap hits).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, schema.dim)).astype(np.float32)
    if like is not None:
        X = (X * (like.std(axis=0) + 0.1) + like.mean(axis=0)).astype(np.float32)
    w = rng.normal(size=schema.dim)
    if like is None:
        logits = X @ w + 0.5 * np.sin(3 * X[:, 0]) * X[:, 1 % schema.dim]
    else:  # a gentler rule (logits ~ N(0, 1.5²)), so the fitted model's scores stay off 0 and 1
        Z = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-9)
        logits = 1.5 * (Z @ w) / np.sqrt(schema.dim) + 0.5 * np.sin(3 * Z[:, 0]) * Z[:, 1 % schema.dim]
    y = (logits + rng.normal(scale=0.5, size=n) > 0).astype(np.float64)
    model = MLPRanker(hidden=tuple(hidden), max_epochs=max_epochs, seed=seed)
    metrics = model.fit(X, y)
    return model, metrics, X, y
