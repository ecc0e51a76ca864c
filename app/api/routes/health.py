"""Liveness and readiness: `/health` says the process answers, `/ready` that it can serve."""

from __future__ import annotations

from litestar import Response, get
from sqlalchemy import text

from app.api.schemas import Check, Readiness
from app.db import migrate
from app.service import Services


@get("/health", sync_to_thread=False, tags=["health"])
def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@get("/ready", sync_to_thread=True, tags=["health"])
def ready(services: Services) -> Response[Readiness]:
    """Database reachable, schema at head, embedding model loaded; 503 until all hold.

    The cross-encoder is reported too, but it is optional: without it searches keep the
    fused order, so the service is ready all the same. So is the vector cache (loading,
    ready, its lag behind the change log), unless `HYBRID_VECTOR_BACKEND=faiss` makes
    searches depend on it."""
    checks = {
        "database": _database(services),
        "schema": _schema(services),
        "model": Check(
            ok=services.model_loaded,
            detail=services.settings.embedding.model if services.model_loaded else "loading",
        ),
        "reranker": _reranker(services),
        "vector_cache": _vector_cache(services),
    }
    is_ready = all(c.ok for c in checks.values() if c.required)
    return Response(Readiness(ready=is_ready, checks=checks), status_code=200 if is_ready else 503)


def _reranker(services: Services) -> Check:
    status = services.reranker_status
    if status is None:
        return Check(ok=False, detail="not loaded yet", required=False)
    if status.available:
        return Check(ok=True, detail=status.detail, required=False)
    return Check(ok=False, detail=status.policy.unavailable, required=False)


def _vector_cache(services: Services) -> Check:
    required = services.settings.search.vector_backend == "faiss"
    cache = services.vector_cache
    if cache is None or not cache.started:
        return Check(ok=False, detail="off (searches use pgvector)", required=required)
    try:
        cache.refresh_lag()
    except Exception as exc:
        return Check(ok=False, detail=f"lag unknown: {type(exc).__name__}", required=required)
    parts = []
    for row in cache.status():
        if row["status"] == "ready":
            parts.append(
                f"{row['collection']}: {row['detail']}, {row['lag_changes']} changes "
                f"({row['lag_seconds']:.1f} s) behind"
            )
        elif row["progress"] is not None:
            parts.append(f"{row['collection']}: {row['status']} ({row['progress']:.0%})")
        else:
            parts.append(f"{row['collection']}: {row['status']} ({row['detail']})")
    detail = "; ".join(parts) if parts else "no collections"
    return Check(ok=cache.ready, detail=detail if cache.ready else f"loading: {detail}",
                 required=required)  # fmt: skip


def _database(services: Services) -> Check:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return Check(ok=False, detail=f"unreachable: {type(exc).__name__}")
    return Check(ok=True, detail="reachable")


def _schema(services: Services) -> Check:
    try:
        current, head = migrate.current_revision(services.engine), migrate.head_revision()
    except Exception as exc:
        return Check(ok=False, detail=f"unknown: {type(exc).__name__}")
    return Check(ok=current == head, detail=f"at {current}, head {head}")
