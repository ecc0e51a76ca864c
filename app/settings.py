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
QueryLogMode = Literal["redacted", "on", "off"]
LogFormat = Literal["auto", "json", "console"]
EmbeddingPrecision = Literal["auto", "fp32", "bf16", "int8"]


@dataclass(frozen=True)
class Bounds:
    """What a number setting accepts: at least `low` (or more than it, when `open_low`) and at
    most `high`; or, for text, a full match of `pattern` (described as `expected`)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    pattern: re.Pattern[str] | None = None
    expected: str = ""

    def check(self, env: str, value: Any) -> None:
        if self.pattern is not None:
            if self.pattern.fullmatch(value) is None:
                raise ConfigError(f"{env}: expected {self.expected}, got {value!r}")
            return
        too_low = self.low is not None and (
            value <= self.low if self.open_low else value < self.low
        )
        if too_low or (self.high is not None and value > self.high):
            raise ConfigError(f"{env} must {self.describe()}, got {value!r}")

    def summary(self) -> str:
        """The rule in a few characters, for tables: `≥ 1`, `> 0`, `1 to 1000`, `(0, 1]`."""
        if self.pattern is not None:
            return self.expected
        low, high = _number(self.low), _number(self.high)
        if self.open_low:
            return f"> {low}" if high is None else f"({low}, {high}]"
        if high is not None:
            return f"{low} to {high}" if low is not None else f"≤ {high}"
        return f"≥ {low}"

    def describe(self) -> str:
        """The rule, as in "HYBRID_X must ...": `be at least 1`, `be positive`..."""
        if self.pattern is not None:
            return f"be {self.expected}"
        low, high = _number(self.low), _number(self.high)
        if self.open_low:
            return "be positive" if self.low == 0 and high is None else f"be in ({low}, {high}]"
        if high is not None:
            return f"be between {low} and {high}" if low is not None else f"be at most {high}"
        return "not be negative" if self.low == 0 else f"be at least {low}"


def at_least(low: float, high: float | None = None) -> Bounds:
    return Bounds(low=low, high=high)


POSITIVE = Bounds(low=0, open_low=True)
NOT_NEGATIVE = Bounds(low=0)
MEMORY_SIZE = Bounds(
    pattern=MEMORY_PATTERN, expected="a PostgreSQL memory size such as 512MB or 2GB"
)


def setting(env: str, default: Any, doc: str, bounds: Bounds | None = None) -> Any:
    """Declare one setting: its environment variable, default, description and, for numbers
    and sizes, the values it accepts (checked at start-up, with a message naming it)."""
    return field(default=default, metadata={"env": env, "doc": doc, "bounds": bounds})


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"


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
    pool_size: int = setting(
        "HYBRID_DB_POOL_SIZE", 5, "Connections kept open per process", at_least(1)
    )
    pool_overflow: int = setting(
        "HYBRID_DB_POOL_OVERFLOW", 10, "Connections opened beyond the pool under load", NOT_NEGATIVE
    )
    pool_timeout_s: float = setting(
        "HYBRID_DB_POOL_TIMEOUT",
        5.0,
        "Seconds a request waits for a free connection before it is answered 503",
        POSITIVE,
    )
    statement_timeout_ms: int = setting(
        "HYBRID_DB_STATEMENT_TIMEOUT",
        60_000,
        "Longest statement, in ms (`statement_timeout`; index builds, purges and collection "
        "deletes are exempt)",
        at_least(1),
    )
    lock_timeout_ms: int = setting(
        "HYBRID_DB_LOCK_TIMEOUT",
        5_000,
        "Longest wait for a row or table lock, in ms (`lock_timeout`); beyond it the request "
        "is answered 503 with Retry-After and nothing is written",
        at_least(1),
    )
    idle_in_transaction_ms: int = setting(
        "HYBRID_DB_IDLE_IN_TRANSACTION_TIMEOUT",
        60_000,
        "A transaction left idle this long is ended by the server "
        "(`idle_in_transaction_session_timeout`, in ms)",
        at_least(1),
    )
    write_retries: int = setting(
        "HYBRID_DB_WRITE_RETRIES",
        3,
        "Times a write that hit a deadlock or a serialization failure is run again",
        NOT_NEGATIVE,
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
        "HYBRID_EMBEDDING_DIM",
        384,
        "Vector dimension of the configured model (new collections get it; each collection "
        "keeps its own)",
        at_least(1),
    )
    batch_size: int = setting(
        "HYBRID_EMBEDDING_BATCH_SIZE", 64, "Texts per embedding call", at_least(1)
    )
    precision: EmbeddingPrecision = setting(
        "HYBRID_EMBEDDING_PRECISION",
        "auto",
        "How the bundled model computes: `fp32`; `bf16` (bfloat16 autocast, on CPUs with "
        "bfloat16 units only); `int8` (ONNX Runtime with int8 weights, exported once into "
        "the data directory; needs the `onnx` extra); `auto` picks `bf16` on a CPU with "
        "bfloat16 units, else `int8` on a CPU with int8 dot-product units (VNNI) when ONNX "
        "Runtime is installed, else `fp32`. Part of the model's identity: a collection keeps "
        "the precision it was embedded with",
    )
    max_tokens: int = setting(
        "HYBRID_EMBEDDING_MAX_TOKENS",
        256,
        "Tokens the local model reads per text (rest cut)",
        at_least(1),
    )
    openai_api_key: str | None = setting(
        "OPENAI_API_KEY", None, "API key for the OpenAI-compatible embedding endpoint"
    )
    openai_base_url: str | None = setting(
        "OPENAI_BASE_URL", None, "Base URL of an OpenAI-compatible endpoint (unset = OpenAI)"
    )
    timeout_s: float = setting(
        "HYBRID_EMBEDDING_TIMEOUT",
        30.0,
        "Seconds before one remote embedding call times out",
        POSITIVE,
    )
    max_retries: int = setting(
        "HYBRID_EMBEDDING_MAX_RETRIES",
        5,
        "Retries (exponential backoff with jitter) on 429, 5xx and timeouts",
        NOT_NEGATIVE,
    )
    concurrency: int = setting(
        "HYBRID_EMBEDDING_CONCURRENCY",
        4,
        "Remote embedding calls in flight at once (the batches of one embed call, sent in "
        "parallel; a 429 is retried after the provider's Retry-After)",
        at_least(1, 64),
    )


@dataclass(frozen=True)
class ChunkSettings:
    strategy: ChunkStrategy = setting(
        "HYBRID_CHUNK_STRATEGY", "structure", "`structure`, `recursive` or `fixed`"
    )
    max_tokens: int = setting(
        "HYBRID_CHUNK_TOKENS", 200, "Largest chunk, in model tokens", at_least(16)
    )
    overlap_tokens: int = setting(
        "HYBRID_CHUNK_OVERLAP",
        32,
        "Tokens repeated from the end of the previous chunk",
        NOT_NEGATIVE,
    )


@dataclass(frozen=True)
class IngestSettings:
    batch_documents: int = setting(
        "HYBRID_INGEST_BATCH", 512, "Documents written per transaction in bulk ingest", at_least(1)
    )
    writers: int = setting(
        "HYBRID_INGEST_WRITERS",
        2,
        "Batches written at once in bulk ingest, each in its own transaction and connection",
        at_least(1),
    )
    max_upload_bytes: int = setting(
        "HYBRID_MAX_UPLOAD_BYTES",
        20 * 1024 * 1024,
        "Largest accepted upload or file, in bytes",
        at_least(1),
    )
    max_document_chars: int = setting(
        "HYBRID_MAX_DOCUMENT_CHARS",
        2_000_000,
        "Largest document text after extraction",
        at_least(1),
    )
    max_pdf_pages: int = setting(
        "HYBRID_MAX_PDF_PAGES",
        2_000,
        "Most pages a PDF may have (more is refused, not cut)",
        at_least(1),
    )
    default_acl: tuple[str, ...] = setting(
        "HYBRID_DEFAULT_ACL",
        ("*",),
        "Comma-separated principals of documents ingested without an ACL (`*` = everyone)",
    )
    max_request_documents: int = setting(
        "HYBRID_MAX_REQUEST_DOCUMENTS",
        1000,
        "Most JSON documents accepted in one API request",
        at_least(1),
    )
    work_mem: str = setting(
        "HYBRID_INGEST_WORK_MEM",
        "64MB",
        "`work_mem` of each batch's transaction: the BM25 statistics trigger keeps the batch's "
        "new rows and aggregates their lexemes in it (the server's usual 4MB spills to disk)",
        MEMORY_SIZE,
    )
    index_memory: str = setting(
        "HYBRID_INGEST_INDEX_MEMORY",
        "1GB",
        "`maintenance_work_mem` of a collection's vector index build after a bulk load (the "
        "graph should fit: about 2 kB a chunk at 384 dimensions)",
        MEMORY_SIZE,
    )
    redact: bool = setting(
        "HYBRID_INGEST_REDACT",
        False,
        "Redact personal data (emails, phone numbers, card and id numbers; see "
        "HYBRID_REDACTOR) from documents before they are stored",
    )


@dataclass(frozen=True)
class SearchSettings:
    max_query_chars: int = setting(
        "HYBRID_SEARCH_MAX_QUERY_CHARS",
        50_000,
        "Longest accepted query text, in characters",
        at_least(1),
    )
    max_terms: int = setting(
        "HYBRID_SEARCH_MAX_TERMS",
        128,
        "Most query lexemes the keyword leg uses (rarest first)",
        at_least(1, 1000),
    )
    max_k: int = setting("HYBRID_SEARCH_MAX_K", 100, "Largest `k` (hits per page)", at_least(1))
    max_window: int = setting(
        "HYBRID_SEARCH_MAX_WINDOW",
        1000,
        "Largest `offset + k`: how deep pagination may go",
        at_least(1),
    )
    max_candidates: int = setting(
        "HYBRID_SEARCH_MAX_CANDIDATES",
        1000,
        "Largest per-leg candidate depth a request may ask",
        at_least(1),
    )
    keyword_budget: int = setting(
        "HYBRID_SEARCH_KEYWORD_BUDGET",
        2_500,
        "Keyword candidates come from the rarest query lexemes while their chunk counts add up "
        "to at most this (see Ranking)",
        at_least(1),
    )
    ef_search: int = setting(
        "HYBRID_SEARCH_EF_SEARCH",
        100,
        "Default HNSW `ef_search` (per request: `ef_search`)",
        at_least(1, 1000),
    )
    exact_threshold: int = setting(
        "HYBRID_SEARCH_EXACT_THRESHOLD",
        5_000,
        "Visible chunks at or below which both legs read them directly (every keyword match "
        "scored, exact vector scan); above 100k chunks it grows with the square root of the "
        "collection's size (see Ranking)",
        NOT_NEGATIVE,
    )
    max_scan_tuples: int = setting(
        "HYBRID_SEARCH_MAX_SCAN_TUPLES",
        50_000,
        "HNSW iterative scan budget (`hnsw.max_scan_tuples`)",
        at_least(1),
    )
    vector_backend: VectorBackend = setting(
        "HYBRID_VECTOR_BACKEND",
        "auto",
        "Default vector backend: `auto` (the FAISS cache when ready, else pgvector), `faiss`, "
        "`pgvector` or `exact` (per collection: setting `vector_backend`; per request: "
        "`vector_backend`)",
    )
    generic_plan_below: int = setting(
        "HYBRID_SEARCH_GENERIC_PLAN_BELOW",
        50_000,
        "Collections of fewer chunks run the search statement on a plan made once per "
        "database connection; larger ones are planned for each search (0: never)",
        NOT_NEGATIVE,
    )
    keyword_cache: bool = setting(
        "HYBRID_KEYWORD_CACHE",
        True,
        "`hybrid serve` keeps an in-process keyword index of every collection, from which the "
        "keyword leg takes its exact BM25 top candidates (see Ranking)",
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
        "`off` = no reranking",
    )
    depth: int = setting(
        "HYBRID_RERANK_DEPTH",
        20,
        "Fused candidates the cross-encoder rescores (per request: `rerank_depth`)",
        at_least(1),
    )
    max_depth: int = setting(
        "HYBRID_RERANK_MAX_DEPTH", 100, "Largest `rerank_depth` a request may ask", at_least(1)
    )
    passage_tokens: int = setting(
        "HYBRID_RERANK_PASSAGE_TOKENS",
        256,
        "Tokens of each passage (title, headings, text) the cross-encoder reads (rest cut)",
        at_least(16),
    )
    query_tokens: int = setting(
        "HYBRID_RERANK_QUERY_TOKENS",
        64,
        "Tokens of the query the cross-encoder reads (rest cut)",
        at_least(1),
    )
    batch_size: int = setting(
        "HYBRID_RERANK_BATCH_SIZE", 16, "Pairs scored per model call", at_least(1)
    )
    budget_ms: float = setting(
        "HYBRID_RERANK_BUDGET_MS",
        2000.0,
        "Time one search may spend reranking; candidates not scored by then keep fused order",
        POSITIVE,
    )
    backend: RerankBackend = setting(
        "HYBRID_RERANK_BACKEND",
        "torch",
        "`torch`, `onnx` or `onnx-int8` (ONNX Runtime; needs the `onnx` extra)",
    )
    threads: int = setting(
        "HYBRID_RERANK_THREADS",
        0,
        "Threads of the ONNX backends (0 = one per physical core)",
        NOT_NEGATIVE,
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
        "HYBRID_FAISS_EXACT_BELOW",
        20_000,
        "Collections with fewer vectors get an exact index",
        NOT_NEGATIVE,
    )
    hnsw_m: int = setting("HYBRID_FAISS_HNSW_M", 32, "HNSW links per vector (M)", at_least(2, 256))
    hnsw_ef_construction: int = setting(
        "HYBRID_FAISS_HNSW_EF_CONSTRUCTION",
        80,
        "HNSW build beam width (efConstruction)",
        at_least(1),
    )
    hnsw_ef_search: int = setting(
        "HYBRID_FAISS_HNSW_EF_SEARCH",
        512,
        "HNSW search beam width (efSearch; at least the number of candidates asked)",
        at_least(1),
    )
    ivf_nprobe: int = setting(
        "HYBRID_FAISS_IVF_NPROBE", 32, "IVF lists searched a query", at_least(1)
    )
    max_candidates: int = setting(
        "HYBRID_FAISS_MAX_CANDIDATES",
        2_000,
        "Most candidates the cache hands to SQL for one filtered search (over-fetch cap)",
        at_least(1),
    )
    rebuild_tombstones: float = setting(
        "HYBRID_FAISS_REBUILD_TOMBSTONES",
        0.1,
        "Share of deleted vectors still in an HNSW index at which it is rebuilt",
        Bounds(low=0, high=1, open_low=True),
    )
    poll_s: float = setting(
        "HYBRID_FAISS_POLL_INTERVAL",
        5.0,
        "Seconds between change-log checks when no notification arrives",
        POSITIVE,
    )
    snapshot_s: float = setting(
        "HYBRID_FAISS_SNAPSHOT_INTERVAL",
        300.0,
        "Seconds between snapshots of a changed cache (also written after every build)",
        POSITIVE,
    )


@dataclass(frozen=True)
class CacheSettings:
    query_embeddings: int = setting(
        "HYBRID_CACHE_EMBEDDINGS", 1024, "Query vectors kept in process (LRU entries)", at_least(1)
    )
    results: int = setting(
        "HYBRID_CACHE_RESULTS",
        1024,
        "Search results kept in process (LRU entries; 0 = off)",
        NOT_NEGATIVE,
    )
    results_ttl_s: float = setting(
        "HYBRID_CACHE_RESULTS_TTL",
        30.0,
        "Seconds a cached search result lives (any write to its collection ends it sooner)",
        POSITIVE,
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
        "HYBRID_ANSWER_TIMEOUT", 30.0, "Seconds before one chat call times out", POSITIVE
    )
    max_retries: int = setting(
        "HYBRID_ANSWER_MAX_RETRIES",
        2,
        "Retries per model (exponential backoff with jitter) on 429, 5xx and timeouts",
        NOT_NEGATIVE,
    )
    breaker_failures: int = setting(
        "HYBRID_ANSWER_BREAKER_FAILURES",
        3,
        "Consecutive failed calls after which a model is skipped for the cool-down",
        at_least(1),
    )
    breaker_cooldown_s: float = setting(
        "HYBRID_ANSWER_BREAKER_COOLDOWN", 30.0, "Seconds a failing model is skipped", NOT_NEGATIVE
    )
    k: int = setting(
        "HYBRID_ANSWER_K",
        8,
        "Hits searched for an answer's context (per request: `k`)",
        at_least(1, 100),
    )
    cut_relative: float = setting(
        "HYBRID_ANSWER_CUT_RELATIVE",
        0.0,
        "An answer's context keeps only hits scoring at least this share of the best hit's "
        "fused score (0 = off; per request: `cut`)",
        at_least(0, 1),
    )
    cut_gap: float = setting(
        "HYBRID_ANSWER_CUT_GAP",
        0.0,
        "An answer's context ends before the first hit scoring less than 1 minus this share of "
        "the hit before it (0 = off; per request: `cut`)",
        at_least(0, 1),
    )
    context_tokens: int = setting(
        "HYBRID_ANSWER_CONTEXT_TOKENS",
        2000,
        "Token budget of the numbered context passages",
        at_least(64),
    )
    parent_tokens: int = setting(
        "HYBRID_ANSWER_PARENT_TOKENS",
        400,
        "A hit's whole parent section replaces it when the section has at most this many tokens",
        NOT_NEGATIVE,
    )
    max_tokens: int = setting(
        "HYBRID_ANSWER_MAX_TOKENS", 512, "Most tokens the model may answer with", at_least(1)
    )
    temperature: float = setting(
        "HYBRID_ANSWER_TEMPERATURE", 0.0, "Sampling temperature", at_least(0, 2)
    )


@dataclass(frozen=True)
class ServerSettings:
    environment: Environment = setting(
        "HYBRID_ENV", "development", "`development` or `production` (stricter checks)"
    )
    host: str = setting("HYBRID_HOST", "127.0.0.1", "Interface `hybrid serve` listens on")
    port: int = setting("HYBRID_PORT", 8000, "Port `hybrid serve` listens on", at_least(0, 65535))
    log_level: str = setting("HYBRID_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = setting(
        "HYBRID_LOG_FORMAT",
        "auto",
        "`json` (one JSON object a line), `console` (text for people) or `auto` (console on a "
        "terminal, JSON otherwise)",
    )
    max_in_flight: int = setting(
        "HYBRID_MAX_IN_FLIGHT",
        0,
        "Requests handled at once (0 = 4 per CPU core); beyond it requests are answered 503 "
        "with Retry-After at once (health, readiness and metrics are never refused)",
        NOT_NEGATIVE,
    )
    drain_s: float = setting(
        "HYBRID_DRAIN_TIMEOUT",
        30.0,
        "Seconds a stopping server (SIGTERM, Ctrl+C) lets requests in flight finish",
        NOT_NEGATIVE,
    )
    stuck_after_s: float = setting(
        "HYBRID_STUCK_AFTER",
        300.0,
        "`/health` answers 503 once a request has been in flight this long (every wait is "
        "bounded, so such a request means the process is stuck and should be restarted)",
        POSITIVE,
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
        POSITIVE,
    )
    tenant_token_max_ttl_s: int = setting(
        "HYBRID_TENANT_TOKEN_MAX_TTL",
        3600,
        "Longest a tenant token may live, in seconds from now to its `exp`",
        at_least(1),
    )
    secure_cookies: bool = setting(
        "HYBRID_SECURE_COOKIES",
        False,
        "Mark the web pages' cookies Secure even when the service itself sees plain HTTP (set it "
        "behind a proxy that terminates TLS); over HTTPS they always are",
    )
    eval_reports: Path = setting(
        "HYBRID_EVAL_REPORTS",
        Path("eval-results"),
        "Where the evaluation page finds `hybrid eval`'s JSON reports (its `--out` default)",
    )

    @property
    def in_flight_limit(self) -> int:
        """`max_in_flight`, or 4 per CPU core: past that the cores are saturated and more
        requests in flight only add latency (and starve the event loop that refuses them)."""
        return self.max_in_flight or 4 * (os.cpu_count() or 1)


@dataclass(frozen=True)
class QueryLogSettings:
    mode: QueryLogMode = setting(
        "HYBRID_QUERY_LOG",
        "redacted",
        "Record every search and answer: `redacted` (personal data in queries and comments "
        "replaced first, see HYBRID_REDACTOR), `on` (as asked) or `off`",
    )
    retention_days: int = setting(
        "HYBRID_QUERY_LOG_RETENTION_DAYS",
        30,
        "Days of searches, answers and feedback kept; older days are dropped whole",
        at_least(1),
    )
    queue: int = setting(
        "HYBRID_QUERY_LOG_QUEUE",
        10_000,
        "Entries waiting to be written at most; beyond it new ones are dropped and counted",
        at_least(1),
    )
    flush_s: float = setting(
        "HYBRID_QUERY_LOG_FLUSH_INTERVAL",
        1.0,
        "Seconds between writes of the waiting entries",
        Bounds(low=0, high=1, open_low=True),
    )
    redactor: str = setting(
        "HYBRID_REDACTOR",
        "",
        "`module:function` taking and returning a string, used instead of the built-in "
        "redaction (empty = built-in)",
    )


@dataclass(frozen=True)
class ObservabilitySettings:
    metrics: bool = setting(
        "HYBRID_METRICS",
        True,
        "Collect the request, search, ingest and answer metrics `/metrics` serves (the gauges "
        "read at scrape time are served either way)",
    )
    access_log: bool = setting(
        "HYBRID_ACCESS_LOG",
        True,
        "Log one line per request: method, route, status, duration, request id and search id",
    )
    otel_endpoint: str = setting(
        "HYBRID_OTEL_ENDPOINT",
        "",
        "OpenTelemetry traces go to this OTLP/HTTP endpoint (e.g. "
        "`http://collector:4318/v1/traces`); empty = no tracing",
    )
    otel_service: str = setting(
        "HYBRID_OTEL_SERVICE_NAME", "hybrid-search", "The `service.name` of the traces"
    )
    otel_sample_ratio: float = setting(
        "HYBRID_OTEL_SAMPLE_RATIO",
        1.0,
        "Share of requests traced (parent-based: a caller's sampled `traceparent` is followed)",
        Bounds(low=0, high=1),
    )


@dataclass(frozen=True)
class JobSettings:
    uploads_dir: Path | None = setting(
        "HYBRID_UPLOADS_DIR",
        None,
        "Where files waiting for their ingest job are kept, one copy per content hash (unset = "
        "`uploads` in HYBRID_DATA_DIR); workers on other machines need it shared",
    )
    worker_in_serve: bool = setting(
        "HYBRID_SERVE_WORKER",
        True,
        "`hybrid serve` runs a worker in process (off: jobs wait for `hybrid worker` processes)",
    )
    concurrency: int = setting(
        "HYBRID_WORKER_CONCURRENCY",
        1,
        "Jobs a worker runs at once (each embeds with the process's one model)",
        at_least(1, 64),
    )
    inline_max_documents: int = setting(
        "HYBRID_INGEST_WAIT_MAX_DOCUMENTS",
        100,
        "Most documents an ingest request may have with `?wait=true` (written during the "
        "request instead of by a job)",
        at_least(1),
    )
    attempts: int = setting(
        "HYBRID_JOB_ATTEMPTS",
        6,
        "Runs a job gets when it stops on a transient failure (database restart, embedding "
        "provider down): the first and its retries",
        at_least(1, 100),
    )
    retry_wait_s: float = setting(
        "HYBRID_JOB_RETRY_WAIT",
        2.0,
        "Seconds before a job's first retry; each further retry waits twice as long as the one "
        "before",
        POSITIVE,
    )
    heartbeat_s: float = setting(
        "HYBRID_WORKER_HEARTBEAT",
        10.0,
        "Seconds between a worker's heartbeats",
        POSITIVE,
    )
    stalled_after_s: float = setting(
        "HYBRID_WORKER_STALLED_AFTER",
        30.0,
        "A running job whose worker sent no heartbeat for this long (killed, machine lost) is "
        "queued again and resumes where its writes stopped",
        POSITIVE,
    )
    poll_s: float = setting(
        "HYBRID_WORKER_POLL_INTERVAL",
        5.0,
        "Seconds between a worker's looks at the queue (new jobs also wake it at once through "
        "LISTEN/NOTIFY) and for cancel requests",
        POSITIVE,
    )
    retention_days: int = setting(
        "HYBRID_JOB_RETENTION_DAYS",
        30,
        "Days a finished job (done, failed or cancelled) is kept before it is deleted",
        at_least(1),
    )
    reembed_batch: int = setting(
        "HYBRID_REEMBED_BATCH",
        256,
        "Chunks a re-embedding embeds and writes per transaction (a resumed one starts again "
        "at the first chunk without its new vector)",
        at_least(1, 100_000),
    )

    def uploads(self, data_dir: Path) -> Path:
        return self.uploads_dir or data_dir / "uploads"


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
    query_log: QueryLogSettings
    observability: ObservabilitySettings
    jobs: JobSettings


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
    "query_log": QueryLogSettings,
    "observability": ObservabilitySettings,
    "jobs": JobSettings,
}


def load_settings(environ: dict[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Read and validate every setting; the process environment wins over `.env`."""
    source = _environment(environ, env_file)
    parts = {name: _load_section(cls, source) for name, cls in SECTIONS.items()}
    settings = Settings(**parts)
    _check_bounds(settings)
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


