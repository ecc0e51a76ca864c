"""The OpenAPI document tells every answer a route can give, problem bodies included.

Litestar describes each route's success from its signature. The failures come from the one
exception mapping (`problems`), the edge checks and admission control, which apply to every
route alike, so they are added here, by rule, to every operation: a generated client then
knows each status and its `application/problem+json` body, and the schema fuzzing in the test
suite holds the service to it. Request bodies are marked closed (`additionalProperties: false`),
as the service refuses fields it does not know; an answer that can come as server-sent events
says so; links tell where an answer leads: create a collection, ingest into it, search it,
delete it.
"""

from __future__ import annotations

from typing import Any

from litestar.openapi.spec import (
    Components,
    Link,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType

from app.api.schemas import Strict

PROBLEM_MEDIA = "application/problem+json"
PROBES = frozenset({"/health", "/ready"})
# Routes that read their collection's name from the body, not the path.
READS = frozenset({"/v1/search", "/v1/answer"})
FEEDBACK = "/v1/feedback"

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["type", "title", "status", "detail"],
    properties={
        "type": Schema(type=OpenAPIType.STRING),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "field": Schema(type=OpenAPIType.STRING, description="The offending field, if any"),
        "instance": Schema(type=OpenAPIType.STRING),
    },
)
DOCUMENTS = "/v1/collections/{name}/documents"
# Answers (path, method, status) that come as server-sent events when the request asks.
EVENT_STREAMS = frozenset({("/v1/answer", "post", "200")})
# Each event of the stream, as a client reads it: its name and its data (JSON text).
EVENTS = OpenAPIMediaType(
    schema=Schema(
        type=OpenAPIType.OBJECT,
        description="Server-sent events, when asked for: `sources`, `delta`..., then `done` "
        "or `error`, each with JSON data",
        properties={
            "event": Schema(type=OpenAPIType.STRING, enum=["sources", "delta", "done", "error"]),
            "data": Schema(type=OpenAPIType.STRING),
        },
        required=["data"],
    )
)


def _to(path: str, method: str, **values: Any) -> Link:
    """A link to the operation at `path` and `method`, passing `values` (runtime expressions)."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return Link(operation_ref=f"#/paths/{pointer}/{method}", **values)


# Keyed by the answering operation (path, method, status).
LINKS: dict[tuple[str, str, str], dict[str, Link]] = {
    ("/v1/collections", "post", "201"): {
        "Ingest": _to(DOCUMENTS, "post", parameters={"name": "$response.body#/name"}),
        "Search": _to("/v1/search", "post", request_body={"collection": "$response.body#/name"}),
    },
    (DOCUMENTS, "post", "201"): {
        "Search": _to(
            "/v1/search",
            "post",
            request_body={
                "collection": "$request.path.name",
                "query": "$request.body#/documents/0/text",
            },
        ),
    },
    ("/v1/search", "post", "200"): {
        "DeleteCollection": _to(
            "/v1/collections/{name}", "delete", parameters={"name": "$response.body#/collection"}
        ),
    },
}
MEANINGS = {
    400: "Invalid input: the body, a parameter, the path or the Host header (`field` names it)",
    401: "No credential, or one that names no usable key (missing, invalid, unknown, revoked, "
    "expired); `WWW-Authenticate: Bearer`",
    403: "The key lacks the scope, the collection or a principal the request names",
    404: "No such collection or document",
    409: "Conflicts with the current state (exists already, or deleted meanwhile); "
    "nothing was written",
    413: "Body, file or value larger than its limit",
    429: "The key spent its rate budget; retry after `Retry-After` s (`RateLimit-*` headers)",
    422: "Refers to what it cannot: a hit the search did not return, thumbs for a search",
    415: "Body of a media type the route does not read, or a file type it cannot load",
    500: "Unexpected failure (reveals nothing internal)",
    502: "A provider (embedding or answer model) answered with something unusable",
    503: "Busy or a dependency unavailable; nothing was written; retry after `Retry-After` s",
}


def document(schema: OpenAPI) -> OpenAPI:
    """Add what Litestar cannot know to `schema` (in place) and return it: the problem answers
    of every operation, closed request bodies, event streams and links."""
    components = schema.components if isinstance(schema.components, Components) else None
    if components is not None:
        components.schemas = {**(components.schemas or {}), "Problem": PROBLEM_SCHEMA}
        _close_request_bodies(components.schemas)
    for path, item in (schema.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if isinstance(operation, Operation):
                _add(operation, path, method)
    for path, method, status in EVENT_STREAMS:
        response = _response(schema, path, method, status)
        response.content = {**(response.content or {}), "text/event-stream": EVENTS}
    for (path, method, status), links in LINKS.items():
        response = _response(schema, path, method, status)
        response.links = {**(response.links or {}), **links}
    return schema


def _response(schema: OpenAPI, path: str, method: str, status: str) -> OpenAPIResponse:
    response = getattr((schema.paths or {})[path], method).responses[status]
    assert isinstance(response, OpenAPIResponse)
    return response


def _close_request_bodies(schemas: dict[str, Schema]) -> None:
    """A request body refuses fields it does not know (`Strict`), which Litestar leaves out."""
    pending: list[type[Strict]] = [Strict]
    while pending:
        for struct in pending.pop().__subclasses__():
            pending.append(struct)
            if struct.__name__ in schemas:
                schemas[struct.__name__].additional_properties = False


def _add(operation: Operation, path: str, method: str) -> None:
    responses = operation.responses if operation.responses is not None else {}
    for status in statuses(path, method, has_body=operation.request_body is not None):
        # A route's own description stays (the probes' 503: their usual body, saying what
        # failed); Litestar's generic 400 does not, as the problem mapping answers instead.
        if str(status) not in responses or status == 400:
            responses[str(status)] = _problem_response(status)
    operation.responses = responses


def statuses(path: str, method: str, *, has_body: bool) -> list[int]:
    """The failures a route can answer, by the rules of the exception mapping."""
    if path in PROBES:
        return [400, 503]
    found = {400, 401, 403, 429, 500, 503}
    if "{" in path or path in READS:
        found.add(404)
    if has_body:
        found |= {413, 415}
    if path == FEEDBACK:
        found |= {404, 422}
    if path in READS:
        found.add(502)  # the query is embedded, perhaps by a remote provider
    elif method in ("post", "put", "patch", "delete"):
        found.add(409)
        if path.endswith(("/documents", "/files")):
            found.add(502)  # the documents are embedded, perhaps by a remote provider
    return sorted(found)


def _problem_response(status: int) -> OpenAPIResponse:
    headers: dict[str, OpenAPIHeader | Reference] | None = None
    retry = OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER), description="Seconds to wait before retrying"
    )
    if status in (429, 503):
        headers = {"Retry-After": retry}
    if status == 401:
        challenge = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="Bearer")
        headers = {"WWW-Authenticate": challenge}
    return OpenAPIResponse(
        description=MEANINGS[status],
        headers=headers,
        content={
            PROBLEM_MEDIA: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
        },
    )
