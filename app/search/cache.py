"""Search results cached in process, and identical concurrent searches run once.

A result is keyed by everything that changes it: the collection (id and name), its latest
change-log position, every field of the request (query, mode, filters, boosts, principals,
k, offset, options), the query embedding model and the cross-encoder (model, backend and the
settings its scores depend on: a request that names no mode is reranked only when one is
loaded). Every write that can change a result appends to the change log, so the
position read at the start of a search retires older entries at once; the TTL bounds how long
an entry lives in any case. Reading the position is one indexed query per search, which is what
keeps the cache correct when several service instances write to one database. While another
transaction is writing to the collection, results are computed but not stored: its log
position, taken before it commits, could be lower than one already seen (writers announce
themselves with an advisory lock per collection; writes elsewhere, the query log's included,
do not hold a search's result back). Nor is a partly reranked result stored (the
time budget ran out before every candidate was scored): the next identical search may have the
time to rerank fully, so it runs again.

Identical requests that arrive while the first is running wait for its result instead of
running again (single flight), cached or not, partly reranked or not. A cached result is the
same as a computed one (rerank report and per-hit scores included) except for its timings,
which are zero: it cost no embedding, SQL or model time.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TTLCache
from sqlalchemy import Connection, RowMapping

from app.db.queries import query
from app.search.engine import Searcher, search
from app.search.request import SearchRequest
from app.search.results import SearchResult
from app.settings import CacheSettings

T = TypeVar("T")

# Every writer of a collection's change log holds a shared advisory lock on (this class, the
# collection's id) until it ends; alembic revision 0014 takes it (and must use the same number).
CHANGE_LOG_LOCK_CLASS = 1_406_000_002


class SingleFlight(Generic[T]):
    """Runs one computation per key at a time; callers with the same key share its outcome."""

    def __init__(self) -> None:
        self._running: dict[Hashable, Future[T]] = {}
        self._lock = threading.Lock()
        self.computations = 0

    def run(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """The result of `compute()`, and whether it came from another caller's run."""
        with self._lock:
            running = self._running.get(key)
            if running is None:
                future: Future[T] = Future()
                self._running[key] = future
                self.computations += 1
        if running is not None:
            return running.result(), True
        try:
            future.set_result(compute())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with self._lock:
                del self._running[key]
        return future.result(), False


@dataclass
class CachedSearch:
    """A search result and where it came from: `computed`, `cached` or `shared`."""

    result: SearchResult
    origin: str


class SearchCache:
    """A TTL + LRU map of search results with single flight in front of the computation."""

    def __init__(self, settings: CacheSettings) -> None:
        self.enabled = settings.results > 0
        self._results: TTLCache[Hashable, SearchResult] = TTLCache(
            maxsize=max(settings.results, 1), ttl=settings.results_ttl_s
        )
        self._lock = threading.Lock()
        self.flights: SingleFlight[SearchResult] = SingleFlight()

    def get(self, key: Hashable) -> SearchResult | None:
        with self._lock:
            return self._results.get(key)

    def put(self, key: Hashable, result: SearchResult) -> None:
        with self._lock:
            self._results[key] = result

    def clear(self) -> None:
        with self._lock:
            self._results.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)


def cached_search(
    conn: Connection,
    collection_name: str,
    request: SearchRequest,
    searcher: Searcher,
    cache: SearchCache,
) -> CachedSearch:
    """`search()` through the cache, in the caller's transaction (read the position first)."""

    position = conn.execute(query("cache.sql", "collection_position"), {"name": collection_name})
    row = position.mappings().first()
    if row is None:  # unknown collection: let the search say so
        return CachedSearch(search(conn, collection_name, request, searcher), "computed")
    model = searcher.embeddings.embedder.model_id if searcher.embeddings else None
    reranker = searcher.reranking.identity if searcher.reranking else None
    key = (
        row["collection_id"],
        collection_name,
        row["position"],
        row["vectors_version"],
        row["settings"],
        request_key(request, model, reranker),
    )
    if cache.enabled and (hit := cache.get(key)) is not None:
        return CachedSearch(_without_timings(hit), "cached")

    def compute() -> SearchResult:
        result = search(conn, collection_name, request, searcher)
        # Stored before the flight ends, so that no caller finds neither the flight nor the entry.
        # A result from a vector cache that lagged behind the log is never stored.
        if cache.enabled and result.fresh and _complete(result) and _settled(conn, row):
            cache.put(key, result)
        return result

    result, shared = cache.flights.run(key, compute)
    return CachedSearch(_without_timings(result) if shared else result, _origin(shared))


def request_key(
    request: SearchRequest, model: str | None, reranker: dict[str, object] | None = None
) -> str:
    """Every field of the request, the query model and the cross-encoder (None when none is
    loaded) as one canonical string."""
    fields = dataclasses.asdict(request)
    return json.dumps(
        {"request": fields, "model": model, "reranker": reranker}, sort_keys=True, default=repr
    )


def _settled(conn: Connection, position: RowMapping) -> bool:
    """No write to the collection was in flight while the search ran (sql/cache.sql)."""
    params = {
        "lock_class": CHANGE_LOG_LOCK_CLASS,
        "collection_id": position["collection_id"],
        "snapshot": position["snapshot"],
    }
    return bool(conn.execute(query("cache.sql", "settled"), params).scalar_one())


def _complete(result: SearchResult) -> bool:
    """Not cut short by the rerank time budget."""
    return result.rerank is None or result.rerank.complete


def _without_timings(result: SearchResult) -> SearchResult:
    report = result.rerank and dataclasses.replace(result.rerank, ms=0.0)
    return dataclasses.replace(
        result, embed_ms=0.0, sql_ms=0.0, faiss_ms=0.0, keyword_index_ms=0.0, rerank=report
    )


def _origin(shared: bool) -> str:
    return "shared" if shared else "computed"
