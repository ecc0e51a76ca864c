"""What observing one request costs, in process: the time each piece adds to a request.

    python benchmarks/instrumentation.py [--calls 20000] [--repeat 7]

End-to-end comparisons (`benchmarks/overhead.py`) cannot resolve a few microseconds on a
shared 2-core machine: two identical servers differ by several percent from round to round.
This measures the pieces directly, each as the best of `--repeat` timings of `--calls` calls:

- the `Observe` middleware around an ASGI app that answers at once (request id, context,
  duration histogram, access log line to /dev/null in JSON), with metrics and the access log
  each on and off, against the bare app;
- tracing on (spans made and batched, then dropped by the exporter): the request's server
  span in the middleware, and one stage span;
- what the end of a search adds (`Recording.finish`: the query log entry queued, the search's
  metrics, the request's note), for a computed search and for one from the result cache.

Divide by the time a search takes (`overhead.py` reports it) for the share of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from app.access.caller import Caller
from app.api.logged import Recording, new_entry
from app.api.observe import Observe
from app.logs import configure_logging
from app.observe.metrics import METRICS
from app.observe.tracing import TRACING, span
from app.querylog.log import QueryLog
from app.redact import builtin
from app.settings import ObservabilitySettings, QueryLogSettings, ServerSettings

SCOPE = {
    "type": "http", "method": "GET", "path": "/v1/search", "path_template": "/v1/search",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
}  # fmt: skip


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _nothing(*_: Any) -> None:
    return None


def _time_app(app: Callable[..., Awaitable[None]], calls: int, repeat: int) -> float:
    """Best µs per request of `app` over `repeat` runs of `calls` requests."""

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(dict(SCOPE), _nothing, _nothing)
        return time.perf_counter() - started

    return min(asyncio.run(run()) for _ in range(repeat)) / calls * 1e6


def _time(call: Callable[[], None], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the access log's lines go nowhere)
    configure_logging(ServerSettings(log_format="json"))
    rows = [("bare ASGI app (the baseline)", _time_app(answer, args.calls, args.repeat))]
    for metrics in (False, True):
        for access_log in (False, True):
            METRICS.enabled = metrics
            app = Observe(access_log=access_log)(answer)
            cost = _time_app(app, args.calls, args.repeat) - rows[0][1]
            rows.append((f"Observe: metrics {_on(metrics)}, access log {_on(access_log)}", cost))
    METRICS.enabled = True
    TRACING.configure(ObservabilitySettings(), exporter=Dropped())
    app = Observe(access_log=False)(answer)
    rows.append(("Observe: metrics on, tracing on", _time_app(app, args.calls, 3) - rows[0][1]))
    tracer = TRACING.tracer
    assert tracer is not None

    def stage() -> None:
        with span("search.embed"):
            pass

    with tracer.start_as_current_span("request"):
        rows.append(("one stage span, tracing on", _time(stage, args.calls, args.repeat)))
    TRACING.shutdown()
    log = QueryLog(None, QueryLogSettings(queue=10**9), builtin)  # type: ignore[arg-type]
    caller = Caller(key_id=1, prefix="hs_abcd", name="bench", principals=("a",), scopes=frozenset())
    for cache in ("computed", "cached"):
        for metrics in (False, True):
            METRICS.enabled = metrics

            def finish(cache: str = cache) -> None:
                entry = new_entry("search", caller, "docs", "how does rank fusion work")
                entry.mode, entry.hits, entry.cache, entry.vector_backend = "hybrid", 5, cache, None
                entry.embed_ms, entry.sql_ms = (9.0, 8.0) if cache == "computed" else (0.0, 0.0)
                Recording(log, entry).finish()

            cost = _time(finish, args.calls, args.repeat)
            rows.append((f"end of a {cache} search: metrics {_on(metrics)}", cost))
            log._pending.clear()
    width = max(len(name) for name, _ in rows)
    print(f"{'piece':<{width}}  µs per request", file=sys.__stdout__)
    for name, cost in rows:
        print(f"{name:<{width}}  {cost:6.2f}", file=sys.__stdout__)


class Dropped(SpanExporter):
    """An exporter that sends nothing: the spans' own cost, without a collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _on(flag: bool) -> str:
    return "on" if flag else "off"


if __name__ == "__main__":
    main()
