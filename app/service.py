"""Wiring: from settings to a running set of services shared by the API and the CLI.

`Services.open()` finds the database (configured or embedded), checks the schema, and builds
the engine; the embedding model and the cross-encoder load on first use (or eagerly for the
API server), so that commands that only read the database start fast. The in-process vector
cache exists only where something starts it (`start_vector_cache`: the API server, or an
evaluation that asks for the `faiss` backend); so does the keyword index
(`start_keyword_cache`: the API server, evaluations).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from sqlalchemy import Connection, Engine

from app import redact
from app.ann.cache import VectorCache
from app.answer.generate import Readers
from app.answer.providers import ChatModels
from app.db import embedded, migrate
from app.db.engine import make_engine, resolve_database_url, retrying, transaction
from app.ingest.chunk import Tokenizer, bundled_tokenizer
from app.ingest.embed import Embedder, Embedders
from app.ingest.pipeline import Ingestor
from app.lexical.cache import KeywordCache
from app.querylog.log import QueryLog
from app.search.cache import SearchCache
from app.search.engine import QueryEmbeddings, Searcher
from app.search.rerank import Reranking, load_reranker
from app.settings import Settings

T = TypeVar("T")


class Services:
    """The long-lived objects of one process: settings, engine, embedder, tokenizer, caches."""

    def __init__(self, settings: Settings, engine: Engine, *, started_embedded: bool = False):
        self.settings = settings
        self.engine = engine
        self.started_embedded = started_embedded
        self.embedders = Embedders(settings.embedding, settings.database.data_dir / "embed-onnx")
        self._embeddings: QueryEmbeddings | None = None
        self._reranking: Reranking | None = None
        self._lock = threading.Lock()
        self._rerank_lock = threading.Lock()
        self.search_cache = SearchCache(settings.cache)
        self.chat_models = _chat_models(settings)
        self.vector_cache: VectorCache | None = None
        self.keyword_cache: KeywordCache | None = None
        self.query_log = QueryLog(
            engine, settings.query_log, redact.load(settings.query_log.redactor)
        )

    @classmethod
    def open(cls, settings: Settings, *, check_schema: bool = True) -> Services:
        url, started = resolve_database_url(settings)
        engine = make_engine(url, settings.database)
        services = cls(settings=settings, engine=engine, started_embedded=started)
        if check_schema:
            migrate.ensure_schema(engine, settings)
        return services

    def transaction(self) -> AbstractContextManager[Connection]:
        """A transaction of its own, committed when the block ends (see `app.db.engine`)."""
        return transaction(self.engine)

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a transaction of its own, retried after deadlocks and serialization
        failures (`HYBRID_DB_WRITE_RETRIES`)."""
        return retrying(self.engine, work, self.settings.database.write_retries)

    @property
    def embedder(self) -> Embedder:
        """The configured model: new collections are embedded with it."""
        return self.embedders.default

    @property
    def embeddings(self) -> QueryEmbeddings:
        """Query vectors by each collection's model, cached in process (bounded LRU)."""
        embedder = self.embedder
        with self._lock:
            if self._embeddings is None:
                self._embeddings = QueryEmbeddings(
                    embedder, self.settings.cache.query_embeddings, self.embedders
                )
            return self._embeddings

    def searcher(self, *, rerank: bool = True) -> Searcher:
        """What searches run with in this process: its settings, query embeddings and vector
        cache, and (with `rerank`, loading it on first use) the cross-encoder."""
        return Searcher(
            self.settings.search,
            self.embeddings,
            self.reranking if rerank else None,
            self.vector_cache,
            self.keyword_cache,
        )

    def answer_readers(self, *, rerank: bool = True) -> Readers:
        """What answers read with: the searcher, the answer settings, the result cache and the
        tokenizer of this process."""
        return Readers(
            self.searcher(rerank=rerank), self.settings.answer, self.search_cache, self.tokenizer
        )

    def open_vector_cache(self) -> VectorCache:
        """The in-process vector cache, created (not started) on first call."""
        with self._lock:
            if self.vector_cache is None:
                root = self.settings.vectors.directory or self.settings.database.data_dir / "faiss"
                self.vector_cache = VectorCache(self.engine, self.settings.vectors, root)
            return self.vector_cache

    def open_keyword_cache(self) -> KeywordCache:
        """The in-process keyword index, created (not started) on first call."""
        with self._lock:
            if self.keyword_cache is None:
                self.keyword_cache = KeywordCache(self.engine)
            return self.keyword_cache

    def start_keyword_cache(self) -> KeywordCache:
        """Build every collection's keyword index in the background and follow the log."""
        cache = self.open_keyword_cache()
        cache.start()
        return cache

    def start_vector_cache(self) -> VectorCache:
        """Load or build every collection's index in the background and follow the log."""
        cache = self.open_vector_cache()
        cache.start()
        return cache

    @property
    def model_loaded(self) -> bool:
        return self.embedders.default_loaded

    @property
    def reranking(self) -> Reranking:
        """The cross-encoder, or why there is none (loading never fails the process)."""
        with self._rerank_lock:
            if self._reranking is None:
                cache = self.settings.database.data_dir / "rerank-onnx"
                self._reranking = load_reranker(self.settings.rerank, cache)
            return self._reranking

    @property
    def reranker_status(self) -> Reranking | None:
        """The reranking state if it has been loaded, without loading it."""
        return self._reranking

    @property
    def tokenizer(self) -> Tokenizer:
        return bundled_tokenizer()

    @property
    def ingestor(self) -> Ingestor:
        return Ingestor(self.engine, self.settings, self.embedder, self.tokenizer, self.embedders)

    def close(self, *, stop_embedded: bool | None = None) -> None:
        """Stop the vector cache (writing its snapshots), write what the query log holds,
        release connections, and stop the embedded server if this process started it."""
        if self.vector_cache is not None:
            self.vector_cache.stop()
        if self.keyword_cache is not None:
            self.keyword_cache.stop()
        self.query_log.close()
        self.engine.dispose()
        if self.started_embedded if stop_embedded is None else stop_embedded:
            embedded.stop(self.settings.database.data_dir)


def _chat_models(settings: Settings) -> ChatModels | None:
    """The answer models in fallback order; None means extractive answers."""
    if not settings.answer.models:
        return None
    api_key = settings.answer.api_key or settings.embedding.openai_api_key
    return ChatModels(settings.answer, api_key, settings.embedding.openai_base_url)
