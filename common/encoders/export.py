"""Torch-free export of a sentence-transformers BERT model (all-MiniLM-L6-v2) to ONNX.

Why this exists: serving must not depend on torch (GBs of wheels, slow import), yet the model is only
published as PyTorch weights. ``torch.onnx.export`` would make torch a build-time dependency of every
machine that needs the ONNX file. Instead this module reads ``model.safetensors`` with numpy and writes
the BERT encoder graph op by op with ``onnx.helper``. The graph is small and fixed (embeddings, N
post-LN transformer layers, mean pooling, L2 normalisation), so spelling it out is cheaper than carrying
torch, and it makes the exported file byte-for-byte reproducible from the weights.

Pooling and normalisation live INSIDE the graph so that the ONNX session returns final embeddings: the
serving path is tokenize -> one ``session.run`` -> done, with no numpy post-processing to get wrong.

Only ``numpy`` and ``onnx`` are needed here; the ``onnx`` import is deferred so that loading an already
exported model (the common case) needs neither this module's heavy import nor ``onnx`` itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.fsutil import atomic_write

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Bump whenever the produced graph changes (ops, fusions, metadata): it is part of the cache key, so
#: caches built by an older exporter are ignored instead of being trusted.
EXPORTER_VERSION = "1"
OPSET = 17
#: IR version 8 is the one that introduced opset 17; pinning it keeps the file loadable by older
#: onnxruntime releases (the project allows onnxruntime>=1.20) instead of whatever the installed
#: ``onnx`` package considers current.
IR_VERSION = 8
OUTPUT_NAME = "sentence_embedding"
SIDECAR_SUFFIX = ".json"
#: Bump whenever the int8 recipe (:func:`quantize_int8`) changes; part of the int8 file's cache key.
QUANT_VERSION = "1"
#: Precisions an export can be had in: the exported graph itself, or its int8 weight quantisation.
PRECISIONS = ("fp32", "int8")

_CHUNK = 1 << 20


class ExportError(RuntimeError):
    """The model directory does not describe a model this exporter can reproduce faithfully."""


# --------------------------------------------------------------------------------------------------
# safetensors (read-only, numpy): a u64 LE header length, a JSON header, then raw little-endian buffers.
# Parsing it ourselves keeps the ``safetensors`` package off the list of things a user machine needs.
# --------------------------------------------------------------------------------------------------

_ST_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every tensor of a ``.safetensors`` file as a numpy array (BF16 is widened to float32).

    The file is memory-mapped, and the returned arrays are copies so the mapping can be closed.
    """
    path = Path(path)
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > 100 * 1024 * 1024:
            raise ExportError(f"{path}: implausible safetensors header length {header_len}")
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, np.ndarray] = {}
    try:
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            begin, end = spec["data_offsets"]
            raw = data[base + begin : base + end]
            shape = tuple(spec["shape"])
            dtype_name = spec["dtype"]
            if dtype_name == "BF16":
                # bfloat16 is the top half of a float32: widen by shifting into the high bits.
                arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            elif dtype_name in _ST_DTYPES:
                arr = raw.view(_ST_DTYPES[dtype_name])
            else:
                raise ExportError(f"{path}: unsupported safetensors dtype {dtype_name!r} for {name}")
            out[name] = np.array(arr.reshape(shape), copy=True)
    finally:
        del data
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Model description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BertSpec:
    """The subset of a sentence-transformers BERT checkpoint that determines the exported graph."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    max_seq_length: int

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> BertSpec:
        """Read config.json and refuse anything the graph builder would silently get wrong.

        Checking pooling/normalisation here matters: exporting a CLS-pooled or unnormalised model with
        this builder would produce plausible-looking but wrong vectors.
        """
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type", "bert") != "bert":
            raise ExportError(f"only BERT models are supported, got model_type={cfg.get('model_type')!r}")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ExportError(f"only exact (erf) GELU is supported, got hidden_act={cfg.get('hidden_act')!r}")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ExportError("only absolute position embeddings are supported")

        pooling_cfg = model_dir / "1_Pooling" / "config.json"
        if pooling_cfg.exists():
            pooling = json.loads(pooling_cfg.read_text())
            other_modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
            if other_modes != ["pooling_mode_mean_tokens"]:
                raise ExportError(f"only mean pooling is supported, model uses {other_modes}")
        modules_cfg = model_dir / "modules.json"
        if modules_cfg.exists():
            types = [m.get("type", "") for m in json.loads(modules_cfg.read_text())]
            if not any(t.endswith("Normalize") for t in types):
                raise ExportError("model has no Normalize module; the graph would L2-normalise anyway")

        max_seq_length = int(cfg["max_position_embeddings"])
        st_cfg = model_dir / "sentence_bert_config.json"
        if st_cfg.exists():
            max_seq_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_seq_length))

        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            max_seq_length=min(max_seq_length, int(cfg["max_position_embeddings"])),
        )


@dataclass(frozen=True, slots=True)
class ExportResult:
    onnx_path: Path
    onnx_sha256: str
    source_sha256: str
    seconds: float


# --------------------------------------------------------------------------------------------------
# Graph construction
# --------------------------------------------------------------------------------------------------


class _GraphBuilder:
    """Accumulates nodes and initializers; names are deterministic so exports are reproducible."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        return self.ops(op_type, inputs, [name], name, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> list[str]:
        self._n += 1
        self.nodes.append(
            self._helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{self._n}_{name}", **attrs)
        )
        return outputs


