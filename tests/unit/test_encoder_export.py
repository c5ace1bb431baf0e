"""The torch-free ONNX exporter, checked on a tiny random BERT so every test runs in well under a second.

The graph is compared against an independent, literal numpy transcription of BertModel + mean pooling
+ L2 normalisation; parity with the real model and sentence-transformers is in test_encoder_minilm.py.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the exporter needs the onnx package")
ort = pytest.importorskip("onnxruntime")

from common.encoders import export  # noqa: E402

CFG = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "vocab_size": 50,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}

_ST_CODES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64", np.dtype("<i4"): "I32"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], bf16: frozenset[str] = frozenset()) -> None:
    """Minimal safetensors writer (the format is a JSON header + raw little-endian buffers)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        if name in bf16:
            raw = (np.ascontiguousarray(arr, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
            code = "BF16"
        else:
            arr = np.ascontiguousarray(arr)
            raw, code = arr.tobytes(), _ST_CODES[arr.dtype.newbyteorder("<")]
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hdr = json.dumps(header).encode()
    hdr += b" " * (-len(hdr) % 8)
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs))


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f = CFG["hidden_size"], CFG["intermediate_size"]

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": r(CFG["vocab_size"], h),
        "embeddings.position_embeddings.weight": r(CFG["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": r(2, h),
        "embeddings.LayerNorm.weight": 1 + r(h, scale=0.1),
        "embeddings.LayerNorm.bias": r(h, scale=0.1),
        "embeddings.position_ids": np.arange(CFG["max_position_embeddings"], dtype=np.int64)[None],
    }
    for i in range(CFG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            w[p + f"attention.self.{m}.weight"] = r(h, h)
            w[p + f"attention.self.{m}.bias"] = r(h, scale=0.05)
        w[p + "attention.output.dense.weight"] = r(h, h)
        w[p + "attention.output.dense.bias"] = r(h, scale=0.05)
        w[p + "attention.output.LayerNorm.weight"] = 1 + r(h, scale=0.1)
        w[p + "attention.output.LayerNorm.bias"] = r(h, scale=0.1)
        w[p + "intermediate.dense.weight"] = r(f, h)
        w[p + "intermediate.dense.bias"] = r(f, scale=0.05)
        w[p + "output.dense.weight"] = r(h, f)
        w[p + "output.dense.bias"] = r(h, scale=0.05)
        w[p + "output.LayerNorm.weight"] = 1 + r(h, scale=0.1)
        w[p + "output.LayerNorm.bias"] = r(h, scale=0.1)
    return w


def make_model_dir(root: Path, *, seed: int = 0, cfg: dict[str, object] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg or CFG))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True})
    )
    write_safetensors(root / "model.safetensors", random_weights(seed))
    return root


