"""A static query encoder distilled from MiniLM for one catalog: a token table, mean-pooled.

Why: encoding a query with MiniLM is most of a Search request's CPU (~4–9 ms of one core for a
20-token query on these machines), while ANN recall itself is ~0.3–0.6 ms. A static encoder — one
vector per WordPiece token, averaged over the query's tokens and normalised — costs ~0.05 ms (13 µs of
it tokenizing). It is trained *toward the snapshot's own MiniLM vector space*, so the item vectors and
indexes stay those of MiniLM and only the query side changes; whether its answers are good enough is
measured (`quarry eval scifact --query-encoder both`), not assumed: README "Quality and speed".

Training (``distill``), on texts of the catalog's own domain with their MiniLM vectors (the teacher):

1. start every token at MiniLM's embedding of that token alone (``[CLS] t [SEP]``): what a token means
   out of context, and the fallback for tokens the training texts never show;
2. fit the table to the teacher by ridge regression toward that start (mean pooling makes each text's
   vector linear in the table, so this is one sparse least-squares problem, solved by conjugate
   gradients for all dimensions at once);
3. refine for what retrieval needs with Adam on the cosine to the teacher — in the metric of the items'
   covariance when the item vectors are given (what ranks items is x·d) — keeping the step with the
   best held-out cosine (the norm of a token's row then acts as its weight in the mean).

Measured on SciFact (5,183 abstracts → 100,000 encoded sentences and windows): held-out cosine 0.887;
the more texts the higher it goes (0.864 at 30k, 0.897 at 150k) while nDCG stopped moving past ~100k.
The table is stored as float16 (30,522 × 384 = 22 MiB) and memory-mapped; a query's rows are widened.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.catalog import split_sentences
from common.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Bump when the table's meaning changes (pooling, tokenisation, file layout).
STATIC_VERSION = 1
TABLE_FILE = "query-static.f16.npy"
META_FILE = "query-static.json"


def _inner(ids: list[int]) -> list[int]:
    """A text's tokens without [CLS]/[SEP]; an empty text keeps them (its vector is then theirs)."""
    return ids[1:-1] if len(ids) > 2 else ids


@dataclass(frozen=True, slots=True)
class DistillReport:
    texts: int
    held_out: int
    cosine_start: float
    cosine_ridge: float
    cosine_final: float
    adam_steps: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "held_out": self.held_out,
            "held_out_cosine": {
                "single_tokens": round(self.cosine_start, 4),
                "ridge": round(self.cosine_ridge, 4),
                "final": round(self.cosine_final, 4),
            },
            "adam_steps": self.adam_steps,
            "seconds": round(self.seconds, 1),
        }


class StaticQueryEncoder:
    """Mean of the query's token rows, L2-normalised: a ``TextEncoder`` in the teacher's vector space.

    Thread-safe (read-only table; ``tokenizers`` objects may be shared)."""

    name = "static"

    def __init__(self, table: np.ndarray, tokenizer: Any, teacher: str) -> None:
        if table.ndim != 2:
            raise ValueError(f"static table must be 2-d, got shape {table.shape}")
        vocab = tokenizer.get_vocab_size()
        if table.shape[0] != vocab:
            raise ValueError(f"static table has {table.shape[0]} rows but the tokenizer has {vocab} tokens")
        #: float16 memory-mapped from the snapshot (shared by every worker's page cache), widened per query.
        self.table = table
        self.dim = int(table.shape[1])
        self.teacher = teacher
        self._tokenizer = tokenizer

    @classmethod
    def load(cls, directory: Path, tokenizer: Any) -> StaticQueryEncoder:
        meta = json.loads((directory / META_FILE).read_text())
        if meta.get("version") != STATIC_VERSION:
            raise ValueError(
                f"{directory / META_FILE}: static encoder version {meta.get('version')}, expected {STATIC_VERSION}"
            )
        table = np.load(directory / TABLE_FILE, mmap_mode="r")
        if table.shape[1] != meta.get("dim"):
            raise ValueError(
                f"{directory / TABLE_FILE}: {table.shape[1]}-d rows, its metadata says {meta.get('dim')}"
            )
        return cls(table, tokenizer, str(meta["teacher"]))

    def _pool(self, ids: list[int]) -> np.ndarray:
        v = self.table[_inner(ids)].astype(np.float32).mean(axis=0)
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 1:
            out[0] = self._pool(self._tokenizer.encode(texts[0]).ids)
        elif texts:
            for row, enc in enumerate(self._tokenizer.encode_batch(list(texts))):
                out[row] = self._pool(enc.ids)
        return out


