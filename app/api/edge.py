"""Bad input stops here: one check per class of input, before any handler runs.

Every request passes the same checks, so no route can forget one:
- the Host header names this service (`HYBRID_ALLOWED_HOSTS`; the loopback names when it
  listens on loopback), so a page on another site cannot reach it by DNS rebinding;
- the path and the query string are valid percent-encoded UTF-8 without NUL characters;
- a request with a body sends the media type its route reads (`application/json`, or
  `multipart/form-data` for uploads, or a form for the web pages' own forms, which carry a
  CSRF token), else 415: a page on another origin cannot drive the JSON routes with a plain
  form post;
- a JSON body is at most the upload limit, nests at most `MAX_DEPTH` levels, and holds no NUL
  character (PostgreSQL text cannot store it), no integer beyond 64 bits and no number that is
  not finite;
- a JSON body has the types the schema gives its fields: Litestar would coerce a string to a
  number or a boolean and a number to a date, which the schema (and a client) never allowed.
Each refusal is a 4xx problem naming the field (a JSON path for bodies) and the limit.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import ValidationException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPRequestEvent, Receive, ReceiveMessage, Scope, Send
from litestar.typing import FieldDefinition

from app.errors import Invalid, TooLarge, UnsupportedMedia

MAX_DEPTH = 32
INT64 = 2**63
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON, MULTIPART = "application/json", "multipart/form-data"
FORM = "application/x-www-form-urlencoded"


class EdgeChecks(ASGIMiddleware):
    """The checks above, for HTTP requests; `max_body` bounds a JSON body in bytes, `hosts`
    are the accepted Host names (`*.example.com` for subdomains; empty = any)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_body: int, hosts: tuple[str, ...] = ()) -> None:
        self.max_body = max_body
        self.hosts = hosts

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if self.hosts:
            check_host(_header(scope, b"host"), self.hosts)
        check_path(scope.get("raw_path") or scope["path"].encode())
        check_query(scope.get("query_string", b""))
        media = _expected_media(scope)
        if media is not None:
            _check_media(scope, media)
            if media == JSON:
                body = await _read_body(receive, self.max_body)
                check_json(body, scope["route_handler"].parsed_fn_signature.parameters["data"])
                receive = _replay(body, receive)
        await next_app(scope, receive, send)


def check_host(host: str, allowed: tuple[str, ...]) -> None:
    name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
    name = name.lower()
    for pattern in allowed:
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return
    raise Invalid(
        f"host: {host!r} is not among the allowed hosts (HYBRID_ALLOWED_HOSTS)", field="host"
    )


def check_path(raw: bytes) -> None:
    decoded = _decode(raw, "path")
    if "\x00" in decoded:
        raise Invalid("path: must not contain NUL (%00)", field="path")


def check_query(raw: bytes) -> None:
    for pair in raw.split(b"&"):
        name, _, value = pair.partition(b"=")
        field = _decode(name.replace(b"+", b" "), "query")
        text = _decode(value.replace(b"+", b" "), field or "query")
        if "\x00" in field or "\x00" in text:
            raise Invalid(f"{field}: must not contain NUL (%00)", field=field or "query")


def check_json(body: bytes, data: FieldDefinition) -> None:
    """Refuse a JSON body that nests too deep, holds a value PostgreSQL cannot take or is not
    of the types of the route's `data`; malformed JSON is left to the route, which says where
    it broke."""
    try:
        value = msgspec.json.decode(body)
    except RecursionError:
        raise Invalid(f"body: nests deeper than {MAX_DEPTH} levels", field="body") from None
    except msgspec.DecodeError as exc:
        if "out of range" in str(exc):
            raise Invalid(
                f"body: a number is out of range ({exc}); integers must lie within ±2^63 "
                "and numbers must be finite",
                field="body",
            ) from None
        return
    _walk(value)
    try:
        msgspec.convert(value, data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(detail=str(exc)) from None


def _walk(root: Any) -> None:
    """Iterative, so that the walk cannot itself run out of stack."""
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Invalid(f"{path}: nests deeper than {MAX_DEPTH} levels", field=path or "body")
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise Invalid(f"{path or 'body'}: a key contains NUL", field=path or "body")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        else:
            _check_scalar(value, path or "body")


def _check_scalar(value: Any, path: str) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise Invalid(f"{path}: must not contain NUL (\\u0000)", field=path)
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise Invalid(f"{path}: integer {value} does not fit in 64 bits", field=path)
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{path}: expected a finite number, got {value}", field=path)


def _decode(raw: bytes, field: str) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{field}: percent-encoding does not decode to UTF-8", field=field) from None


def _expected_media(scope: Scope) -> str | None:
    """The media type the route reads its body as, or None when it reads no body."""
    if scope.get("method") not in BODY_METHODS:
        return None
    handler = scope.get("route_handler")
    if handler is None or "data" not in handler.parsed_fn_signature.parameters:
        return None
    if handler.opt.get("form"):
        return FORM
    return MULTIPART if handler.opt.get("upload") else JSON


def _check_media(scope: Scope, expected: str) -> None:
    given = _header(scope, b"content-type")
    media = given.partition(";")[0].strip().lower()
    if media != expected and not (expected == JSON and media.endswith("+json")):
        raise UnsupportedMedia(
            f"content-type: expected {expected}, got {given or 'none'}", field="content-type"
        )


def _header(scope: Scope, name: bytes) -> str:
    return dict(scope["headers"]).get(name, b"").decode("latin-1")


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body: more than the limit of {limit} bytes", field="body")
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes, original: Receive) -> Receive:
    """The body once, then the connection's own messages (a disconnect, for streams)."""
    sent = False

    async def receive() -> ReceiveMessage:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        message: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
        return message

    return receive
