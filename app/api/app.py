"""The Litestar application: `create_app()` with one small `_configure_*` step per concern."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from app.api import deps, problems
from app.api.routes.admin import IndexController
from app.api.routes.answer import answer_post
from app.api.routes.collections import CollectionController
from app.api.routes.documents import DocumentController
from app.api.routes.health import health, ready
from app.api.routes.metrics import metrics
from app.api.routes.search import search_get, search_post
from app.service import Services

API_TITLE = "Hybrid search"


def create_app(
    services: Services, *, load_model: bool = True, vector_cache: bool = True
) -> Litestar:
    """The API over `services`; the embedding model and the cross-encoder load during start-up
    unless told not to, and the vector cache starts loading in the background (when
    `HYBRID_FAISS_CACHE` is on and unless told not to)."""
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
            IndexController,
        ]
    )
    _configure_state(config, services, load_model, vector_cache)
    _configure_dependencies(config)
    _configure_errors(config)
    _configure_openapi(config)
    _configure_limits(config, services)
    return Litestar.from_config(config)


def _configure_state(
    config: AppConfig, services: Services, load_model: bool, vector_cache: bool
) -> None:
    config.state = State({"services": services})
    if vector_cache and services.settings.vectors.enabled:
        config.on_startup.append(services.start_vector_cache)
    if load_model:
        config.on_startup.append(lambda: _load_model(services))


def _load_model(services: Services) -> None:
    _ = services.embedder
    services.reranking.log_status()


def _configure_dependencies(config: AppConfig) -> None:
    config.dependencies.update(
        {
            "services": Provide(deps.provide_services, sync_to_thread=False),
            "conn": Provide(deps.provide_conn),
        }
    )


def _configure_errors(config: AppConfig) -> None:
    config.plugins.append(problems.plugin())
    config.exception_handlers[Exception] = problems.unexpected_error


def _configure_openapi(config: AppConfig) -> None:
    config.openapi_config = OpenAPIConfig(
        title=API_TITLE,
        version="0.1.0",
        path="/docs",
        render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
    )


def _configure_limits(config: AppConfig, services: Services) -> None:
    # Multipart overhead on top of the largest file we accept.
    config.request_max_body_size = services.settings.ingest.max_upload_bytes + 64 * 1024


def describe_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path) of every API route, for the documentation check."""
    routes: list[tuple[str, str]] = []
    for route in app.routes:
        methods: Any = getattr(route, "methods", set())
        routes.extend((m, route.path) for m in sorted(methods) if m not in ("HEAD", "OPTIONS"))
    return routes
