"""The static query encoder: distillation recovers a teacher it can represent, training texts, the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.encoders import static
from common.encoders.minilm import find_model_dir, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return load_tokenizer(find_model_dir() / "tokenizer.json", 256)


WORDS = [
    "river",
    "bridge",
    "castle",
    "harbour",
    "market",
    "mountain",
    "village",
    "station",
    "garden",
    "tower",
    "museum",
    "forest",
    "lake",
    "valley",
    "church",
    "school",
    "island",
    "desert",
    "canyon",
    "palace",
    "theatre",
    "library",
    "bakery",
    "factory",
    "airport",
]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 7)))) for _ in range(n)]


def _teacher(tokenizer, texts: list[str], truth: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A teacher the static model can represent exactly: normalised mean of hidden token rows."""
    out = np.stack([truth[tokenizer.encode(t).ids[1:-1]].mean(axis=0) for t in texts])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_distill_recovers_a_representable_teacher(tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab, dim = tokenizer.get_vocab_size(), 16
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(vocab, dim)).astype(np.float32)
    start = rng.normal(size=(vocab, dim)).astype(np.float32)  # knows nothing of the teacher
    texts = _texts(3000, seed=2)
    table, report = static.distill(start, tokenizer, texts, _teacher(tokenizer, texts, truth))
    assert report.cosine_start < 0.5
    assert report.cosine_final > 0.99 and report.cosine_final >= report.cosine_ridge
    assert report.texts + report.held_out == len(texts)

    enc = static.StaticQueryEncoder(table, tokenizer, teacher="test")
    unseen = _texts(200, seed=3)  # other combinations of the same words
    got = enc.encode(unseen)
    assert got.shape == (200, dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert float((got * _teacher(tokenizer, unseen, truth)).sum(axis=1).mean()) > 0.99
    # one text and a batch take the same path
    np.testing.assert_allclose(enc.encode([unseen[0]])[0], got[0], rtol=1e-6)
    # tokens the texts never use keep their starting rows
    used = {i for t in texts for i in tokenizer.encode(t).ids}
    untouched = next(i for i in range(1000, vocab) if i not in used)
    np.testing.assert_array_equal(table[untouched], start[untouched])


def test_distill_refuses_bad_input(tokenizer) -> None:  # type: ignore[no-untyped-def]
    start = np.zeros((tokenizer.get_vocab_size(), 4), dtype=np.float32)
    with pytest.raises(ValueError, match="3 texts but 2 vectors"):
        static.distill(start, tokenizer, ["a", "b", "c"], np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="at least 20 training texts"):
        static.distill(start, tokenizer, ["a"], np.zeros((1, 4), np.float32))


def test_training_texts_from_a_catalog() -> None:
    long_text = (
        "Aspirin reduces the risk of stroke in adults. The effect was measured over ten years of follow up. "
        "Side effects included bleeding in a small share of patients and were reported by every center."
    )
    texts = ["Paris", "Berlin", long_text, "Lyon"]
    lengths = np.array([3, 3, 60, 3])
    short, extra = static.training_texts(texts, lengths, max_extra=12, seed=0)
    assert short == [0, 1, 3]  # query-sized items: used as they are
    assert len(extra) == 12 and len(set(extra)) == 12
    assert "Aspirin reduces the risk of stroke in adults." in extra  # its sentences ...
    assert all(len(t.split()) >= 6 for t in extra)  # ... and 6–22-word windows
    assert not set(extra) & {"Paris", "Berlin", "Lyon"}
    assert static.training_texts(texts, lengths, max_extra=12, seed=0) == (short, extra)  # seeded
    assert static.training_texts(texts, lengths, max_extra=0, seed=0) == (short, [])


def test_save_and_load(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table = np.random.default_rng(0).normal(size=(tokenizer.get_vocab_size(), 8)).astype(np.float32)
    files = static.save(tmp_path, table, {"teacher": "minilm:onnx-sha256:abc"})
    assert sorted(files) == sorted([static.TABLE_FILE, static.META_FILE])
    enc = static.StaticQueryEncoder.load(tmp_path, tokenizer)
    assert enc.table.dtype == np.float16 and enc.dim == 8 and enc.teacher == "minilm:onnx-sha256:abc"
    exact = static.StaticQueryEncoder(table, tokenizer, teacher="x").encode(["harbour market"])
    assert float((enc.encode(["harbour market"]) * exact).sum()) > 0.9999  # float16 storage

    meta = json.loads((tmp_path / static.META_FILE).read_text())
    (tmp_path / static.META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        static.StaticQueryEncoder.load(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="rows but the tokenizer has"):
        static.StaticQueryEncoder(table[:100], tokenizer, teacher="x")