def _weight_prefix(weights: Mapping[str, np.ndarray]) -> str:
    """Checkpoints saved from ``BertForX`` carry a ``bert.`` prefix; sentence-transformers' does not."""
    for prefix in ("", "bert.", "model."):
        if f"{prefix}embeddings.word_embeddings.weight" in weights:
            return prefix
    raise ExportError("no embeddings.word_embeddings.weight tensor: not a BERT checkpoint")


def build_model(
    weights: Mapping[str, np.ndarray],
    spec: BertSpec,
    *,
    with_token_type_ids: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Build the sentence-embedding graph: (input_ids, attention_mask[, token_type_ids]) -> (batch, dim).

    Choices that differ from a literal transcription of ``BertModel``, all exact up to float rounding:
    - token_type_ids are optional: single-sentence embedding always uses type 0, so by default row 0 of
      the token-type table is folded into the position table and the input disappears (one Gather and
      one Add fewer per call, and callers cannot feed the wrong types).
    - Q, K and V projections are fused into one (hidden, 3*hidden) MatMul: one GEMM instead of three is
      what matters for single-query latency on CPU.
    - The 1/sqrt(head_dim) attention scale is folded into the query weights.
    - GELU is spelled ``x * 0.5 * (1 + erf(x / sqrt 2))`` in the same node order torch exports, so that
      onnxruntime's GeluFusion recognises it (opset 17 has no Gelu op).
    """
    from onnx import TensorProto, helper

    p = _weight_prefix(weights)

    def w(name: str) -> np.ndarray:
        try:
            return np.asarray(weights[p + name], dtype=np.float32)
        except KeyError:
            raise ExportError(f"missing tensor {p + name!r}") from None

    hidden, heads = spec.hidden_size, spec.num_heads
    if hidden % heads:
        raise ExportError(f"hidden_size {hidden} is not divisible by num_heads {heads}")
    head_dim = hidden // heads
    eps = spec.layer_norm_eps
    g = _GraphBuilder()

    def layer_norm(x: str, src: str, name: str) -> str:
        gamma = g.const(name + ".w", w(src + ".weight"))
        beta = g.const(name + ".b", w(src + ".bias"))
        return g.op("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=eps)

    def linear(x: str, src: str, name: str) -> str:
        """torch Linear: y = x @ W.T + b; W is stored pre-transposed so no Transpose runs per call."""
        y = g.op("MatMul", [x, g.const(name + ".w", w(src + ".weight").T)], name + "_mm")
        return g.op("Add", [y, g.const(name + ".b", w(src + ".bias"))], name)

    # Shared constants.
    c_axes0 = g.const("axes_0", np.array([0], dtype=np.int64))
    c_axes1 = g.const("axes_1", np.array([1], dtype=np.int64))
    c_axes12 = g.const("axes_1_2", np.array([1, 2], dtype=np.int64))
    c_starts0 = g.const("start_0", np.array([0], dtype=np.int64))
    c_one = g.const("one_f", np.array(1.0, dtype=np.float32))
    c_half = g.const("half_f", np.array(0.5, dtype=np.float32))
    c_sqrt2 = g.const("sqrt2_f", np.array(np.sqrt(2.0), dtype=np.float32))
    c_neg = g.const("mask_neg_f", np.array(np.finfo(np.float32).min, dtype=np.float32))
    c_split = g.const("qkv_split", np.array([hidden, hidden, hidden], dtype=np.int64))
    c_heads_shape = g.const("shape_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
    c_merge_shape = g.const("shape_merge", np.array([0, 0, hidden], dtype=np.int64))
    c_pool_eps = g.const("pool_eps_f", np.array(1e-9, dtype=np.float32))
    c_norm_eps = g.const("norm_eps_f", np.array(1e-12, dtype=np.float32))

    # ---- embeddings -------------------------------------------------------------------------------
    word = g.const("emb.word", w("embeddings.word_embeddings.weight"))
    pos_table = w("embeddings.position_embeddings.weight")
    type_table = w("embeddings.token_type_embeddings.weight")
    if not with_token_type_ids:
        pos_table = pos_table + type_table[0]
    pos = g.const("emb.position", pos_table)

    x = g.op("Gather", [word, "input_ids"], "emb.word_out", axis=0)
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos_slice = g.op("Slice", [pos, c_starts0, seq_len, c_axes0], "emb.position_out")
    x = g.op("Add", [x, pos_slice], "emb.word_pos")
    if with_token_type_ids:
        tt = g.const("emb.token_type", type_table)
        tt_out = g.op("Gather", [tt, "token_type_ids"], "emb.token_type_out", axis=0)
        x = g.op("Add", [x, tt_out], "emb.sum")
    x = layer_norm(x, "embeddings.LayerNorm", "emb.ln")

    # ---- attention mask: (B, L) int64 -> additive (B, 1, 1, L) float, computed once for all layers ----
    mask_f = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv_mask = g.op("Sub", [c_one, mask_f], "mask_inv")
    mask_bias = g.op("Mul", [inv_mask, c_neg], "mask_bias2d")
    mask_bias = g.op("Unsqueeze", [mask_bias, c_axes12], "mask_bias")

    scale = np.float32(1.0 / np.sqrt(head_dim))
    for i in range(spec.num_layers):
        lp = f"encoder.layer.{i}."
        n = f"l{i}."
        wq = w(lp + "attention.self.query.weight").T * scale
        bq = w(lp + "attention.self.query.bias") * scale
        wqkv = np.concatenate(
            [wq, w(lp + "attention.self.key.weight").T, w(lp + "attention.self.value.weight").T], axis=1
        )
        bqkv = np.concatenate([bq, w(lp + "attention.self.key.bias"), w(lp + "attention.self.value.bias")])
        qkv = g.op("MatMul", [x, g.const(n + "qkv.w", wqkv)], n + "qkv_mm")
        qkv = g.op("Add", [qkv, g.const(n + "qkv.b", bqkv)], n + "qkv")
        q, k, v = g.ops("Split", [qkv, c_split], [n + "q", n + "k", n + "v"], n + "split", axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, c_heads_shape], n + "q_r")], n + "q_t", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, c_heads_shape], n + "k_r")], n + "k_t", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, c_heads_shape], n + "v_r")], n + "v_t", perm=[0, 2, 1, 3])
        scores = g.op("MatMul", [q, k], n + "scores")
        scores = g.op("Add", [scores, mask_bias], n + "scores_masked")
        probs = g.op("Softmax", [scores], n + "probs", axis=-1)
        ctx = g.op("MatMul", [probs, v], n + "ctx")
        ctx = g.op("Transpose", [ctx], n + "ctx_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, c_merge_shape], n + "ctx_r")
        attn = linear(ctx, lp + "attention.output.dense", n + "ao")
        x = layer_norm(g.op("Add", [attn, x], n + "ao_res"), lp + "attention.output.LayerNorm", n + "ao_ln")
        h = linear(x, lp + "intermediate.dense", n + "ff1")
        erf = g.op("Erf", [g.op("Div", [h, c_sqrt2], n + "gelu_div")], n + "gelu_erf")
        gelu = g.op("Mul", [h, g.op("Add", [erf, c_one], n + "gelu_add")], n + "gelu_mul")
        h = g.op("Mul", [gelu, c_half], n + "gelu")
        h = linear(h, lp + "output.dense", n + "ff2")
        x = layer_norm(g.op("Add", [h, x], n + "ff_res"), lp + "output.LayerNorm", n + "out")

    # ---- mean pooling over real tokens, then L2 normalisation (sentence-transformers semantics) -------
    mask3 = g.op("Unsqueeze", [mask_f, g.const("axes_m1", np.array([-1], dtype=np.int64))], "mask3")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3], "masked_tokens"), c_axes1], "pool_sum", keepdims=0)
    counts = g.op("ReduceSum", [mask3, c_axes1], "pool_count_raw", keepdims=0)
    counts = g.op("Max", [counts, c_pool_eps], "pool_count")
    pooled = g.op("Div", [summed, counts], "pooled")
    norm = g.op("ReduceL2", [pooled], "pool_norm_raw", axes=[-1], keepdims=1)
    norm = g.op("Max", [norm, c_norm_eps], "pool_norm")
    g.op("Div", [pooled, norm], OUTPUT_NAME)

    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_type_ids else [])
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in input_names
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", hidden])]
    graph = helper.make_graph(g.nodes, "sentence_encoder", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="common.encoders.export",
        producer_version=EXPORTER_VERSION,
        ir_version=IR_VERSION,
    )
    meta = {
        "dim": str(hidden),
        "max_seq_length": str(spec.max_seq_length),
        "pooling": "mean",
        "normalize": "l2",
    }
    meta.update(metadata or {})
    helper.set_model_props(model, meta)
    return model


# --------------------------------------------------------------------------------------------------
# Files: explicit export and the first-use cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$QUARRY_CACHE_DIR/encoders`` if set, else ``${XDG_CACHE_HOME:-~/.cache}/common/encoders``."""
    root = os.environ.get("QUARRY_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "encoders"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "quarry" / "encoders"


def sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + SIDECAR_SUFFIX)


def export_onnx(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    with_token_type_ids: bool = False,
    source_sha256: str | None = None,
) -> ExportResult:
    """Export ``model_dir`` (config.json + model.safetensors) to ``out_path`` plus a JSON sidecar.

    Usable directly by the indexer to put the model into a snapshot; the sidecar records the sha256 of
    the ONNX file so whoever loads it can detect a truncated or swapped file.
    """
    import onnx

    t0 = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    weights_path = model_dir / "model.safetensors"
    if not weights_path.is_file():
        raise ExportError(f"{weights_path} not found")
    spec = BertSpec.from_model_dir(model_dir)
    source_sha256 = source_sha256 or sha256_file(weights_path)
    weights = read_safetensors(weights_path)
    model = build_model(
        weights,
        spec,
        with_token_type_ids=with_token_type_ids,
        metadata={"source_sha256": source_sha256, "exporter_version": EXPORTER_VERSION},
    )
    del weights
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    del model
    onnx_sha256 = hashlib.sha256(data).hexdigest()
    atomic_write(out_path, data)
    sidecar = {
        "onnx_sha256": onnx_sha256,
        "onnx_bytes": len(data),
        "source_sha256": source_sha256,
        "source_dir": str(model_dir),
        "exporter_version": EXPORTER_VERSION,
        "opset": OPSET,
        "with_token_type_ids": with_token_type_ids,
        "dim": spec.hidden_size,
        "max_seq_length": spec.max_seq_length,
        "onnx_package_version": onnx.__version__,
        "created_unix": int(time.time()),
    }
    atomic_write(sidecar_path(out_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    seconds = time.perf_counter() - t0
    log.info("exported %s -> %s in %.1f s (sha256 %s)", model_dir, out_path, seconds, onnx_sha256[:12])
    return ExportResult(out_path, onnx_sha256, source_sha256, seconds)


def quantize_int8(fp32_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> ExportResult:
    """Write the int8 version of an exported graph (plus its sidecar) with onnxruntime's dynamic quantiser.

    The recipe, measured against the fp32 graph on 1,000 SciFact titles and 3,000 GeoNames names
    (cosine of each text's two vectors, docs/benchmarks.md):
    - weights int8 **per output channel** (one scale per column): one scale per matrix gave a mean cosine
      of 0.953 (min 0.90), per channel 0.992;
    - the feed-forward output projections (``*.ff2_mm``, whose input is the GELU's long-tailed output)
      stay fp32: mean cosine 0.996, min 0.984 on names, 0.990 on titles, for ~5% of the speed-up;
    - only MatMuls with a constant weight (the attention's activation × activation products stay fp32);
      activations are quantised per call (dynamic), so no calibration data is involved.
    The output is deterministic for a given input graph and onnxruntime release, so the int8 file's hash
    names its vector space like the fp32 one's does (common.encoders.fingerprint).
    """
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = json.loads(sidecar_path(fp32_path).read_text())
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    kept = sorted(n.name for n in graph.node if n.op_type == "MatMul" and n.name.endswith("ff2_mm"))
    del graph
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_quantiser():
        quantize_dynamic(
            fp32_path,
            tmp,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            extra_options={"MatMulConstBOnly": True},
        )
    data = tmp.read_bytes()
    tmp.unlink()
    onnx_sha256 = hashlib.sha256(data).hexdigest()
    atomic_write(out_path, data)
    sidecar = {
        **source,
        "onnx_sha256": onnx_sha256,
        "onnx_bytes": len(data),
        "precision": "int8",
        "quantization": {
            "version": QUANT_VERSION,
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "per_channel": True,
            "ops": ["MatMul"],
            "const_weights_only": True,
            "fp32_nodes": kept,
            "onnxruntime_version": ort_version,
        },
        "fp32_onnx_sha256": source.get("onnx_sha256"),
        "created_unix": int(time.time()),
    }
    atomic_write(sidecar_path(out_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    seconds = time.perf_counter() - t0
    log.info(
        "quantised %s -> %s (int8) in %.1f s (sha256 %s)", fp32_path, out_path, seconds, onnx_sha256[:12]
    )
    return ExportResult(out_path, onnx_sha256, str(source.get("source_sha256", "")), seconds)


class _PreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """onnxruntime's quantiser advises, on the root logger, a pre-processing step meant for CNNs with
    unknown shapes; our graph has none to infer, so the advice is dropped rather than shown to users."""
    root = logging.getLogger()
    hint = _PreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def precision_of(onnx_path: str | os.PathLike[str]) -> str:
    """``"int8"`` or ``"fp32"``: what an exported file's sidecar says it is."""
    meta = json.loads(sidecar_path(Path(onnx_path)).read_text())
    return str(meta.get("precision", "fp32"))


def read_verified(onnx_path: str | os.PathLike[str]) -> bytes:
    """Return the ONNX file's bytes after checking them against the sidecar's sha256.

    Returning the bytes (rather than a yes/no) lets the caller hand exactly the verified bytes to
    onnxruntime, so the file cannot change between the check and the load.

    Raises:
        FileNotFoundError: the model or its sidecar is missing.
        ValueError: the sidecar is unreadable or the hash does not match.
    """
    onnx_path = Path(onnx_path)
    meta = json.loads(sidecar_path(onnx_path).read_text())
    expected = meta.get("onnx_sha256")
    if not isinstance(expected, str):
        raise ValueError(f"{sidecar_path(onnx_path)} has no onnx_sha256")
    data = onnx_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{onnx_path}: sha256 {actual[:12]}… does not match sidecar {expected[:12]}…")
    return data


@contextlib.contextmanager
def _export_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """Serialise concurrent first-use exports across processes (e.g. several workers starting at once).

    Without it every worker would spend the export time and memory; correctness does not depend on it
    because writes are atomic and exports are deterministic.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cache_key(source_sha256: str, *, with_token_type_ids: bool = False) -> str:
    suffix = "-tt" if with_token_type_ids else ""
    return f"{source_sha256[:16]}-x{EXPORTER_VERSION}-op{OPSET}{suffix}"


def ensure_exported(
    model_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str = "model",
    with_token_type_ids: bool = False,
    precision: str = "fp32",
) -> tuple[Path, bytes]:
    """Return (path, verified bytes) of the cached ONNX export of ``model_dir``, exporting on first use.

    The cache key is the sha256 of model.safetensors plus the exporter version, so a new model release
    or a changed exporter gets a fresh file, never a stale one. A cached file that fails verification is
    re-exported with a warning rather than served. ``precision="int8"`` returns the fp32 export's
    :func:`quantize_int8` version, cached beside it under the quantiser's version too.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model_dir = Path(model_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source_sha = sha256_file(model_dir / "model.safetensors")
    key = cache_key(source_sha, with_token_type_ids=with_token_type_ids)
    path = cache / f"{name}-{key}.onnx"

    def export() -> ExportResult:
        return export_onnx(model_dir, path, with_token_type_ids=with_token_type_ids, source_sha256=source_sha)

    if precision == "fp32":
        return _cached(path, cache, export)
    q_path = path.with_name(f"{path.stem}-int8q{QUANT_VERSION}.onnx")

    def quantize() -> ExportResult:
        # The fp32 export is verified (or made) only when the int8 file has to be made from it: a cached
        # int8 file loads without reading and hashing the 90 MB fp32 one.
        _cached(path, cache, export)
        return quantize_int8(path, q_path)

    return _cached(q_path, cache, quantize)


def _cached(path: Path, cache: Path, make: Callable[[], ExportResult]) -> tuple[Path, bytes]:
    """(path, verified bytes) of a cache file, made by ``make`` (under a cross-process lock) when it is
    missing or fails verification."""

    def try_load() -> bytes | None:
        if not path.exists():
            return None
        try:
            return read_verified(path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"cached ONNX model failed verification, re-exporting: {exc}", stacklevel=4)
            log.warning("cached ONNX model %s failed verification (%s); re-exporting", path, exc)
            return None

    if (data := try_load()) is not None:
        return path, data
    with _export_lock(cache, path.stem):
        # Another process may have finished the export while we waited for the lock.
        if path.exists() and sidecar_path(path).exists():
            with contextlib.suppress(OSError, ValueError):
                return path, read_verified(path)
        log.info("making %s (first use)", path)
        make()
    return path, read_verified(path)