def training_texts(
    texts: Sequence[str], token_lengths: np.ndarray, *, max_extra: int, short_tokens: int = 48, seed: int = 0
) -> tuple[list[int], list[str]]:
    """What to distil on, from the catalog's own embedded texts (``token_lengths``: their MiniLM lengths).

    Items whose text is already query-sized (≤ ``short_tokens``) are used as they are — their item vectors
    are the teacher's answer, so they cost nothing; their indices come first. Longer texts give query-
    sized pieces that must be encoded: their sentences, and random 6–22-word windows (claims and
    questions are sentence-like; windows add the shorter ones), at most ``max_extra`` in all, deduplicated
    and in a seeded order."""
    rng = random.Random(seed)
    short = [i for i, n in enumerate(token_lengths) if n <= short_tokens]
    long_texts = [texts[i] for i, n in enumerate(token_lengths) if n > short_tokens]
    seen = {texts[i] for i in short}
    sentences: list[str] = []
    for text in long_texts:
        sentences.extend(s for s in split_sentences(text) if 20 <= len(s) <= 300)
    windows: list[str] = []
    if long_texts and max_extra > len(sentences):
        per_text = -(-(max_extra - len(sentences)) // len(long_texts))
        for text in long_texts:
            words = text.split()
            for _ in range(per_text):
                size = rng.randint(6, 22)
                if len(words) > size:
                    at = rng.randrange(len(words) - size)
                    windows.append(" ".join(words[at : at + size]))
    rng.shuffle(sentences)
    rng.shuffle(windows)
    extra: list[str] = []
    for text in [*sentences, *windows]:
        if len(extra) >= max_extra:
            break
        if text not in seen:
            seen.add(text)
            extra.append(text)
    return short, extra


def save(directory: Path, table: np.ndarray, meta: dict[str, Any]) -> list[str]:
    """Write the table (float16) and its metadata into ``directory``; returns the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, table.astype(np.float16))
    atomic_write(directory / TABLE_FILE, buf.getvalue())
    body = {"version": STATIC_VERSION, "file": TABLE_FILE, "dim": int(table.shape[1]), **meta}
    atomic_write(directory / META_FILE, json.dumps(body, indent=2, sort_keys=True).encode())
    for name in (TABLE_FILE, META_FILE):
        (directory / name).chmod(0o644)  # like the snapshot's other files (the temp file was 0600)
    return [TABLE_FILE, META_FILE]


def _bag(tokenizer: Any, texts: Sequence[str]) -> tuple[Any, np.ndarray]:
    """Texts × the tokens they use (each row a text's token counts / its length: mean pooling as a
    matrix), and the vocabulary id of each column."""
    import scipy.sparse as sp

    ids = [np.asarray(_inner(enc.ids), dtype=np.int64) for enc in tokenizer.encode_batch(list(texts))]
    flat = np.concatenate(ids)
    used, cols = np.unique(flat, return_inverse=True)
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    rows = np.repeat(np.arange(len(ids)), lens)
    vals = np.repeat(1.0 / lens, lens).astype(np.float32)
    bag = sp.csr_matrix((vals, (rows, cols)), shape=(len(ids), len(used)), dtype=np.float32)
    bag.sum_duplicates()
    return bag, used


def _cosine(bag: Any, table: np.ndarray, target: np.ndarray) -> float:
    x = np.asarray(bag @ table)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    return float((x * target).sum(axis=1).mean())


def _metric(items: np.ndarray | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """C^½ and C^-½ of the items' centred covariance (regularised: + 1% of its mean eigenvalue), or I."""
    if items is None or len(items) < 2:
        eye = np.eye(dim, dtype=np.float32)
        return eye, eye
    centred = np.asarray(items, dtype=np.float64) - items.mean(axis=0)
    cov = centred.T @ centred / len(items)
    cov += np.eye(dim) * 0.01 * np.trace(cov) / dim
    values, vectors = np.linalg.eigh(cov)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inverse = (vectors / np.sqrt(values)) @ vectors.T
    return root.astype(np.float32), inverse.astype(np.float32)


def distill(
    single_tokens: np.ndarray,
    tokenizer: Any,
    texts: Sequence[str],
    vectors: np.ndarray,
    *,
    ridge: float = 0.01,
    cg_iterations: int = 60,
    adam_steps: int = 120,
    learning_rate: float = 0.002,
    held_out: float = 0.05,
    seed: int = 0,
    items: np.ndarray | None = None,
) -> tuple[np.ndarray, DistillReport]:
    """Fit the token table to ``vectors`` (the teacher's unit vectors of ``texts``); see the module doc.

    ``single_tokens`` is the starting table (vocabulary × dim). A random ``held_out`` share of the texts
    is never fitted: it measures each stage and picks the Adam step to keep."""
    t0 = time.perf_counter()
    if len(texts) != len(vectors):
        raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
    if len(texts) < 20:
        raise ValueError(f"need at least 20 training texts to distil a query encoder, got {len(texts)}")
    order = np.random.default_rng(seed).permutation(len(texts))
    n_test = max(1, int(len(texts) * held_out))
    test, train = order[:n_test], order[n_test:]
    bag, used = _bag(tokenizer, texts)  # only the rows of tokens the texts use are fitted
    y = np.ascontiguousarray(vectors, dtype=np.float32)
    a_tr, a_te, y_tr, y_te = bag[train], bag[test], y[train], y[test]
    a_tr_t = a_tr.T.tocsr()
    start = np.ascontiguousarray(single_tokens[used], dtype=np.float32)
    cos_start = _cosine(a_te, start, y_te)

    # 2. ridge toward the start: (AᵀA + λI) W = AᵀY + λW₀, conjugate gradients, one column per dimension.
    w = start.copy()
    resid = a_tr_t @ y_tr + ridge * start - (a_tr_t @ (a_tr @ w) + ridge * w)
    direction = resid.copy()
    rs = (resid * resid).sum(axis=0)
    for _ in range(cg_iterations):
        m_dir = a_tr_t @ (a_tr @ direction) + ridge * direction
        alpha = rs / np.maximum((direction * m_dir).sum(axis=0), 1e-30)
        w += alpha * direction
        resid -= alpha * m_dir
        rs_next = (resid * resid).sum(axis=0)
        direction = resid + (rs_next / np.maximum(rs, 1e-30)) * direction
        rs = rs_next
    del resid, direction, m_dir
    cos_ridge = _cosine(a_te, w, y_te)

    # 3. Adam on -mean cosine, keeping the best held-out step. With `items`, the cosine is taken in the
    # metric of their centred covariance: what ranks items is x·d, so a direction all items share (MiniLM
    # vectors have a large common component) costs nothing, and directions they differ along cost most.
    to_metric, from_metric = _metric(items, w.shape[1])
    wm, y_trm, y_tem = w @ to_metric, y_tr @ to_metric, y_te @ to_metric
    best, best_cos, best_step = wm.copy(), _cosine(a_te, wm, y_tem), 0
    m1 = np.zeros_like(wm)
    m2 = np.zeros_like(wm)
    n = len(train)
    for step in range(1, adam_steps + 1):
        x = np.asarray(a_tr @ wm)
        norm = np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        dot = (x * y_trm).sum(axis=1, keepdims=True)
        x *= dot / norm**3
        x -= y_trm / norm
        grad = np.asarray(a_tr_t @ x) / n
        m1 *= 0.9
        m1 += 0.1 * grad
        m2 *= 0.999
        m2 += 0.001 * grad * grad
        wm -= learning_rate * (m1 / (1 - 0.9**step)) / (np.sqrt(m2 / (1 - 0.999**step)) + 1e-8)
        if step % 10 == 0 or step == adam_steps:
            c = _cosine(a_te, wm, y_tem)
            if c > best_cos:
                best, best_cos, best_step = wm.copy(), c, step
    best = best @ from_metric
    best_cos = _cosine(a_te, best, y_te)
    table = np.array(single_tokens, dtype=np.float32)
    table[used] = best
    report = DistillReport(
        texts=len(train),
        held_out=n_test,
        cosine_start=cos_start,
        cosine_ridge=cos_ridge,
        cosine_final=best_cos,
        adam_steps=best_step,
        seconds=time.perf_counter() - t0,
    )
    log.info("static query encoder: %s", report.as_dict())
    return table, report
