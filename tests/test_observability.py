"""Observability: the metrics `/metrics` serves and their labels, the request id, the JSON log
lines, the trace spans (in memory, and through a real OTLP/HTTP collector on loopback), and
the shipped alerting rules (promtool) and Grafana dashboard."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from litestar.testing import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from app.logs import configure_logging
from app.observe.tracing import TRACING
from app.service import Services
from app.settings import ObservabilitySettings, ServerSettings
from tests.openai_server import OpenAIServer
from tests.test_answer import answering, models

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERTS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "hybrid-search.json"
GUIDE = DEPLOY.parent / "docs" / "how-to" / "observability.md"
QUERY = "why do cats purr"

# Each family the service exports after a search, an answer and an ingest, with its labels.
EXPECTED = {
    "hybrid_http_request_duration_seconds": {"route", "method", "status"},
    "hybrid_search_stage_seconds": {"kind", "stage"},
    "hybrid_searches": {"kind", "mode", "outcome"},
    "hybrid_cache_lookups": {"cache", "outcome"},
    "hybrid_ingest_documents": {"outcome"},
    "hybrid_ingest_chunks": set(),
    "hybrid_ingest_errors": {"kind"},
    "hybrid_ingest_duration_seconds": set(),
    "hybrid_answer_provider_errors": {"model"},
    "hybrid_answer_fallbacks": {"kind"},
    "hybrid_rate_limited": {"budget"},
    "hybrid_db_pool_connections": {"state"},
    "hybrid_db_pool_max": set(),
    "hybrid_db_pool_waiting": set(),
    "hybrid_http_in_flight": set(),
    "hybrid_http_in_flight_limit": set(),
    "hybrid_http_refused": set(),
    "hybrid_query_log_waiting": set(),
    "hybrid_query_log_written": set(),
    "hybrid_query_log_dropped": set(),
    "hybrid_query_log_failed": set(),
}
# The values a label may take: a closed set, or a pattern that admits no free text.
BOUNDED = {
    "kind": {"search", "answer", "model", "extractive", "invalid", "error"},
    "stage": {"embed", "faiss", "sql", "rerank", "generation", "total"},
    "mode": {"keyword", "vector", "hybrid", "hybrid+rerank", "none", "invalid"},
    "outcome": {"ok", "empty", "error", "hit", "miss", "shared", "created", "updated",
                "metadata_updated", "unchanged"},
    "cache": {"result", "embedding", "vector"},
    "budget": {"request", "answer"},
    "state": {"in_use", "idle"},
    "method": {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"},
}  # fmt: skip


def scrape(client: Any) -> dict[str, Any]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name]
    return sum(
        s.value
        for s in family.samples
        if s.name in (name, f"{name}_total", f"{name}_count")
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


# -- metrics -----------------------------------------------------------------------------------


def test_every_metric_is_exported_with_bounded_labels(
    services: Services, server: OpenAIServer, backup: OpenAIServer
) -> None:
    server.fail(500)  # the first model fails once: the backup answers (a fallback)
    with answering(services, **models(server, backup)) as client:  # ingests the pets
        before = scrape(client)
        searched = client.get("/v1/search", params={"collection": "pets", "q": QUERY})
        assert searched.status_code == 200
        assert client.post("/v1/answer", json={"collection": "pets", "query": QUERY}).is_success
        bad = {"files": ("notes.exe", b"MZ\x00", "application/octet-stream")}
        assert client.post("/v1/collections/pets/files", files=bad).status_code == 415
        nothing = {"collection": "pets", "q": "zzzqx", "mode": "keyword"}
        assert client.get("/v1/search", params=nothing).json()["hits"] == []
        after = scrape(client)
    missing = set(EXPECTED) - set(after)
    assert not missing, f"not exported: {sorted(missing)}"
    for name, labels in EXPECTED.items():
        for sample in after[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    for family in after.values():
        for sample in family.samples:
            for label, given in sample.labels.items():
                assert QUERY not in given and "cats" not in given  # no query, no document id
                if label in BOUNDED:
                    assert given in BOUNDED[label], (family.name, label, given)
                elif label == "route":
                    assert given.startswith("/") and "pets" not in given, given
                elif label == "status":
                    assert re.fullmatch(r"[1-5][0-9][0-9]", given), given
                elif label == "model":  # as HYBRID_ANSWER_MODELS names them
                    assert re.fullmatch(r"[\w.-]+@http://127\.0\.0\.1:\d+/v1", given), given
    route = {"route": "/v1/search", "method": "GET", "status": "200"}
    requests = "hybrid_http_request_duration_seconds"
    assert value(after, requests, **route) - value(before, requests, **route) == 2
    searches = "hybrid_searches"
    assert (
        value(after, searches, kind="search", outcome="ok")
        - value(before, searches, kind="search", outcome="ok")
        == 1
    )
    assert value(after, searches, kind="answer") - value(before, searches, kind="answer") == 1
    empty = {"kind": "search", "mode": "keyword", "outcome": "empty"}
    assert value(after, searches, **empty) - value(before, searches, **empty) == 1
    fallbacks = "hybrid_answer_fallbacks"
    assert value(after, fallbacks, kind="model") - value(before, fallbacks, kind="model") == 1
    first = f"m1@{server.base_url}"  # as HYBRID_ANSWER_MODELS names it
    assert value(after, "hybrid_answer_provider_errors", model=first) >= 1
    assert value(after, "hybrid_search_stage_seconds", kind="search", stage="embed") >= 1
    assert value(after, "hybrid_ingest_chunks") > 0
    errors = "hybrid_ingest_errors"
    assert value(after, errors, kind="invalid") - value(before, errors, kind="invalid") == 1
    assert value(after, "hybrid_ingest_documents", outcome="created") > 0


def test_metrics_off_counts_nothing(services: Services) -> None:
    with answering(services, HYBRID_METRICS="off") as client:
        before = scrape(client)
        assert client.get("/v1/search", params={"collection": "pets", "q": QUERY}).is_success
        after = scrape(client)
    name = "hybrid_searches"
    assert value(after, name) == value(before, name)
    assert "hybrid_db_pool_connections" in after  # the scrape-time gauges are still served


def test_the_dashboard_the_rules_and_the_guide_name_only_exported_metrics(
    services: Services,
) -> None:
    with answering(services) as client:
        exported = set(scrape(client))
    guide = re.findall(r"^\| `(hybrid_[a-z_]+)` \|", GUIDE.read_text(), re.MULTILINE)
    assert {re.sub(r"_total$", "", name) for name in guide} == exported
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = (ALERTS / "alerts.yml").read_text()
    assert expressions
    for where, text in [("dashboard", e) for e in expressions] + [("alerts.yml", rules)]:
        for name in set(re.findall(r"\bhybrid_[a-z_]+", text)):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert family in exported, f"{where} names {name}, which is not exported"


# -- alerting rules ----------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: install Debian's `prometheus` package (see README)"
    return found


def test_the_alerting_rules_are_valid() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=ALERTS, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_trouble_and_stays_quiet_when_healthy() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=ALERTS, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = set(re.findall(r"- alert: (\w+)", (ALERTS / "alerts.yml").read_text()))
    tests = (ALERTS / "alerts_test.yml").read_text()
    for alert in alerts:
        cases = set(re.findall(rf"alertname: {alert}\b[,\n]\s*exp_alerts: ?(\[\])?", tests))
        assert cases == {"", "[]"}, f"{alert}: a firing and a quiet case expected"


# -- request id and logs -----------------------------------------------------------------------


def test_the_request_id_is_echoed_or_made(client: TestClient) -> None:  # type: ignore[type-arg]
    given = client.get("/health", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["x-request-id"] == "abc-123.x"
    made = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    hostile = client.get("/health", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])
    missing = client.get("/v1/collections/nope", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
    no_route = client.get("/nowhere", headers={"X-Request-ID": "r-none"})
    assert no_route.status_code == 404 and no_route.headers["x-request-id"] == "r-none"
    refused = client.post(
        "/v1/search", content=b"q", headers={"Content-Type": "text/plain", "X-Request-ID": "r-415"}
    )
    assert refused.status_code == 415 and refused.headers["x-request-id"] == "r-415"


def test_refusals_are_counted_with_their_status_and_asked_modes_stay_bounded(
    services: Services,
) -> None:
    with answering(services) as client:
        before = scrape(client)
        refused = client.post("/v1/search", content=b"q", headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415
        for junk in ("junk-1", "junk-2", "x" * 500):
            asked = {"collection": "pets", "q": "cats", "mode": junk}
            assert client.get("/v1/search", params=asked).status_code == 400
        after = scrape(client)
    requests = "hybrid_http_request_duration_seconds"
    for status, count in (("415", 1), ("400", 3), ("500", 0)):
        labels = {"route": "/v1/search", "status": status}
        assert value(after, requests, **labels) - value(before, requests, **labels) == count
    modes = {s.labels["mode"] for s in after["hybrid_searches"].samples}
    assert modes <= BOUNDED["mode"] and "invalid" in modes


@contextmanager
def json_logs() -> Iterator[None]:
    """Logging as `HYBRID_LOG_FORMAT=json` configures it, for the block."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(ServerSettings(log_format="json"))
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers, root.level = handlers, level


