"""Typed settings, read once from the environment (and an optional `.env` file).

One frozen dataclass per concern; every field carries its environment variable name and a
one-line description in its metadata, which is also what the README's settings table lists.
`load_settings()` validates everything at start-up so that a bad value fails fast with a message
naming the variable, never later in the middle of a request.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import platformdirs
from dotenv import dotenv_values

from app.errors import ConfigError

MEMORY_PATTERN = re.compile(r"[1-9][0-9]*(kB|MB|GB|TB)?")

Environment = Literal["development", "production"]
EmbeddingProvider = Literal["local", "openai"]
ChunkStrategy = Literal["structure", "recursive", "fixed"]
RerankBackend = Literal["torch", "onnx", "onnx-int8"]
VectorBackend = Literal["auto", "faiss", "pgvector", "exact"]
VECTOR_BACKENDS: tuple[VectorBackend, ...] = get_args(VectorBackend)
FaissIndexKind = Literal["auto", "flat", "hnsw", "ivf"]
AuthMode = Literal["required", "off"]


def setting(env: str, default: Any, doc: str) -> Any:
    """Declare one setting: its environment variable, default and description."""
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = setting(
        "DATABASE_URL", None, "PostgreSQL URL (pgvector required); unset = embedded server"
    )
    data_dir: Path = setting(
        "HYBRID_DATA_DIR",
        Path(platformdirs.user_data_dir("hybrid-search")),
        "Directory for the embedded PostgreSQL data and other local state",
    )
    auto_migrate: bool = setting(
        "HYBRID_AUTO_MIGRATE", True, "Apply pending migrations at start-up instead of refusing"
    )
    pool_size: int = setting("HYBRID_DB_POOL_SIZE", 5, "Connections kept open per process")
    pool_overflow: int = setting(
        "HYBRID_DB_POOL_OVERFLOW", 10, "Connections opened beyond the pool under load"
    )
    pool_timeout_s: float = setting(
        "HYBRID_DB_POOL_TIMEOUT",
        5.0,
        "Seconds a request waits for a free connection before it is answered 503",
    )
    statement_timeout_ms: int = setting(
        "HYBRID_DB_STATEMENT_TIMEOUT",
        60_000,
        "Longest statement, in ms (`statement_timeout`; index builds, purges and collection "
        "deletes are exempt)",
    )
    lock_timeout_ms: int = setting(
        "HYBRID_DB_LOCK_TIMEOUT",
        5_000,
        "Longest wait for a row or table lock, in ms (`lock_timeout`); beyond it the request "
        "is answered 503 with Retry-After and nothing is written",
    )
    idle_in_transaction_ms: int = setting(
        "HYBRID_DB_IDLE_IN_TRANSACTION_TIMEOUT",
        60_000,
        "A transaction left idle this long is ended by the server "
        "(`idle_in_transaction_session_timeout`, in ms)",
    )
    write_retries: int = setting(
        "HYBRID_DB_WRITE_RETRIES",
        3,
        "Times a write that hit a deadlock or a serialization failure is run again",
    )


@dataclass(frozen=True)
class EmbeddingSettings:
    provider: EmbeddingProvider = setting(
        "HYBRID_EMBEDDING_PROVIDER", "local", "`local` (bundled model) or `openai`"
    )
    model: str = setting(
        "HYBRID_EMBEDDING_MODEL",
        "all-MiniLM-L6-v2",
        "Model name: the bundled model, a local sentence-transformers directory, or a remote model",
    )
    dimension: int = setting(
        "HYBRID_EMBEDDING_DIM", 384, "Vector dimension; must match the chunks.embedding column"
    )
    batch_size: int = setting("HYBRID_EMBEDDING_BATCH_SIZE", 64, "Texts per embedding call")
    max_tokens: int = setting(
        "HYBRID_EMBEDDING_MAX_TOKENS", 256, "Tokens the local model reads per text (rest cut)"
    )
    openai_api_key: str | None = setting(
        "OPENAI_API_KEY", None, "API key for the OpenAI-compatible embedding endpoint"
    )
    openai_base_url: str | None = setting(
        "OPENAI_BASE_URL", None, "Base URL of an OpenAI-compatible endpoint (unset = OpenAI)"
    )
    timeout_s: float = setting(
        "HYBRID_EMBEDDING_TIMEOUT", 30.0, "Seconds before one remote embedding call times out"
    )
    max_retries: int = setting(
        "HYBRID_EMBEDDING_MAX_RETRIES",
        5,
        "Retries (exponential backoff with jitter) on 429, 5xx and timeouts",
    )


@dataclass(frozen=True)
class ChunkSettings:
    strategy: ChunkStrategy = setting(
        "HYBRID_CHUNK_STRATEGY", "structure", "`structure`, `recursive` or `fixed`"
    )
    max_tokens: int = setting("HYBRID_CHUNK_TOKENS", 200, "Largest chunk, in model tokens")
    overlap_tokens: int = setting(
        "HYBRID_CHUNK_OVERLAP", 32, "Tokens repeated from the end of the previous chunk"
    )


@dataclass(frozen=True)
class IngestSettings:
    batch_documents: int = setting(
        "HYBRID_INGEST_BATCH", 512, "Documents written per transaction in bulk ingest"
    )
    writers: int = setting(
        "HYBRID_INGEST_WRITERS",
        2,
        "Batches written at once in bulk ingest, each in its own transaction and connection",
    )
    max_upload_bytes: int = setting(
        "HYBRID_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, "Largest accepted upload or file, in bytes"
    )
    max_document_chars: int = setting(
        "HYBRID_MAX_DOCUMENT_CHARS", 2_000_000, "Largest document text after extraction"
    )
    max_pdf_pages: int = setting(
        "HYBRID_MAX_PDF_PAGES", 2_000, "Most pages a PDF may have (more is refused, not cut)"
    )
    default_acl: tuple[str, ...] = setting(
        "HYBRID_DEFAULT_ACL",
        ("*",),
        "Comma-separated principals of documents ingested without an ACL (`*` = everyone)",
    )
    max_request_documents: int = setting(
        "HYBRID_MAX_REQUEST_DOCUMENTS", 1000, "Most JSON documents accepted in one API request"
    )
    work_mem: str = setting(
        "HYBRID_INGEST_WORK_MEM",
        "64MB",
        "`work_mem` of each batch's transaction: the BM25 statistics trigger keeps the batch's "
        "new rows and aggregates their lexemes in it (the server's usual 4MB spills to disk)",
    )
    index_memory: str = setting(
        "HYBRID_INGEST_INDEX_MEMORY",
        "1GB",
        "`maintenance_work_mem` of a collection's vector index build after a bulk load (the "
        "graph should fit: about 2 kB a chunk at 384 dimensions)",
    )


@dataclass(frozen=True)
class SearchSettings:
    max_query_chars: int = setting(
        "HYBRID_SEARCH_MAX_QUERY_CHARS", 50_000, "Longest accepted query text, in characters"
    )
    max_terms: int = setting(
        "HYBRID_SEARCH_MAX_TERMS", 128, "Most query lexemes the keyword leg uses (rarest first)"
    )
    max_k: int = setting("HYBRID_SEARCH_MAX_K", 100, "Largest `k` (hits per page)")
    max_window: int = setting(
        "HYBRID_SEARCH_MAX_WINDOW", 1000, "Largest `offset + k`: how deep pagination may go"
    )
    max_candidates: int = setting(
        "HYBRID_SEARCH_MAX_CANDIDATES", 1000, "Largest per-leg candidate depth a request may ask"
    )
    keyword_budget: int = setting(
        "HYBRID_SEARCH_KEYWORD_BUDGET",
        2_500,
        "Keyword candidates come from the rarest query lexemes while their chunk counts add up "
        "to at most this (see Search)",
    )
    ef_search: int = setting(
        "HYBRID_SEARCH_EF_SEARCH", 100, "Default HNSW `ef_search` (per request: `ef_search`)"
    )
    exact_threshold: int = setting(
        "HYBRID_SEARCH_EXACT_THRESHOLD",
        5_000,
        "Visible chunks at or below which both legs read them directly (every keyword match "
        "scored, exact vector scan); above 100k chunks it grows with the square root of the "
        "collection's size (see Search)",
    )
    max_scan_tuples: int = setting(
        "HYBRID_SEARCH_MAX_SCAN_TUPLES",
        50_000,
        "HNSW iterative scan budget (`hnsw.max_scan_tuples`)",
    )
    vector_backend: VectorBackend = setting(
        "HYBRID_VECTOR_BACKEND",
        "auto",
        "Default vector backend: `auto` (the FAISS cache when ready, else pgvector), `faiss`, "
        "`pgvector` or `exact` (per collection: setting `vector_backend`; per request: "
        "`vector_backend`)",
    )
    require_principals: bool = setting(
        "HYBRID_SEARCH_REQUIRE_PRINCIPALS",
        False,
        "Refuse searches without `principals` (otherwise they see only documents open to `*`)",
    )


@dataclass(frozen=True)
class RerankSettings:
    model: str = setting(
        "HYBRID_RERANK_MODEL",
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "Cross-encoder: a Hugging Face id found in the local cache, or a local directory; "
        "empty = no reranking",
    )
    depth: int = setting(
        "HYBRID_RERANK_DEPTH",
        20,
        "Fused candidates the cross-encoder rescores (per request: `rerank_depth`)",
    )
    max_depth: int = setting(
        "HYBRID_RERANK_MAX_DEPTH", 100, "Largest `rerank_depth` a request may ask"
    )
    passage_tokens: int = setting(
        "HYBRID_RERANK_PASSAGE_TOKENS",
        256,
        "Tokens of each passage (title, headings, text) the cross-encoder reads (rest cut)",
    )
    query_tokens: int = setting(
        "HYBRID_RERANK_QUERY_TOKENS", 64, "Tokens of the query the cross-encoder reads (rest cut)"
    )
    batch_size: int = setting("HYBRID_RERANK_BATCH_SIZE", 16, "Pairs scored per model call")
    budget_ms: float = setting(
        "HYBRID_RERANK_BUDGET_MS",
        2000.0,
        "Time one search may spend reranking; candidates not scored by then keep fused order",
    )
    backend: RerankBackend = setting(
        "HYBRID_RERANK_BACKEND",
        "torch",
        "`torch`, `onnx` or `onnx-int8` (ONNX Runtime; needs the `onnx` extra)",
    )
    threads: int = setting(
        "HYBRID_RERANK_THREADS", 0, "Threads of the ONNX backends (0 = one per physical core)"
    )


@dataclass(frozen=True)
class VectorCacheSettings:
    enabled: bool = setting(
        "HYBRID_FAISS_CACHE",
        True,
        "`hybrid serve` keeps an in-process FAISS cache of every collection's vectors",
    )
    directory: Path | None = setting(
        "HYBRID_FAISS_DIR", None, "Where cache snapshots live (unset = `<HYBRID_DATA_DIR>/faiss`)"
    )
    index: FaissIndexKind = setting(
        "HYBRID_FAISS_INDEX",
        "auto",
        "FAISS index type: `auto` (`flat` below HYBRID_FAISS_EXACT_BELOW vectors, else "
        "`hnsw`), `flat`, `hnsw` or `ivf`",
    )
    exact_below: int = setting(
        "HYBRID_FAISS_EXACT_BELOW", 20_000, "Collections with fewer vectors get an exact index"
    )
    hnsw_m: int = setting("HYBRID_FAISS_HNSW_M", 32, "HNSW links per vector (M)")
    hnsw_ef_construction: int = setting(
        "HYBRID_FAISS_HNSW_EF_CONSTRUCTION", 80, "HNSW build beam width (efConstruction)"
    )
    hnsw_ef_search: int = setting(
        "HYBRID_FAISS_HNSW_EF_SEARCH",
        512,
        "HNSW search beam width (efSearch; at least the number of candidates asked)",
    )
    ivf_nprobe: int = setting("HYBRID_FAISS_IVF_NPROBE", 32, "IVF lists searched a query")
    max_candidates: int = setting(
        "HYBRID_FAISS_MAX_CANDIDATES",
        2_000,
        "Most candidates the cache hands to SQL for one filtered search (over-fetch cap)",
    )
    rebuild_tombstones: float = setting(
        "HYBRID_FAISS_REBUILD_TOMBSTONES",
        0.1,
        "Share of deleted vectors still in an HNSW index at which it is rebuilt",
    )
    poll_s: float = setting(
        "HYBRID_FAISS_POLL_INTERVAL",
        5.0,
        "Seconds between change-log checks when no notification arrives",
    )
    snapshot_s: float = setting(
        "HYBRID_FAISS_SNAPSHOT_INTERVAL",
        300.0,
        "Seconds between snapshots of a changed cache (also written after every build)",
    )


@dataclass(frozen=True)
class CacheSettings:
    query_embeddings: int = setting(
        "HYBRID_CACHE_EMBEDDINGS", 1024, "Query vectors kept in process (LRU entries)"
    )
    results: int = setting(
        "HYBRID_CACHE_RESULTS", 1024, "Search results kept in process (LRU entries; 0 = off)"
    )
    results_ttl_s: float = setting(
        "HYBRID_CACHE_RESULTS_TTL",
        30.0,
        "Seconds a cached search result lives (any write to its collection ends it sooner)",
    )


@dataclass(frozen=True)
class AnswerSettings:
    models: tuple[str, ...] = setting(
        "HYBRID_ANSWER_MODELS",
        (),
        "Comma-separated chat models tried in order, each `model` or `model@base_url` "
        "(empty = extractive answers)",
    )
    api_key: str | None = setting(
        "HYBRID_ANSWER_API_KEY", None, "API key for the chat endpoints (default `OPENAI_API_KEY`)"
    )
    timeout_s: float = setting(
        "HYBRID_ANSWER_TIMEOUT", 30.0, "Seconds before one chat call times out"
    )
    max_retries: int = setting(
        "HYBRID_ANSWER_MAX_RETRIES",
        2,
        "Retries per model (exponential backoff with jitter) on 429, 5xx and timeouts",
    )
    breaker_failures: int = setting(
        "HYBRID_ANSWER_BREAKER_FAILURES",
        3,
        "Consecutive failed calls after which a model is skipped for the cool-down",
    )
    breaker_cooldown_s: float = setting(
        "HYBRID_ANSWER_BREAKER_COOLDOWN", 30.0, "Seconds a failing model is skipped"
    )
    k: int = setting(
        "HYBRID_ANSWER_K", 8, "Hits searched for an answer's context (per request: `k`)"
    )
    context_tokens: int = setting(
        "HYBRID_ANSWER_CONTEXT_TOKENS", 2000, "Token budget of the numbered context passages"
    )
    parent_tokens: int = setting(
        "HYBRID_ANSWER_PARENT_TOKENS",
        400,
        "A hit's whole parent section replaces it when the section has at most this many tokens",
    )
    max_tokens: int = setting(
        "HYBRID_ANSWER_MAX_TOKENS", 512, "Most tokens the model may answer with"
    )
    temperature: float = setting("HYBRID_ANSWER_TEMPERATURE", 0.0, "Sampling temperature")


@dataclass(frozen=True)
class ServerSettings:
    environment: Environment = setting(
        "HYBRID_ENV", "development", "`development` or `production` (stricter checks)"
    )
    host: str = setting("HYBRID_HOST", "127.0.0.1", "Interface `hybrid serve` listens on")
    port: int = setting("HYBRID_PORT", 8000, "Port `hybrid serve` listens on")
    log_level: str = setting("HYBRID_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_json: bool = setting("HYBRID_LOG_JSON", False, "Log as JSON lines instead of console text")
    max_in_flight: int = setting(
        "HYBRID_MAX_IN_FLIGHT",
        0,
        "Requests handled at once (0 = 4 per CPU core); beyond it requests are answered 503 "
        "with Retry-After at once (health, readiness and metrics are never refused)",
    )
    drain_s: float = setting(
        "HYBRID_DRAIN_TIMEOUT",
        30.0,
        "Seconds a stopping server (SIGTERM, Ctrl+C) lets requests in flight finish",
    )
    stuck_after_s: float = setting(
        "HYBRID_STUCK_AFTER",
        300.0,
        "`/health` answers 503 once a request has been in flight this long (every wait is "
        "bounded, so such a request means the process is stuck and should be restarted)",
    )
    allowed_hosts: tuple[str, ...] = setting(
        "HYBRID_ALLOWED_HOSTS",
        (),
        "Comma-separated Host header values accepted (`*.example.com` allowed); empty = the "
        "loopback names when bound to a loopback address, any host otherwise",
    )
    cors_origins: tuple[str, ...] = setting(
        "HYBRID_CORS_ORIGINS", (), "Comma-separated origins allowed by CORS (empty = CORS off)"
    )
    auth: AuthMode = setting(
        "HYBRID_AUTH",
        "required",
        "`required` (every `/v1` request carries an API key or a tenant token) or `off` "
        "(refused in production)",
    )
    auth_cache_ttl_s: float = setting(
        "HYBRID_AUTH_CACHE_TTL",
        2.0,
        "Seconds a key lookup is kept in process: a revoked key stops working within this "
        "time on every instance",
    )
    tenant_token_max_ttl_s: int = setting(
        "HYBRID_TENANT_TOKEN_MAX_TTL",
        3600,
        "Longest a tenant token may live, in seconds from now to its `exp`",
    )

    @property
    def in_flight_limit(self) -> int:
        """`max_in_flight`, or 4 per CPU core: past that the cores are saturated and more
        requests in flight only add latency (and starve the event loop that refuses them)."""
        return self.max_in_flight or 4 * (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    embedding: EmbeddingSettings
    chunking: ChunkSettings
    ingest: IngestSettings
    search: SearchSettings
    rerank: RerankSettings
    cache: CacheSettings
    vectors: VectorCacheSettings
    answer: AnswerSettings
    server: ServerSettings


SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "embedding": EmbeddingSettings,
    "chunking": ChunkSettings,
    "ingest": IngestSettings,
    "search": SearchSettings,
    "rerank": RerankSettings,
    "cache": CacheSettings,
    "vectors": VectorCacheSettings,
    "answer": AnswerSettings,
    "server": ServerSettings,
}


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Read and validate every setting; the process environment wins over `.env`."""
    source = _environment(environ, env_file)
    parts = {name: _load_section(cls, source) for name, cls in SECTIONS.items()}
    settings = Settings(**parts)
    _validate(settings)
    return settings


