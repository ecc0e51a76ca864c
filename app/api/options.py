"""OPTIONS answers name every method of their route in `Allow`.

Litestar 2 writes a path's OPTIONS answer when the first of its handlers is registered, so a
path served by several handlers (`GET` and `POST /v1/collections`, say) lists only some of its
methods. Requests for Litestar's own OPTIONS handler are answered here instead, from the
routes as finally built. (CORS preflight requests are answered before routing and never
reach this.)
"""

from __future__ import annotations

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

DEFAULT_HANDLER = "options_handler"


class AllowedMethods(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        handler = scope.get("route_handler")
        if getattr(handler, "handler_name", None) != DEFAULT_HANDLER:
            await next_app(scope, receive, send)
            return
        allow = allowed_methods(scope["litestar_app"], scope["path_template"])
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"allow", allow)],
        }
        body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": b"",
            "more_body": False,
        }
        await send(start)
        await send(body)


def allowed_methods(app: Litestar, path_template: str) -> bytes:
    methods = {
        method
        for route in app.routes
        if route.path_format == path_template
        for method in getattr(route, "methods", ())
    }
    return ", ".join(sorted(methods)).encode()
