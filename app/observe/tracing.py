"""OpenTelemetry traces, off unless `HYBRID_OTEL_ENDPOINT` names an OTLP/HTTP collector.

A request is one server span (opened by `app.api.observe`, continuing the caller's
`traceparent` when it sends one); the stages inside it are child spans opened with `span()`:
`search.embed`, `search.faiss`, `search.sql`, `search.rerank`, `answer.generate`,
`ingest` and `ingest.prepare`. With tracing off, `span()` hands back one shared no-op
context manager: the stages cost nothing to mark.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from app.settings import ObservabilitySettings

NOTHING = contextlib.nullcontext()


class Tracing:
    """The tracer when tracing is on; None otherwise."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None

    def configure(
        self, settings: ObservabilitySettings, exporter: SpanExporter | None = None
    ) -> None:
        """Trace to `settings.otel_endpoint` (or to `exporter`, which tests pass); neither:
        off. A provider configured before is shut down (its spans sent) first."""
        self.shutdown()
        if exporter is None and not settings.otel_endpoint:
            return
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint, timeout=10)
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.otel_service}),
            sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
        )
        # Spans leave in batches from a thread of their own: an unreachable collector costs
        # the requests nothing (its queue is bounded; what does not fit is dropped).
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self.provider = provider
        self.tracer = provider.get_tracer("hybrid-search")

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
        self.provider = self.tracer = None

    def flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()


TRACING = Tracing()


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one for the `with` block (nothing when tracing is off)."""
    tracer = TRACING.tracer
    if tracer is None:
        return NOTHING
    return tracer.start_as_current_span(name, attributes=attributes or None)


@contextlib.contextmanager
def detached_span(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current one that is not made current: for a block that yields
    (a generator may be resumed in another thread, where the context could not be restored)."""
    tracer = TRACING.tracer
    if tracer is None:
        yield
        return
    opened = tracer.start_span(name, attributes=attributes or None)
    try:
        yield
    finally:
        opened.end()


def server_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, Any]
) -> AbstractContextManager[Any]:
    """The span of one request, continuing the trace of the caller's `traceparent`."""
    tracer = TRACING.tracer
    if tracer is None:
        return NOTHING
    return tracer.start_as_current_span(
        name, context=propagate.extract(headers), kind=SpanKind.SERVER, attributes=attributes
    )


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), for log lines; None when not tracing."""
    if TRACING.tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