def _check_bounds(settings: Settings) -> None:
    """Every value within its setting's `Bounds`, in declaration order."""
    for section in fields(settings):
        values = getattr(settings, section.name)
        for f in fields(values):
            if f.metadata["bounds"] is not None:
                f.metadata["bounds"].check(f.metadata["env"], getattr(values, f.name))


def _validate(s: Settings) -> None:
    """The rules between settings (each setting's own range is in its `Bounds`)."""
    _require(
        s.chunking.overlap_tokens < s.chunking.max_tokens // 2,
        "HYBRID_CHUNK_OVERLAP must be below half of HYBRID_CHUNK_TOKENS",
    )
    _require(
        s.search.max_window >= s.search.max_k,
        "HYBRID_SEARCH_MAX_WINDOW must be at least HYBRID_SEARCH_MAX_K",
    )
    _require(
        s.search.max_candidates >= s.search.max_window,
        "HYBRID_SEARCH_MAX_CANDIDATES must be at least HYBRID_SEARCH_MAX_WINDOW",
    )
    _require(
        s.rerank.depth <= s.rerank.max_depth,
        "HYBRID_RERANK_DEPTH must be at most HYBRID_RERANK_MAX_DEPTH",
    )
    _require(
        s.rerank.passage_tokens + s.rerank.query_tokens + 3 <= 512,
        "HYBRID_RERANK_PASSAGE_TOKENS + HYBRID_RERANK_QUERY_TOKENS must be at most 509 "
        "(a cross-encoder reads 512 tokens, 3 of them separators)",
    )
    if s.query_log.redactor:
        module, colon, function = s.query_log.redactor.partition(":")
        _require(
            bool(module and colon and function),
            f"HYBRID_REDACTOR: expected `module:function`, got {s.query_log.redactor!r}",
        )
    for entry in s.answer.models:
        model, at, base_url = entry.partition("@")
        _require(
            bool(model.strip()) and (not at or base_url.startswith(("http://", "https://"))),
            f"HYBRID_ANSWER_MODELS: expected `model` or `model@http(s)://host/v1`, got {entry!r}",
        )
    _require(
        s.jobs.stalled_after_s > s.jobs.heartbeat_s,
        "HYBRID_WORKER_STALLED_AFTER must be longer than HYBRID_WORKER_HEARTBEAT",
    )
    _validate_production(s)


def _validate_production(s: Settings) -> None:
    if s.server.environment != "production":
        return
    _require(
        s.server.auth == "required",
        "HYBRID_AUTH=off is refused in production: every request would act as an admin",
    )
    _require(
        s.database.url is not None,
        "DATABASE_URL is required in production (the embedded server is for development)",
    )
    if s.embedding.provider == "openai":
        _require(bool(s.embedding.openai_api_key), "OPENAI_API_KEY is required in production")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