def reference_forward(
    w: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None
) -> np.ndarray:
    """BertModel -> masked mean pooling -> L2 normalisation, written out literally in float64."""
    from math import erf

    w = {k: v.astype(np.float64) for k, v in w.items()}
    h, nh = CFG["hidden_size"], CFG["num_attention_heads"]
    d = h // nh
    b, s = ids.shape
    types = np.zeros_like(ids) if types is None else types

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][np.arange(s)][None]
        + w["embeddings.token_type_embeddings.weight"][types]
    )
    x = ln(x, "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -1e30
    for i in range(CFG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(b, s, nh, d).transpose(0, 2, 1, 3)

        q, k, v = (heads(lin(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        ff = lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = ln(ff + x, p + "output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "tiny")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([7, 3, 12, 1])
    ids = rng.integers(1, CFG["vocab_size"], size=(4, 12))
    mask = (np.arange(12)[None] < lens[:, None]).astype(np.int64)
    return ids * mask, mask


def test_graph_matches_numpy_reference(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = export.export_onnx(model_dir, out)
    ids, mask = _batch(np.random.default_rng(1))
    got = _session(out).run([export.OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]
    want = reference_forward(random_weights(0), ids, mask)
    assert got.dtype == np.float32 and got.shape == (4, CFG["hidden_size"])
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert res.onnx_sha256 == export.sha256_file(out)
    side = json.loads(export.sidecar_path(out).read_text())
    assert side["onnx_sha256"] == res.onnx_sha256 and side["source_sha256"] == res.source_sha256


def test_padding_does_not_change_embeddings(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    export.export_onnx(model_dir, out)
    sess = _session(out)
    ids = np.array([[5, 9, 11, 2]], dtype=np.int64)
    plain = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    padded_ids = np.array([[5, 9, 11, 2, 0, 0, 0, 0, 0]], dtype=np.int64)
    padded_mask = (padded_ids != 0).astype(np.int64)
    padded = sess.run(None, {"input_ids": padded_ids, "attention_mask": padded_mask})[0]
    np.testing.assert_allclose(padded, plain, atol=1e-6)


def test_token_type_ids_variant(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tt.onnx"
    export.export_onnx(model_dir, out, with_token_type_ids=True)
    sess = _session(out)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    ids, mask = _batch(np.random.default_rng(2))
    w = random_weights(0)
    zeros = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    np.testing.assert_allclose(zeros[0], reference_forward(w, ids, mask), atol=2e-5)
    ones = np.ones_like(ids)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": ones})[0]
    np.testing.assert_allclose(got, reference_forward(w, ids, mask, ones), atol=2e-5)


def test_export_is_deterministic(model_dir: Path, tmp_path: Path) -> None:
    a = export.export_onnx(model_dir, tmp_path / "a.onnx")
    b = export.export_onnx(model_dir, tmp_path / "b.onnx")
    assert a.onnx_sha256 == b.onnx_sha256


def test_model_metadata(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = export.export_onnx(model_dir, out)
    meta = _session(out).get_modelmeta().custom_metadata_map
    assert meta["dim"] == "32" and meta["max_seq_length"] == "32"
    assert meta["source_sha256"] == res.source_sha256
    assert meta["exporter_version"] == export.EXPORTER_VERSION


def test_read_safetensors_dtypes(tmp_path: Path) -> None:
    tensors = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "f16": np.array([1.5, -2.25], dtype=np.float16),
        "i64": np.array([[1, 2**40]], dtype=np.int64),
        "bf": np.array([1.0, -3.5, 0.15625], dtype=np.float32),  # exactly representable in bf16
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, bf16=frozenset({"bf"}))
    got = export.read_safetensors(path)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(got[name], arr)
    assert got["bf"].dtype == np.float32


def test_read_safetensors_matches_safetensors_package(model_dir: Path) -> None:
    st = pytest.importorskip("safetensors.numpy", reason="cross-check only; the exporter does not need it")
    ours = export.read_safetensors(model_dir / "model.safetensors")
    theirs = st.load_file(str(model_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_cache_exports_once_and_reuses(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    calls: list[Path] = []
    real = export.export_onnx

    def counting(*args: object, **kwargs: object) -> export.ExportResult:
        calls.append(Path(str(args[1])))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "export_onnx", counting)
    path1, data1 = export.ensure_exported(model_dir, cache_dir=cache, name="tiny")
    path2, data2 = export.ensure_exported(model_dir, cache_dir=cache, name="tiny")
    assert path1 == path2 and data1 == data2 and len(calls) == 1
    assert path1.parent == cache and path1.name.startswith("tiny-")
    assert export.EXPORTER_VERSION in path1.name
    assert not list(cache.glob("*.tmp")), "temporary files must not be left behind"


def test_cache_key_follows_weights(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    p1, _ = export.ensure_exported(make_model_dir(tmp_path / "a", seed=0), cache_dir=cache)
    p2, _ = export.ensure_exported(make_model_dir(tmp_path / "b", seed=1), cache_dir=cache)
    assert p1 != p2


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "no_sidecar", "bad_sidecar"])
def test_cache_reexports_damaged_file_with_warning(model_dir: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    path, good = export.ensure_exported(model_dir, cache_dir=cache)
    side = export.sidecar_path(path)
    if damage == "corrupt":
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(good[:100])
    elif damage == "no_sidecar":
        side.unlink()
    else:
        side.write_text("{not json")
    with pytest.warns(UserWarning, match="re-exporting"):
        path2, data2 = export.ensure_exported(model_dir, cache_dir=cache)
    assert path2 == path and data2 == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export.ensure_exported(model_dir, cache_dir=cache)  # healthy again: no warning


def test_read_verified_rejects_mismatch(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    export.export_onnx(model_dir, out)
    assert export.read_verified(out) == out.read_bytes()
    out.write_bytes(out.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        export.read_verified(out)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUARRY_CACHE_DIR", str(tmp_path / "q"))
    assert export.default_cache_dir() == tmp_path / "q" / "encoders"
    monkeypatch.delenv("QUARRY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert export.default_cache_dir() == tmp_path / "xdg" / "quarry" / "encoders"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert export.default_cache_dir() == Path.home() / ".cache" / "quarry" / "encoders"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "relu"}, "GELU"),
        ({"position_embedding_type": "relative_key"}, "absolute"),
        ({"model_type": "roberta"}, "BERT"),
    ],
)
def test_unsupported_config_is_refused(tmp_path: Path, change: dict[str, str], message: str) -> None:
    mdir = make_model_dir(tmp_path / "m", cfg={**CFG, **change})
    with pytest.raises(export.ExportError, match=message):
        export.export_onnx(mdir, tmp_path / "x.onnx")


def test_cls_pooling_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(export.ExportError, match="mean pooling"):
        export.export_onnx(model_dir, tmp_path / "x.onnx")


def _kernel_ops(path: Path) -> dict[str, str]:
    """Each weight MatMul's op type in a saved graph, by the weight's name (quantised or not)."""
    import onnx

    graph = onnx.load(str(path)).graph
    out: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            base = name.removesuffix("_quantized")
            if base.endswith(".w") and node.op_type in ("MatMul", "MatMulInteger"):
                out[base] = node.op_type
    return out


def test_int8_quantisation(model_dir: Path, tmp_path: Path) -> None:
    fp32 = export.export_onnx(model_dir, tmp_path / "fp32.onnx")
    a = export.quantize_int8(fp32.onnx_path, tmp_path / "a.onnx")
    b = export.quantize_int8(fp32.onnx_path, tmp_path / "b.onnx")
    # Deterministic, so the file's hash can name its vector space.
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes() and a.onnx_sha256 == b.onnx_sha256
    assert export.read_verified(a.onnx_path) == a.onnx_path.read_bytes()
    side = json.loads(export.sidecar_path(a.onnx_path).read_text())
    assert side["precision"] == "int8" and side["fp32_onnx_sha256"] == fp32.onnx_sha256
    assert (
        side["quantization"]["per_channel"] is True
        and side["quantization"]["version"] == export.QUANT_VERSION
    )
    assert export.precision_of(a.onnx_path) == "int8" and export.precision_of(fp32.onnx_path) == "fp32"
    assert side["dim"] == CFG["hidden_size"] and side["source_sha256"] == fp32.source_sha256

    # Every weight MatMul is int8 except the feed-forward output projections, which stay fp32.
    ops = _kernel_ops(a.onnx_path)
    layers = CFG["num_hidden_layers"]
    assert {w for w, op in ops.items() if op == "MatMul"} == {f"l{i}.ff2.w" for i in range(layers)}
    assert sum(op == "MatMulInteger" for op in ops.values()) == 3 * layers  # qkv, attention out, ff1
    assert len(side["quantization"]["fp32_nodes"]) == layers

    # Close to the fp32 graph on the same batch, though not equal.
    ids, mask = _batch(np.random.default_rng(3))
    feed = {"input_ids": ids, "attention_mask": mask}
    want = _session(fp32.onnx_path).run(None, feed)[0]
    got = _session(a.onnx_path).run(None, feed)[0]
    cos = np.einsum("ij,ij->i", got, want)
    assert cos.min() > 0.95, cos
    assert not np.array_equal(got, want)


def test_int8_cache_quantises_once(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    exports: list[Path] = []
    quants: list[Path] = []
    real_export, real_quant = export.export_onnx, export.quantize_int8

    def counting_export(*args: object, **kwargs: object) -> export.ExportResult:
        exports.append(Path(str(args[1])))
        return real_export(*args, **kwargs)  # type: ignore[arg-type]

    def counting_quant(*args: object, **kwargs: object) -> export.ExportResult:
        quants.append(Path(str(args[1])))
        return real_quant(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export, "export_onnx", counting_export)
    monkeypatch.setattr(export, "quantize_int8", counting_quant)
    p1, d1 = export.ensure_exported(model_dir, cache_dir=cache, name="tiny", precision="int8")
    p2, d2 = export.ensure_exported(model_dir, cache_dir=cache, name="tiny", precision="int8")
    fp, _ = export.ensure_exported(model_dir, cache_dir=cache, name="tiny")
    assert p1 == p2 and d1 == d2 and len(exports) == 1 and len(quants) == 1
    assert p1 != fp and p1.name == f"{fp.stem}-int8q{export.QUANT_VERSION}.onnx"
    assert export.precision_of(p1) == "int8"
    assert not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    # A damaged int8 file is made again (from the cached fp32 export), never served.
    p1.write_bytes(p1.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="failed verification"):
        p3, d3 = export.ensure_exported(model_dir, cache_dir=cache, name="tiny", precision="int8")
    assert p3 == p1 and d3 == d1 and len(quants) == 2 and len(exports) == 1


def test_unknown_precision_is_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        export.ensure_exported(model_dir, cache_dir=tmp_path, precision="fp16")