def documented_settings() -> list[tuple[str, str, Any]]:
    """(variable, description, default) for every setting, in declaration order."""
    return [
        (f.metadata["env"], f.metadata["doc"], f.default)
        for cls in SECTIONS.values()
        for f in fields(cls)
    ]


def _environment(environ: dict[str, str] | None, env_file: Path | None) -> dict[str, str]:
    if environ is not None:
        return environ
    path = env_file or Path(".env")
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**from_file, **os.environ}


def _load_section(cls: type[Any], source: dict[str, str]) -> Any:
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):
        raw = source.get(f.metadata["env"])
        if raw is not None and raw != "":
            values[f.name] = _convert(f.metadata["env"], raw, hints[f.name])
    return cls(**values)


def _convert(env: str, raw: str, hint: Any) -> Any:
    if get_origin(hint) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if get_origin(hint) in (Union, UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if get_origin(hint) is Literal:
        if raw not in get_args(hint):
            raise ConfigError(f"{env}: expected one of {', '.join(get_args(hint))}, got {raw!r}")
        return raw
    try:
        return _parse_bool(raw) if hint is bool else hint(raw)
    except ValueError as exc:
        raise ConfigError(f"{env}: expected {hint.__name__}, got {raw!r}") from exc


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _validate(s: Settings) -> None:
    _require(s.embedding.dimension > 0, "HYBRID_EMBEDDING_DIM must be positive")
    _require(s.embedding.batch_size >= 1, "HYBRID_EMBEDDING_BATCH_SIZE must be at least 1")
    _require(s.chunking.max_tokens >= 16, "HYBRID_CHUNK_TOKENS must be at least 16")
    _require(
        0 <= s.chunking.overlap_tokens < s.chunking.max_tokens // 2,
        "HYBRID_CHUNK_OVERLAP must be at least 0 and below half of HYBRID_CHUNK_TOKENS",
    )
    _require(s.ingest.batch_documents >= 1, "HYBRID_INGEST_BATCH must be at least 1")
    _require(s.ingest.writers >= 1, "HYBRID_INGEST_WRITERS must be at least 1")
    _require(s.ingest.max_upload_bytes >= 1, "HYBRID_MAX_UPLOAD_BYTES must be positive")
    _require(s.ingest.max_pdf_pages >= 1, "HYBRID_MAX_PDF_PAGES must be at least 1")
    for name, value in (
        ("HYBRID_INGEST_INDEX_MEMORY", s.ingest.index_memory),
        ("HYBRID_INGEST_WORK_MEM", s.ingest.work_mem),
    ):
        _require(
            MEMORY_PATTERN.fullmatch(value) is not None,
            f"{name}: expected a PostgreSQL memory size such as 512MB or 2GB, got {value!r}",
        )
    _validate_database(s.database)
    _validate_server(s.server)
    _validate_access(s.server)
    _validate_search(s.search)
    _validate_rerank(s.rerank)
    _validate_cache(s.cache)
    _validate_vectors(s.vectors)
    _validate_answer(s.answer)
    if s.embedding.provider == "openai" and s.server.environment == "production":
        _require(bool(s.embedding.openai_api_key), "OPENAI_API_KEY is required in production")
    if s.server.environment == "production":
        _require(
            s.database.url is not None,
            "DATABASE_URL is required in production (the embedded server is for development)",
        )


def _validate_database(s: DatabaseSettings) -> None:
    _require(s.pool_size >= 1, "HYBRID_DB_POOL_SIZE must be at least 1")
    _require(s.pool_overflow >= 0, "HYBRID_DB_POOL_OVERFLOW must not be negative")
    _require(s.pool_timeout_s > 0, "HYBRID_DB_POOL_TIMEOUT must be positive")
    for name, value in (
        ("HYBRID_DB_STATEMENT_TIMEOUT", s.statement_timeout_ms),
        ("HYBRID_DB_LOCK_TIMEOUT", s.lock_timeout_ms),
        ("HYBRID_DB_IDLE_IN_TRANSACTION_TIMEOUT", s.idle_in_transaction_ms),
    ):
        _require(value >= 1, f"{name} must be at least 1 ms (every wait has a bound)")
    _require(s.write_retries >= 0, "HYBRID_DB_WRITE_RETRIES must not be negative")


def _validate_server(s: ServerSettings) -> None:
    _require(s.max_in_flight >= 0, "HYBRID_MAX_IN_FLIGHT must not be negative")
    _require(s.drain_s >= 0, "HYBRID_DRAIN_TIMEOUT must not be negative")
    _require(s.stuck_after_s > 0, "HYBRID_STUCK_AFTER must be positive")


def _validate_access(s: ServerSettings) -> None:
    _require(
        s.auth == "required" or s.environment == "development",
        "HYBRID_AUTH=off is refused in production: every request would act as an admin",
    )
    _require(s.auth_cache_ttl_s > 0, "HYBRID_AUTH_CACHE_TTL must be positive")
    _require(s.tenant_token_max_ttl_s >= 1, "HYBRID_TENANT_TOKEN_MAX_TTL must be at least 1")


def _validate_search(s: SearchSettings) -> None:
    _require(s.max_query_chars >= 1, "HYBRID_SEARCH_MAX_QUERY_CHARS must be positive")
    _require(1 <= s.max_terms <= 1000, "HYBRID_SEARCH_MAX_TERMS must be between 1 and 1000")
    _require(s.max_k >= 1, "HYBRID_SEARCH_MAX_K must be at least 1")
    _require(
        s.max_window >= s.max_k, "HYBRID_SEARCH_MAX_WINDOW must be at least HYBRID_SEARCH_MAX_K"
    )
    _require(
        s.max_candidates >= s.max_window,
        "HYBRID_SEARCH_MAX_CANDIDATES must be at least HYBRID_SEARCH_MAX_WINDOW",
    )
    _require(s.keyword_budget >= 1, "HYBRID_SEARCH_KEYWORD_BUDGET must be positive")
    _require(1 <= s.ef_search <= 1000, "HYBRID_SEARCH_EF_SEARCH must be between 1 and 1000")
    _require(s.exact_threshold >= 0, "HYBRID_SEARCH_EXACT_THRESHOLD must not be negative")
    _require(s.max_scan_tuples >= 1, "HYBRID_SEARCH_MAX_SCAN_TUPLES must be positive")


def _validate_rerank(s: RerankSettings) -> None:
    _require(s.max_depth >= 1, "HYBRID_RERANK_MAX_DEPTH must be at least 1")
    _require(
        1 <= s.depth <= s.max_depth,
        "HYBRID_RERANK_DEPTH must be between 1 and HYBRID_RERANK_MAX_DEPTH",
    )
    _require(s.passage_tokens >= 16, "HYBRID_RERANK_PASSAGE_TOKENS must be at least 16")
    _require(s.query_tokens >= 1, "HYBRID_RERANK_QUERY_TOKENS must be at least 1")
    _require(
        s.passage_tokens + s.query_tokens + 3 <= 512,
        "HYBRID_RERANK_PASSAGE_TOKENS + HYBRID_RERANK_QUERY_TOKENS must be at most 509 "
        "(a cross-encoder reads 512 tokens, 3 of them separators)",
    )
    _require(s.batch_size >= 1, "HYBRID_RERANK_BATCH_SIZE must be at least 1")
    _require(s.budget_ms > 0, "HYBRID_RERANK_BUDGET_MS must be positive")
    _require(s.threads >= 0, "HYBRID_RERANK_THREADS must not be negative")


def _validate_cache(s: CacheSettings) -> None:
    _require(s.query_embeddings >= 1, "HYBRID_CACHE_EMBEDDINGS must be at least 1")
    _require(s.results >= 0, "HYBRID_CACHE_RESULTS must not be negative")
    _require(s.results_ttl_s > 0, "HYBRID_CACHE_RESULTS_TTL must be positive")


def _validate_vectors(s: VectorCacheSettings) -> None:
    _require(s.exact_below >= 0, "HYBRID_FAISS_EXACT_BELOW must not be negative")
    _require(2 <= s.hnsw_m <= 256, "HYBRID_FAISS_HNSW_M must be between 2 and 256")
    _require(s.hnsw_ef_construction >= 1, "HYBRID_FAISS_HNSW_EF_CONSTRUCTION must be at least 1")
    _require(s.hnsw_ef_search >= 1, "HYBRID_FAISS_HNSW_EF_SEARCH must be at least 1")
    _require(s.ivf_nprobe >= 1, "HYBRID_FAISS_IVF_NPROBE must be at least 1")
    _require(s.max_candidates >= 1, "HYBRID_FAISS_MAX_CANDIDATES must be at least 1")
    _require(0 < s.rebuild_tombstones <= 1, "HYBRID_FAISS_REBUILD_TOMBSTONES must be in (0, 1]")
    _require(s.poll_s > 0, "HYBRID_FAISS_POLL_INTERVAL must be positive")
    _require(s.snapshot_s > 0, "HYBRID_FAISS_SNAPSHOT_INTERVAL must be positive")


def _validate_answer(s: AnswerSettings) -> None:
    for entry in s.models:
        model, at, base_url = entry.partition("@")
        _require(
            bool(model.strip()) and (not at or base_url.startswith(("http://", "https://"))),
            f"HYBRID_ANSWER_MODELS: expected `model` or `model@http(s)://host/v1`, got {entry!r}",
        )
    _require(s.timeout_s > 0, "HYBRID_ANSWER_TIMEOUT must be positive")
    _require(s.max_retries >= 0, "HYBRID_ANSWER_MAX_RETRIES must not be negative")
    _require(s.breaker_failures >= 1, "HYBRID_ANSWER_BREAKER_FAILURES must be at least 1")
    _require(s.breaker_cooldown_s >= 0, "HYBRID_ANSWER_BREAKER_COOLDOWN must not be negative")
    _require(1 <= s.k <= 100, "HYBRID_ANSWER_K must be between 1 and 100")
    _require(s.context_tokens >= 64, "HYBRID_ANSWER_CONTEXT_TOKENS must be at least 64")
    _require(s.parent_tokens >= 0, "HYBRID_ANSWER_PARENT_TOKENS must not be negative")
    _require(s.max_tokens >= 1, "HYBRID_ANSWER_MAX_TOKENS must be at least 1")
    _require(0 <= s.temperature <= 2, "HYBRID_ANSWER_TEMPERATURE must be between 0 and 2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
