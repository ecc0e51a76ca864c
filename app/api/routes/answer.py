"""Grounded answers: `POST /v1/answer`, as one JSON body or streamed as server-sent events.

The search and the context are read in one transaction, ended before anything is sent, so a
bad request or an unknown collection is still a plain 4xx problem and no transaction stays open
while the model writes; only generation streams. Events: `sources`, then `delta` (repeated),
then `done`, or `error` if the model fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import structlog
from litestar import Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import ServerSentEvent, ServerSentEventMessage
from sqlalchemy import Connection

from app.access.caller import SEARCH, Caller
from app.answer import generate
from app.answer.generate import Prepared
from app.api.auth import scoped
from app.api.logged import (
    Recording,
    describe_answer,
    describe_generation,
    describe_passages,
    describe_request,
    new_entry,
)
from app.api.routes.search import to_request
from app.api.schemas import AnswerIn, AnswerOut, RerankOut, SearchIn, SourceOut
from app.errors import HybridError
from app.querylog.log import Entry
from app.service import Services

log = structlog.get_logger(__name__)

# What the log records for a stream the client closed before its end (nginx's code for it).
CLIENT_LEFT = 499


@post(
    "/v1/answer",
    sync_to_thread=True,
    status_code=200,
    tags=["answer"],
    opt={"scope": SEARCH, "answer": True},
    responses={
        200: ResponseSpec(
            data_container=AnswerOut,
            description="The answer; with `stream: true`, server-sent events "
            "(`sources`, `delta`..., `done` or `error`) carrying the same data",
        )
    },
)
def answer_post(data: AnswerIn, services: Services, caller: Caller) -> Response[Any]:
    """Answer a question from the collection, citing the chunks it used as [n].

    With `"stream": true` the response is `text/event-stream`; otherwise an `AnswerOut` body.
    """
    return run(services, caller, data)


def run(services: Services, caller: Caller, data: AnswerIn) -> Response[Any]:
    """The answer as `caller` may ask it (the API's and the answer page's), logged however it
    ends."""
    entry = new_entry("answer", caller, data.collection, data.query)
    with Recording(services.query_log, entry) as recording:
        with services.transaction() as conn:
            prepared = prepare(conn, services, data, caller, entry)
        if data.stream:
            recording.handed_off = True
            return ServerSentEvent(_messages(prepared, services, recording))
        result = generate.answer(prepared, services.chat_models)
        describe_answer(entry, prepared, result.done)
        return Response(to_out(result, str(entry.id)))


def prepare(
    conn: Connection, services: Services, data: AnswerIn, caller: Caller, entry: Entry
) -> Prepared:
    fields = msgspec.structs.asdict(data)
    context_tokens = fields.pop("context_tokens")
    del fields["stream"]
    fields["k"] = services.settings.answer.k if data.k is None else data.k
    request = scoped(caller, data.collection, to_request(SearchIn(**fields)))
    describe_request(entry, request)
    return generate.prepare(
        conn, data.collection, request, services.answer_readers(), context_tokens=context_tokens
    )


def _messages(
    prepared: Prepared, services: Services, recording: Recording
) -> Iterator[ServerSentEventMessage]:
    """The events (the first carries the `search_id`); the answer is logged when the stream
    ends, however it ends: an error, or a client that left early (499)."""
    entry = recording.entry
    describe_passages(entry, prepared)
    services.query_log.remember(entry)  # feedback may come before the stream ends
    finished = False
    try:
        for event in generate.events(prepared, services.chat_models):
            data = (
                {"search_id": str(entry.id), **event.data}
                if event.kind == "sources"
                else event.data
            )
            if event.kind == "done":
                describe_generation(entry, prepared, event.data)
                finished = True
            yield ServerSentEventMessage(event=event.kind, data=_json(data))
    except HybridError as exc:
        recording.failed(exc)
        finished = True
        problem = {"status": exc.status, "title": exc.title, "detail": exc.message}
        yield ServerSentEventMessage(event="error", data=_json(problem))
    except Exception as exc:
        # The status line went out with the first event: a defect ends the stream with an
        # error event too, instead of reaching the server as a broken response.
        log.exception("answer stream failed", search_id=str(entry.id))
        recording.failed(exc)
        finished = True
        problem = {
            "status": 500,
            "title": "Internal Server Error",
            "detail": f"the answer failed (logged with search id {entry.id})",
        }
        yield ServerSentEventMessage(event="error", data=_json(problem))
    finally:
        if not finished:
            entry.status, entry.error = CLIENT_LEFT, "the client closed the stream"
        recording.finish()


def _json(data: dict[str, Any]) -> str:
    return msgspec.json.encode(data).decode()


def to_out(result: generate.Answer, search_id: str) -> AnswerOut:
    prepared, done = result.prepared, result.done
    data = generate.sources_data(prepared)
    sources = [msgspec.convert(s, SourceOut) for s in data["sources"]]
    return AnswerOut(
        search_id=search_id,
        collection=prepared.collection,
        mode=prepared.mode,
        question=prepared.question,
        answer=result.text,
        cited=done["cited"],
        citations=[sources[n - 1] for n in done["cited"]],
        sources=sources,
        reranked=prepared.reranked,
        rerank=msgspec.convert(data["rerank"], RerankOut) if data["rerank"] else None,
        model=done["model"],
        extractive=done["extractive"],
        degraded=done["degraded"],
        usage=done["usage"],
        timings_ms=done["timings_ms"],
        cache=done["cache"],
    )
