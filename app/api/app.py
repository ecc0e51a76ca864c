"""The Litestar application: `create_app()` with one small `_configure_*` step per concern."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from app.api import deps, problems
from app.api.admission import Admission
from app.api.auth import Gate, provide_caller, send_rate_headers
from app.api.edge import EdgeChecks
from app.api.observe import Observe, send_request_id
from app.api.openapi import document
from app.api.options import AllowedMethods
from app.api.pages import Pages, template_config
from app.api.routes.admin import IndexController
from app.api.routes.answer import answer_post
from app.api.routes.collections import CollectionController
from app.api.routes.documents import DocumentController
from app.api.routes.feedback import feedback_post
from app.api.routes.health import health, ready
from app.api.routes.jobs import JobController
from app.api.routes.keys import KeyController
from app.api.routes.metrics import metrics
from app.api.routes.search import search_get, search_post
from app.observe.metrics import METRICS
from app.service import Services

API_TITLE = "Hybrid search"
# Files the pages load, shipped in the package (vendored with their licenses).
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"
SWAGGER_UI_VERSION = "5.36.0"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def create_app(
    services: Services,
    *,
    load_model: bool = True,
    vector_cache: bool = True,
    bind_host: str | None = None,
) -> Litestar:
    """The API over `services`; the embedding model and the cross-encoder load during start-up
    unless told not to, and the vector cache starts loading in the background (when
    `HYBRID_FAISS_CACHE` is on and unless told not to). `bind_host`, the address the server
    listens on, decides the default allowed Host headers (`HYBRID_ALLOWED_HOSTS`)."""
    config = AppConfig(
        route_handlers=[
            health,
            ready,
            metrics,
            CollectionController,
            DocumentController,
            search_post,
            search_get,
            answer_post,
            feedback_post,
            IndexController,
            KeyController,
            JobController,
            Pages,
        ]
    )
    config.template_config = template_config()
    _configure_state(config, services, load_model, vector_cache)
    _configure_dependencies(config)
    _configure_errors(config)
    _configure_openapi(config)
    _configure_limits(config, services)
    _configure_edge(config, services, bind_host)
    app = Litestar.from_config(config)
    document(app.openapi_schema)
    return app


def _configure_state(
    config: AppConfig, services: Services, load_model: bool, vector_cache: bool
) -> None:
    admission = Admission(services.settings.server.in_flight_limit)
    gate = Gate(services)
    config.state = State({"services": services, "admission": admission, "gate": gate})
    config.guards.append(gate.guard)
    config.before_send.append(send_rate_headers)
    config.before_send.append(send_request_id)
    config.on_startup.append(services.query_log.start)
    if vector_cache and services.settings.vectors.enabled:
        config.on_startup.append(services.start_vector_cache)
    if vector_cache and services.settings.search.keyword_cache:
        config.on_startup.append(services.start_keyword_cache)
    if load_model:
        config.on_startup.append(lambda: _load_model(services))


def _load_model(services: Services) -> None:
    _ = services.embedder
    services.reranking.log_status()


def _configure_dependencies(config: AppConfig) -> None:
    config.dependencies.update(
        {
            "services": Provide(deps.provide_services, sync_to_thread=False),
            "caller": Provide(provide_caller, sync_to_thread=False),
        }
    )


def _configure_errors(config: AppConfig) -> None:
    config.plugins.append(problems.plugin())
    config.exception_handlers[Exception] = problems.unexpected_error


def _configure_openapi(config: AppConfig) -> None:
    """The OpenAPI document at /docs/openapi.json, rendered by Swagger UI at /docs (and
    /docs/swagger) from files the package ships: the page works without internet."""
    swagger = f"{STATIC_PATH}/swagger-ui/{SWAGGER_UI_VERSION}"
    config.openapi_config = OpenAPIConfig(
        title=API_TITLE,
        version="0.1.0",
        path="/docs",
        use_handler_docstrings=True,
        render_plugins=[
            SwaggerRenderPlugin(
                path=["/", "/swagger"],
                js_url=f"{swagger}/swagger-ui-bundle.js",
                css_url=f"{swagger}/swagger-ui.css",
                standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{swagger}/favicon-32x32.png'>",
            )
        ],
    )
    # Each vendored file's path names its version: a browser may keep it for good.
    config.route_handlers.append(
        create_static_files_router(
            path=STATIC_PATH,
            directories=[STATIC_DIR],
            cache_control=CacheControlHeader(max_age=365 * 24 * 3600, public=True, immutable=True),
            include_in_schema=False,
        )
    )


def _configure_limits(config: AppConfig, services: Services) -> None:
    config.request_max_body_size = _max_body(services)


def _max_body(services: Services) -> int:
    # Multipart overhead on top of the largest file we accept.
    return services.settings.ingest.max_upload_bytes + 64 * 1024


def _configure_edge(config: AppConfig, services: Services, bind_host: str | None) -> None:
    """Observation first (every answer has a request id, a duration and a log line), then
    admission (a refused request costs nothing), then the input checks, then the OPTIONS
    answers; Host and CORS policies from the settings."""
    server, observability = services.settings.server, services.settings.observability
    hosts = server.allowed_hosts or (LOOPBACK_HOSTS if is_loopback(bind_host) else ())
    METRICS.enabled = observability.metrics
    config.middleware = [
        Observe(access_log=observability.access_log),
        config.state.admission.middleware,
        EdgeChecks(max_body=_max_body(services), hosts=hosts),
        AllowedMethods(),
    ]
    if server.cors_origins:
        config.cors_config = CORSConfig(allow_origins=list(server.cors_origins))


def is_loopback(host: str | None) -> bool:
    """Whether a server listening on `host` is reachable from this machine only."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def describe_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every API route (the web pages are not), for the documentation
    check."""
    routes: list[tuple[str, str]] = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if handler.opt.get("page"):
                continue
            methods = handler.http_methods - {"HEAD", "OPTIONS"}
            routes.extend((m, route.path) for m in sorted(methods))
    return sorted(set(routes))
