"""Every HTTP request observed once, outermost: its id, its duration, its span, its log line.

The request id is the caller's `X-Request-ID` when it sends a reasonable one (at most 128
letters, digits and `._:/+=-`), a new one otherwise; it is echoed in the response's
`X-Request-ID` (by `send_request_id`, which sees every answer) and carried by every log line
written while the request runs (worker threads included). The duration goes to
`hybrid_http_request_duration_seconds` labelled by route template (never the path: no
document id or collection name becomes a label), method and status, the status of an error
raised by an inner middleware included; requests no route matched are not seen here
(Litestar answers them 404 or 405 before any middleware). With `HYBRID_ACCESS_LOG` each
request ends with one `request` log line.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry.trace import StatusCode

from app.api.problems import status_of
from app.observe.context import CURRENT, RequestContext, request_id
from app.observe.metrics import METRICS
from app.observe.tracing import NOTHING, TRACING, server_span

log = structlog.get_logger("app.access")

HEADER = b"x-request-id"


STATE_KEY = "request_id"


async def send_request_id(message: Message, scope: Scope) -> None:
    """`X-Request-ID` on every answer: the request's id, or for a request no route matched
    (never observed), the caller's own or a new one."""
    if message["type"] != "http.response.start":
        return
    state = scope.get("state") or {}
    value = state.get(STATE_KEY)
    if value is None:
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER), None)
        value = request_id(None if given is None else given.decode("latin-1"))
    MutableScopeHeaders.from_message(message)["x-request-id"] = value


class Observe:
    """The middleware factory; `access_log` says whether each request is logged."""

    def __init__(self, access_log: bool) -> None:
        self.access_log = access_log

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def observe(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            await self._observe(app, scope, receive, send)

        return observe

    async def _observe(self, app: ASGIApp, scope: HTTPScope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == HEADER:
                given = value.decode("latin-1")
                break
        current = RequestContext(request_id(given))
        # The id goes on the response from `send_request_id`, which sees every answer,
        # including those to errors raised by middleware (answered outside this one).
        scope.setdefault("state", {})[STATE_KEY] = current.id
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        route = scope.get("path_template") or scope["path"]
        method = scope["method"]
        token = CURRENT.set(current)
        bound = structlog.contextvars.bind_contextvars(request_id=current.id)
        # The request's span (when tracing) covers its log line, which then names the trace.
        with self._span(scope, f"{method} {route}", current) as span:
            try:
                await app(scope, receive, send_with_status)
            except BaseException as exc:
                # Raised by a middleware (a refused body, Host or media type): the error
                # handlers answer it after this block, with this status.
                status = status_of(exc)
                raise
            finally:
                seconds = time.perf_counter() - started
                METRICS.observe_request(route, method, status, seconds)
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                if self.access_log:
                    self._log(current, method, route, scope["path"], status, seconds)
                structlog.contextvars.reset_contextvars(**bound)
                CURRENT.reset(token)

    def _span(
        self, scope: HTTPScope, name: str, current: RequestContext
    ) -> AbstractContextManager[Any]:
        if TRACING.tracer is None:
            return NOTHING
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return server_span(
            name,
            headers,
            {
                "http.request.method": scope["method"],
                "http.route": scope.get("path_template") or "",
                "hybrid.request_id": current.id,
            },
        )

    def _log(
        self, current: RequestContext, method: str, route: str, path: str, status: int,
        seconds: float,
    ) -> None:  # fmt: skip
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": path,  # never the query string: it may hold what was searched for
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
        }
        if current.search_id is not None:
            fields["search_id"] = current.search_id
            fields["timings_ms"] = current.timings_ms
        log.info("request", **fields)
