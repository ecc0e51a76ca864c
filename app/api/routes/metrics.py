"""`GET /metrics`: the counters and histograms of `app.observe.metrics`, and the gauges read
at scrape time: the vector cache's size and lag per collection, the query log's queue,
writes, drops and failures, the database pool, and the requests in flight or refused."""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.pool import QueuePool

from app.access.caller import ADMIN
from app.api.admission import Admission
from app.db.engine import CountingPool
from app.observe.metrics import METRICS
from app.service import Services


class VectorCacheCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        cache = self.services.vector_cache
        labels = ["collection"]
        ready = GaugeMetricFamily(
            "hybrid_vector_cache_ready", "1 when the index serves", labels=labels
        )
        vectors = GaugeMetricFamily("hybrid_vector_cache_vectors", "Live vectors", labels=labels)
        tombstones = GaugeMetricFamily(
            "hybrid_vector_cache_tombstones", "Deleted vectors still in the index", labels=labels
        )
        lag_changes = GaugeMetricFamily(
            "hybrid_vector_cache_lag_changes", "Change-log rows not yet applied", labels=labels
        )
        lag_seconds = GaugeMetricFamily(
            "hybrid_vector_cache_lag_seconds", "Age of the oldest change not applied", labels=labels
        )
        head = GaugeMetricFamily(
            "hybrid_change_log_head", "Latest change-log position of the collection", labels=labels
        )
        if cache is not None and cache.started:
            # Reading the lag takes pooled connections: not while requests wait for one (the
            # last figures are served, rather than a scrape that waits behind them).
            pool = self.services.engine.pool
            if not (isinstance(pool, CountingPool) and pool.waiting):
                cache.refresh_lag()
            for row in cache.status():
                name = [row["collection"]]
                ready.add_metric(name, 1.0 if row["status"] == "ready" else 0.0)
                vectors.add_metric(name, row["vectors"])
                tombstones.add_metric(name, row["tombstones"])
                lag_changes.add_metric(name, row["lag_changes"])
                lag_seconds.add_metric(name, row["lag_seconds"])
                head.add_metric(name, row["log_head"])
        yield from (ready, vectors, tombstones, lag_changes, lag_seconds, head)


class QueryLogCollector(Collector):
    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        stats = self.services.query_log.stats()
        yield GaugeMetricFamily(
            "hybrid_query_log_waiting", "Log entries waiting to be written", stats["waiting"]
        )
        for name, help_text in (
            ("written", "Log entries written"),
            ("dropped", "Log entries dropped because the queue was full"),
            ("failed", "Log entries lost to a failed write"),
        ):
            yield CounterMetricFamily(f"hybrid_query_log_{name}", help_text, stats[name])


class ServerCollector(Collector):
    """The database pool and admission control, as they are now."""

    def __init__(self, services: Services, admission: Admission) -> None:
        self.services = services
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        pool = self.services.engine.pool
        if isinstance(pool, QueuePool):
            in_use = GaugeMetricFamily(
                "hybrid_db_pool_connections", "Pooled database connections by state",
                labels=["state"],
            )  # fmt: skip
            in_use.add_metric(["in_use"], pool.checkedout())
            in_use.add_metric(["idle"], pool.checkedin())
            yield in_use
            yield GaugeMetricFamily(
                "hybrid_db_pool_max", "Most connections the pool opens (size + overflow)",
                pool.size() + max(pool._max_overflow, 0),
            )  # fmt: skip
        if isinstance(pool, CountingPool):
            yield GaugeMetricFamily(
                "hybrid_db_pool_waiting",
                "Requests waiting for a database connection (or for one to open)",
                pool.waiting,
            )
        yield GaugeMetricFamily(
            "hybrid_http_in_flight", "Requests being handled", self.admission.in_flight
        )
        yield GaugeMetricFamily(
            "hybrid_http_in_flight_limit", "Requests handled at once at most",
            self.admission.limit,
        )  # fmt: skip
        yield CounterMetricFamily(
            "hybrid_http_refused",
            "Requests answered 503 at once because the limit of requests in flight was reached",
            self.admission.refused,
        )


log = structlog.get_logger(__name__)

# Litestar adds the charset to a text media type itself (and the document names the type).
MEDIA_TYPE = CONTENT_TYPE_LATEST.partition("; charset=")[0]


@get("/metrics", sync_to_thread=True, tags=["health"], media_type=MEDIA_TYPE, opt={"scope": ADMIN})
def metrics(services: Services, state: State) -> Response[bytes]:
    """Prometheus text format (an `admin` key's): every metric is listed in the observability
    guide."""
    body = [generate_latest(METRICS.registry)]
    for collector in (
        VectorCacheCollector(services),
        QueryLogCollector(services),
        ServerCollector(services, state.admission),
    ):
        # One collector failing (the database down, say) leaves the others' metrics served.
        try:
            registry = CollectorRegistry()
            registry.register(collector)
            body.append(generate_latest(registry))
        except Exception:
            log.warning("metrics not collected", collector=type(collector).__name__, exc_info=True)
    return Response(b"".join(body), media_type=MEDIA_TYPE)
