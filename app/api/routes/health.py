"""Liveness and readiness: `/health` says the process is not stuck, `/ready` that it can serve.

Both answer without waiting for the request threads: `/health` runs on the event loop (a
blocked loop leaves it unanswered, which a probe's timeout reads as a failure), `/ready` runs
its checks on a thread of its own, within a time bound.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from app.api.admission import Admission
from app.api.schemas import AnswerCheck, Check, Liveness, ModelCheck, Readiness
from app.db import migrate
from app.service import Services

READY_TIMEOUT_S = 5.0
_PROBES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ready-probe")


@get(
    "/health",
    sync_to_thread=False,
    tags=["health"],
    responses={503: ResponseSpec(data_container=Liveness, description="The process is stuck")},
)
def health(state: State, services: Services) -> Response[Liveness]:
    """200 while the process makes progress; 503 once a request has been in flight longer than
    `HYBRID_STUCK_AFTER` (every database wait is bounded, so such a request means the process
    is stuck and should be restarted)."""
    admission: Admission = state.admission
    oldest, limit = admission.oldest_s(), services.settings.server.stuck_after_s
    stuck = oldest > limit
    body = Liveness(
        status="stuck" if stuck else "ok",
        in_flight=admission.in_flight,
        oldest_request_s=round(oldest, 3),
    )
    return Response(body, status_code=503 if stuck else 200)


@get(
    "/ready",
    tags=["health"],
    responses={503: ResponseSpec(data_container=Readiness, description="Not ready: see checks")},
)
async def ready(services: Services) -> Response[Readiness]:
    """Database reachable, schema at head, embedding model loaded; 503 until all hold, and
    when the checks take longer than 5 s (a saturated connection pool, say).

    The cross-encoder and the answer models are reported too, but they are optional: without
    the one searches keep the fused order, without the others answers are extractive, so the
    service is ready all the same. So is the vector cache (loading, ready, its lag behind the
    change log), unless `HYBRID_VECTOR_BACKEND=faiss` makes searches depend on it."""
    loop = asyncio.get_running_loop()
    try:
        checks = await asyncio.wait_for(
            loop.run_in_executor(_PROBES, _checks, services), READY_TIMEOUT_S
        )
    except TimeoutError:
        slow = Check(ok=False, detail=f"checks took longer than {READY_TIMEOUT_S:.0f} s")
        return Response(Readiness(ready=False, checks={"database": slow}), status_code=503)
    is_ready = all(c.ok for c in checks.values() if c.required)
    return Response(Readiness(ready=is_ready, checks=checks), status_code=200 if is_ready else 503)


def _checks(services: Services) -> dict[str, Check]:
    return {
        "database": _database(services),
        "schema": _schema(services),
        "model": Check(
            ok=services.model_loaded,
            # The model as collections record it (`+bf16`: computed in bfloat16), and how.
            detail=(
                f"{services.embedder.model_id}: {services.embedder.runtime}"
                if services.model_loaded
                else "loading"
            ),
        ),
        "reranker": _reranker(services),
        "vector_cache": _vector_cache(services),
        "answer": _answer(services),
    }


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


def _answer(services: Services) -> AnswerCheck:
    """Each answer model in fallback order with its circuit breaker; `ok` when at least one
    may be called now (otherwise answers are extractive)."""
    chat = services.chat_models
    if chat is None:
        detail = "extractive answers: no answer model is configured (HYBRID_ANSWER_MODELS)"
        return AnswerCheck(ok=False, detail=detail, required=False)
    models = [
        ModelCheck(
            name=model.name,
            breaker=breaker.state,
            failures=breaker.consecutive,
            retry_in_s=round(breaker.remaining_s(), 1),
        )
        for model, breaker in chat.breakers_in_order()
    ]
    usable = [m.name for m in models if m.breaker != "open"]
    detail = (
        f"{len(usable)} of {len(models)} models callable, first {usable[0]}"
        if usable
        else "extractive answers: every answer model's circuit breaker is open"
    )
    return AnswerCheck(
        ok=bool(usable), detail=detail, required=False, extractive=not usable, models=models
    )


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
