"""Every error leaves the API as an RFC 9457 problem body, mapped here and only here.

Service errors keep their message and name the offending field; request validation errors
name the JSON path that failed; database failures say what happened in words a client can act
on (`app.db.failures`: busy, conflict, too large, unreachable), with `Retry-After` when sending
again may succeed; anything else becomes a 500 that reveals nothing internal, and is logged
with its traceback.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from app.db.failures import translate
from app.errors import HybridError

log = structlog.get_logger(__name__)
_MALFORMED = ("JSON is malformed", "Input data was truncated")
_JSON_PATH = re.compile(r"`\$\.?([^`]*)`|unknown field `([^`]*)`")


def problem(
    status: int,
    title: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemDetailsException:
    extra = {"field": field} if field else None
    return ProblemDetailsException(
        status_code=status,
        title=title,
        detail=detail,
        extra=extra,
        type_="about:blank",
        headers=headers,
    )


def from_service_error(exc: HybridError) -> ProblemDetailsException:
    return problem(exc.status, exc.title, exc.message, exc.field, exc.headers() or None)


def from_validation_error(exc: ValidationException) -> ProblemDetailsException:
    errors = exc.extra if isinstance(exc.extra, list) else []
    first: dict[str, Any] = errors[0] if errors and isinstance(errors[0], dict) else {}
    # A parameter whose name is reserved (`state`, `filter`) is a Python argument with a
    # trailing underscore, named by its alias on the wire: the client knows it by that.
    key = first.get("key")
    key = key.rstrip("_") if isinstance(key, str) and key.strip("_") else key
    return _client_problem(exc.status_code, str(first.get("message") or exc.detail), key)


def from_http_error(exc: HTTPException) -> ProblemDetailsException:
    """Its headers go along: a 405 says which methods the route allows (`Allow`)."""
    return _client_problem(exc.status_code, exc.detail, None, exc.headers)


def _client_problem(
    status: int, message: str, key: str | None, headers: dict[str, str] | None = None
) -> ProblemDetailsException:
    if message.startswith(_MALFORMED):
        return problem(400, "Malformed JSON", message, "body")
    if message.strip("'") == "data":
        return problem(400, "Invalid request", "body: expected a JSON document, got none", "body")
    field = _field_from_message(message) or key
    title = "Invalid request" if status == 400 else HTTPStatus(status).phrase
    if field and field not in message:
        message = f"{field}: {message}"
    return problem(status, title, message, field or None, headers)


def _field_from_message(message: str) -> str | None:
    """`$.documents[0].text` -> `documents[0].text`; msgspec writes `$[...]` for a key it does
    not name, which says nothing, so that gives None."""
    match = _JSON_PATH.search(message)
    field = (match.group(1) or match.group(2)) if match else None
    return field if field and "..." not in field else None


def status_of(exc: BaseException) -> int:
    """The status the error handlers answer `exc` with."""
    if isinstance(exc, HybridError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    known = translate(exc) if isinstance(exc, Exception) else None
    return known.status if known is not None else 500


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    known = translate(exc)
    if known is not None:
        log.warning("database failure", path=request.url.path, error=str(exc), answer=known.status)
        converted = from_service_error(known)
    else:
        log.exception("unexpected error", path=request.url.path)
        converted = problem(500, "Internal error", "the server failed to handle this request")
    return converted.to_response(request)


def plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            enable_for_all_http_exceptions=True,
            exception_to_problem_detail_map={
                HybridError: from_service_error,
                ValidationException: from_validation_error,
                HTTPException: from_http_error,
            },
        )
    )
