"""Admission control: a bounded number of requests in flight, the rest refused at once.

Queueing beyond capacity only turns every request into a slow timeout; answering 503 with
`Retry-After` at once lets clients and load balancers back off or go elsewhere. The probes
(`/health`, `/ready`) and `/metrics` are never refused, so an overloaded instance is not taken
for a dead one. The same object knows how long the oldest request has been in flight, which is
how `/health` tells a stuck process (every wait is bounded, so nothing should take that long)
from a busy one.
"""

from __future__ import annotations

import itertools
import json
import threading
import time

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

EXEMPT = frozenset({"/health", "/ready", "/metrics"})
RETRY_AFTER_S = 1


class Admission:
    """Counts the requests in flight; `admit` is called on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._started: dict[int, float] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def oldest_s(self) -> float:
        """Seconds the oldest request in flight has been running (0 without any)."""
        with self._lock:
            first = min(self._started.values(), default=None)
        return 0.0 if first is None else time.monotonic() - first

    def enter(self) -> int | None:
        """A ticket for a new request, or None when the service is at its limit."""
        with self._lock:
            if len(self._started) >= self.limit:
                self.refused += 1
                return None
            ticket = next(self._ids)
            self._started[ticket] = time.monotonic()
            return ticket

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._started.pop(ticket, None)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or scope["path"] in EXEMPT:
                await app(scope, receive, send)
                return
            ticket = self.enter()
            if ticket is None:
                await _refuse(send, self.limit)
                return
            try:
                await app(scope, receive, send)
            finally:
                self.leave(ticket)

        return admit


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "status": 503,
            "title": "Busy, retry",
            "detail": f"the service is handling its limit of {limit} requests "
            f"(HYBRID_MAX_IN_FLIGHT); send the request again in {RETRY_AFTER_S} s",
        }
    ).encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ],
    }
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(start)
    await send(end)
