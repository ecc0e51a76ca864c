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


class ConfigError(HybridError):
    """A setting is missing or invalid; raised at start-up."""

    title = "Invalid configuration"


class Invalid(HybridError):
    """The request or its input is malformed or out of range."""

    status = 400
    title = "Invalid input"


class NotFound(HybridError):
    """The named collection or document does not exist."""

    status = 404
    title = "Not found"


class Conflict(HybridError):
    """The request conflicts with the current state (e.g. a collection that already exists)."""

    status = 409
    title = "Conflict"


class TooLarge(HybridError):
    """An upload or document is larger than the configured limit."""

    status = 413
    title = "Content too large"


class UnsupportedMedia(HybridError):
    """A file type the loaders cannot read."""

    status = 415
    title = "Unsupported file type"


class UpstreamError(HybridError):
    """A provider (embedding, generation) answered with something unusable."""

    status = 502
    title = "Bad answer from a provider"


class Unavailable(HybridError):
    """A dependency (database, provider) cannot be reached right now; retrying may succeed."""

    status = 503
    title = "Service unavailable"
