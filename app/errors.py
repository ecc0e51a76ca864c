"""The one exception hierarchy of the service.

Services raise these; the API maps each class once to an HTTP status and an RFC 9457 problem
body, and the CLI prints the message. Messages say what was expected and what was given, and
name the offending field in `field` when there is one.
"""

from __future__ import annotations


class HybridError(Exception):
    """Base class: every error the service raises on purpose."""

    status = 500
    title = "Internal error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the answer (`Retry-After`, `WWW-Authenticate`, ...)."""
        return {}


class ConfigError(HybridError):
    """A setting is missing or invalid; raised at start-up."""

    title = "Invalid configuration"


class Invalid(HybridError):
    """The request or its input is malformed or out of range."""

    status = 400
    title = "Invalid input"


class Unauthorized(HybridError):
    """No credential, or one that names no usable key: `reason` is `missing`, `invalid`
    (malformed, tampered, wrong algorithm), `unknown` (no such key, or a wrong secret: the two
    are never told apart), `revoked` or `expired`. `prefix` is the key the credential named,
    if any (for counting denials per key). The API answers with `challenge` as the
    `WWW-Authenticate` header."""

    status = 401
    title = "Unauthorized"

    def __init__(self, message: str, *, reason: str, prefix: str | None = None) -> None:
        super().__init__(message, field="authorization")
        self.reason = reason
        self.prefix = prefix

    @property
    def challenge(self) -> str:
        """RFC 6750: no error code when no credential was sent."""
        realm = 'Bearer realm="hybrid-search"'
        return realm if self.reason == "missing" else f'{realm}, error="invalid_token"'

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class Forbidden(HybridError):
    """The caller is known but may not do this: a scope it lacks, a collection outside its
    allow-list, a principal it does not hold."""

    status = 403
    title = "Forbidden"


class NotFound(HybridError):
    """The named collection or document does not exist."""

    status = 404
    title = "Not found"


class Conflict(HybridError):
    """The request conflicts with the current state (e.g. a collection that already exists)."""

    status = 409
    title = "Conflict"


class Unprocessable(HybridError):
    """Well-formed, but about something it cannot be about: feedback on a hit the search did
    not return, or thumbs for a search that was not an answer."""

    status = 422
    title = "Unprocessable"


class TooLarge(HybridError):
    """An upload or document is larger than the configured limit."""

    status = 413
    title = "Content too large"


class UnsupportedMedia(HybridError):
    """A file type the loaders cannot read, or a request body of a media type its route does
    not read."""

    status = 415
    title = "Unsupported media type"


class TooManyRequests(HybridError):
    """A key spent its rate budget; it may send again after `retry_after` seconds (the API
    sends it as `Retry-After`)."""

    status = 429
    title = "Too many requests"

    def __init__(
        self, message: str, *, retry_after: int, rate_headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_headers = rate_headers or {}

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, "Retry-After": str(self.retry_after)}


class UpstreamError(HybridError):
    """A provider (embedding, generation) answered with something unusable."""

    status = 502
    title = "Bad answer from a provider"


class Unavailable(HybridError):
    """A dependency (database, provider) cannot serve right now; retrying may succeed, after
    `retry_after` seconds when given (the API sends it as `Retry-After`)."""

    status = 503
    title = "Service unavailable"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class Busy(Unavailable):
    """The service or the data is busy (too many requests, a lock, a conflicting write): the
    request did nothing and may be sent again after `retry_after` seconds."""

    title = "Busy, retry"
