"""The request in progress: its id (`X-Request-ID`) and what the access log line says of it.

`app.api.observe` sets it for each HTTP request; handlers, which run in worker threads with a
copy of the request's context, fill it in (the object is shared, the context variable is not).
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

# What a caller's X-Request-ID may be; anything else is replaced by an id of our own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass(slots=True)
class RequestContext:
    id: str
    search_id: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


CURRENT: ContextVar[RequestContext | None] = ContextVar("hybrid_request", default=None)


def request_id(given: str | None) -> str:
    """The caller's request id when it is a reasonable one, else a new one."""
    if given is not None and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def note_search(
    current: RequestContext | None, search_id: str, timings_ms: dict[str, float | None]
) -> None:
    """Tell the request (if any) which search it ran and what its stages took."""
    if current is not None:
        current.search_id = search_id
        current.timings_ms = {k: round(v, 3) for k, v in timings_ms.items() if v is not None}