def test_json_log_lines_carry_the_request_and_search_ids(
    services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    with answering(services) as client, json_logs():
        capsys.readouterr()
        response = client.get(
            "/v1/search", params={"collection": "pets", "q": QUERY}, headers={"X-Request-ID": "r-1"}
        )
        logging.getLogger("app.somewhere").warning("a standard library line")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (request,) = [line for line in lines if line.get("event") == "request"]
    assert request["request_id"] == "r-1" and request["route"] == "/v1/search"
    assert request["status"] == 200 and request["method"] == "GET"
    assert request["search_id"] == response.json()["search_id"]
    assert {"embed", "sql", "total"} <= set(request["timings_ms"])
    assert request["path"] == "/v1/search" and QUERY not in json.dumps(request)
    assert request["level"] == "info" and request["timestamp"].endswith("Z")
    (plain,) = [line for line in lines if line.get("event") == "a standard library line"]
    assert plain["level"] == "warning" and plain["logger"] == "app.somewhere"


# -- traces ------------------------------------------------------------------------------------


@contextmanager
def tracing_to(exporter: Any = None, endpoint: str = "") -> Iterator[None]:
    TRACING.configure(ObservabilitySettings(otel_endpoint=endpoint), exporter=exporter)
    try:
        yield
    finally:
        TRACING.shutdown()


def test_a_span_per_stage_when_tracing_is_on(
    services: Services, server: OpenAIServer, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    with answering(services, **models(server)) as client, tracing_to(exporter), json_logs():
        capsys.readouterr()
        assert client.post("/v1/search", json={"collection": "pets", "query": QUERY}).is_success
        TRACING.flush()
        spans = {span.name: span for span in exporter.get_finished_spans()}
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
        assert client.post("/v1/answer", json={"collection": "pets", "query": QUERY}).is_success
        body = {"documents": [{"id": "new", "text": "Hamsters run at night."}]}
        assert client.post("/v1/collections/pets/documents?wait=true", json=body).is_success
        TRACING.flush()
        names = {span.name for span in exporter.get_finished_spans()}
    root = spans["POST /v1/search"]
    for stage in ("search.embed", "search.faiss", "search.sql"):
        assert (
            spans[stage].parent is not None and spans[stage].parent.span_id == root.context.span_id
        )
        assert spans[stage].context.trace_id == root.context.trace_id
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    assert {"answer.generate", "ingest", "ingest.prepare"} <= names
    assert {"POST /v1/answer", "POST /v1/collections/{name}/documents"} <= names
    (request,) = [line for line in lines if line.get("event") == "request"]
    assert request["trace_id"] == format(root.context.trace_id, "032x")


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace collector: keeps every export request it is sent."""

    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.received.append(export)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_traces_reach_an_otlp_collector_and_continue_the_callers_trace(
    services: Services,
) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    Collector.received = []
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        with answering(services) as client, tracing_to(endpoint=endpoint):
            client.get(
                "/v1/search", params={"collection": "pets", "q": QUERY},
                headers={"traceparent": parent},
            )  # fmt: skip
            TRACING.flush()
    finally:
        collector.shutdown()
    spans = [
        span
        for export in Collector.received
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for span in spans}
    assert {"GET /v1/search", "search.embed", "search.sql"} <= names
    assert {span.trace_id.hex() for span in spans} == {trace_id}
    resource = Collector.received[0].resource_spans[0].resource
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "hybrid-search"
