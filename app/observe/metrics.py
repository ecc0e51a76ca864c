"""The service's Prometheus metrics, counted as work happens (`HYBRID_METRICS`).

Every label takes a bounded set of values: a route template, never a path; a stage, a mode, a
cache, an outcome; never a query, a key or a document id. The gauges that describe state (the
vector cache, the query log, the database pool, requests in flight) are read at scrape time
by the collectors in `app.api.routes.metrics`.

With `HYBRID_METRICS=off` nothing here is counted: `observe_*` return at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

from app.errors import HybridError

# The `_created` series double what is sent for no use to dashboards or alerts.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Seconds: from a cached search (about a millisecond) to a slow generated answer.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
INGEST_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
# A search's cache origin as a lookup outcome.
RESULT_CACHE = {"cached": "hit", "shared": "shared", "computed": "miss"}
CACHE_OUTCOMES = {
    "result": ("hit", "shared", "miss"),
    "embedding": ("hit", "miss"),
    "vector": ("hit", "miss"),
}
# The search modes (`app.search.request.MODES`, which this layer may not import).
MODES = frozenset({"keyword", "vector", "hybrid", "hybrid+rerank"})
STAGES = ("embed", "faiss", "sql", "rerank", "generation", "total")


class Children:
    """A labelled metric's children by label values, each looked up once."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        return child


class Metrics:
    """The instruments, in a registry of their own (one per process, see `METRICS`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.enabled = True
        r = self.registry
        self.requests = Histogram(
            "hybrid_http_request_duration_seconds",
            "HTTP requests by route template, method and status, from the first byte read "
            "to the last byte sent",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = Histogram(
            "hybrid_search_stage_seconds",
            "Time of each stage of a search or answer (`total` is the whole request)",
            ["kind", "stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.searches = Counter(
            "hybrid_searches",
            "Searches and answers by kind, mode and outcome (`ok`, `empty`: no hit, `error`)",
            ["kind", "mode", "outcome"], registry=r,
        )  # fmt: skip
        self.cache = Counter(
            "hybrid_cache_lookups",
            "Cache lookups by cache and outcome: `result` (the search result cache; `shared`: "
            "a concurrent identical search's result), `embedding` (chunk vectors at ingest) "
            "and `vector` (the vector leg answered by the FAISS cache, or by PostgreSQL)",
            ["cache", "outcome"], registry=r,
        )  # fmt: skip
        self.ingest_documents = Counter(
            "hybrid_ingest_documents",
            "Documents ingested by outcome: created, updated, metadata_updated, unchanged",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.ingest_chunks = Counter("hybrid_ingest_chunks", "Chunks written by ingest", registry=r)
        self.ingest_errors = Counter(
            "hybrid_ingest_errors",
            "Ingests that failed, by kind: `invalid` (the input was refused) or `error`",
            ["kind"], registry=r,
        )  # fmt: skip
        self.ingest_seconds = Histogram(
            "hybrid_ingest_duration_seconds", "Time of each ingest (one API request or CLI run)",
            buckets=INGEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.provider_errors = Counter(
            "hybrid_answer_provider_errors",
            "Chat model calls that failed (or were skipped by an open circuit breaker), by model",
            ["model"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "hybrid_answer_fallbacks",
            "Answers that fell back: `model` (a later model answered) or `extractive` (none "
            "did: the passages themselves are the answer)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "hybrid_rate_limited",
            "Requests refused for a key's rate budget, by budget (`request`, `answer`)",
            ["budget"], registry=r,
        )  # fmt: skip
        # Every series whose labels are known in advance exists from the start (at 0), so
        # that a rate over it is 0 rather than absent until the first event.
        for budget in ("request", "answer"):
            self.rate_limited.labels(budget)
        for kind in ("model", "extractive"):
            self.fallbacks.labels(kind)
        for kind in ("invalid", "error"):
            self.ingest_errors.labels(kind)
        for outcome in ("created", "updated", "metadata_updated", "unchanged"):
            self.ingest_documents.labels(outcome)
        for cache, outcomes in CACHE_OUTCOMES.items():
            for outcome in outcomes:
                self.cache.labels(cache, outcome)
        # Children bound once: `labels()` takes a lock and a dict lookup on every call.
        self._requests = Children(self.requests)
        self._stages = Children(self.stages)
        self._searches = Children(self.searches)
        self._cache = Children(self.cache)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if self.enabled:
            self._requests(route, method, str(status)).observe(seconds)

    def observe_search(
        self,
        kind: str,
        mode: str | None,
        status: int,
        hits: int,
        stages_ms: dict[str, float | None],
        cache: str | None,
        vector_backend: str | None,
    ) -> None:
        """One search or answer as its log entry describes it."""
        if not self.enabled:
            return
        outcome = "error" if status >= 400 else "ok" if hits else "empty"
        # A refused request's mode is what was asked, which may be anything.
        mode = mode if mode in MODES else "none" if mode is None else "invalid"
        self._searches(kind, mode, outcome).inc()
        # A result from the cache took no stage but the whole: its zeros are not timings.
        computed = cache not in ("cached", "shared")
        for stage, ms in stages_ms.items():
            if ms is not None and (computed or stage == "total"):
                self._stages(kind, stage).observe(ms / 1000)
        if cache is not None:
            self._cache("result", RESULT_CACHE.get(cache, "miss")).inc()
        if vector_backend is not None:
            self._cache("vector", "hit" if vector_backend == "faiss" else "miss").inc()

    def observe_ingest(self, outcomes: dict[str, int], chunks: int, embedded: int,
                       cached: int, seconds: float) -> None:  # fmt: skip
        if not self.enabled:
            return
        for outcome, count in outcomes.items():
            if count:
                self.ingest_documents.labels(outcome).inc(count)
        self.ingest_chunks.inc(chunks)
        self.cache.labels("embedding", "hit").inc(cached)
        self.cache.labels("embedding", "miss").inc(embedded)
        self.ingest_seconds.observe(seconds)

    def observe_ingest_error(self, kind: str) -> None:
        if self.enabled:
            self.ingest_errors.labels(kind).inc()

    def observe_provider_error(self, model: str) -> None:
        if self.enabled:
            self.provider_errors.labels(model).inc()

    def observe_fallback(self, kind: str) -> None:
        if self.enabled:
            self.fallbacks.labels(kind).inc()

    def observe_rate_limited(self, budget: str) -> None:
        if self.enabled:
            self.rate_limited.labels(budget).inc()


@contextmanager
def ingest_errors_counted() -> Iterator[None]:
    """Count an exception leaving the block as a failed ingest (`invalid`: the input was
    refused), and let it go on."""
    try:
        yield
    except HybridError:
        METRICS.observe_ingest_error("invalid")
        raise
    except Exception:
        METRICS.observe_ingest_error("error")
        raise


# One per process: the counters live as long as the process, as Prometheus expects.
METRICS = Metrics()


def configure(enabled: bool) -> None:
    METRICS.enabled = enabled
