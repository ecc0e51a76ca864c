"""Who is calling, checked once for every route before its handler runs.

Each route names the scope it needs in its `opt` (`{"scope": "search"}`); a route without
one is public (the probes and the API reference only: a test keeps it so). The guard finds
the caller from the `Authorization` header (`app.access`), checks the scope, the collection
of the path against the key's allow-list, and the key's rate budgets, and leaves the caller
on the request for the handler (`provide_caller`). A denial is counted per key in the audit
log, in a short transaction of its own, and answered as a problem: 401 with
`WWW-Authenticate`, 403 naming what is missing, 429 with `Retry-After` and `RateLimit-*`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog
from litestar import Request
from litestar.concurrency import sync_to_thread
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Message, Scope

from app.access import audit
from app.access.authenticate import Authenticator
from app.access.caller import (
    Caller,
    combined_filter,
    effective_principals,
    require_collection,
    require_scope,
)
from app.access.limits import ANSWER, REQUEST, Decision, RateLimiter
from app.errors import Forbidden, TooManyRequests, Unauthorized
from app.observe.metrics import METRICS
from app.search.request import SearchRequest
from app.service import Services

log = structlog.get_logger(__name__)
Connection = ASGIConnection[Any, Any, Any, Any]


class Gate:
    """The authenticator and the rate budgets of one application."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.authenticator = Authenticator(services.settings.server)
        self.limiter = RateLimiter()
        if not self.authenticator.required:
            log.warning(
                "authentication is OFF (HYBRID_AUTH=off): every caller is an admin that may "
                "act as anyone; use it only on a loopback address"
            )

    async def guard(self, connection: Connection, route: BaseRouteHandler) -> None:
        if route.opt.get("scope") is None:
            return
        header = connection.headers.get("authorization")
        params = dict(connection.path_params)
        caller, decision = await sync_to_thread(self.admit, header, params, route)
        connection.state.caller = caller
        if decision is not None:
            connection.state.rate_headers = decision.headers()

    def admit(
        self, header: str | None, path_params: dict[str, Any], route: BaseRouteHandler
    ) -> tuple[Caller, Decision | None]:
        """The caller, if it may run `route` now, with what is left of its rate budget; else
        the denial, counted."""
        caller: Caller | None = None
        try:
            caller = self.authenticator.authenticate(header, self.services.transaction)
            require_scope(caller, route.opt["scope"])
            if "name" in path_params:
                require_collection(caller, str(path_params["name"]))
            decision = self.limiter.admit(caller, ANSWER if route.opt.get("answer") else REQUEST)
            if decision is not None and not decision.allowed:
                METRICS.observe_rate_limited("answer" if route.opt.get("answer") else "request")
                raise decision.refusal()
            return caller, decision
        except (Unauthorized, Forbidden, TooManyRequests) as exc:
            prefix = caller.prefix if caller is not None else getattr(exc, "prefix", None)
            self._count_denied(prefix, _reason(exc))
            raise

    def _count_denied(self, prefix: str | None, reason: str) -> None:
        try:
            with self.services.transaction() as conn:
                audit.record_denied(conn, prefix or None, reason)
        except Exception:
            # Counting is best effort: a denial is answered even when the count is not kept.
            log.warning("denied request not counted", reason=reason, exc_info=True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, Unauthorized):
        return exc.reason
    return "rate-limited" if isinstance(exc, TooManyRequests) else "forbidden"


def scoped(caller: Caller, collection: str, request: SearchRequest) -> SearchRequest:
    """`request` as the caller may make it: in a collection of its allow-list, as principals
    it holds (the key's own when the request names none), within its mandatory filter."""
    require_collection(caller, collection)
    return replace(
        request,
        principals=effective_principals(caller, request.principals),
        filter=combined_filter(caller, request.filter),
    )


async def send_rate_headers(message: Message, scope: Scope) -> None:
    """`RateLimit-*` headers on every answer to a caller with a rate budget."""
    if message["type"] != "http.response.start":
        return
    rate = scope.get("state", {}).get("rate_headers")
    if rate:
        headers = MutableScopeHeaders.from_message(message)
        for name, value in rate.items():
            headers[name] = value


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller the guard admitted."""
    caller: Caller = request.state.caller
    return caller
