"""The HTTP API reference: every operation of the OpenAPI document the application builds,
with the scope its route requires, its parameters, body and answers, then every schema.

The document is built without a database: the services are given an engine that is never
connected, and the application is created without loading models or the vector cache."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from litestar import Litestar
from litestar.serialization import encode_json
from sqlalchemy import create_engine

from app.api.app import create_app
from app.reference.markdown import code, header, page, table
from app.service import Services
from app.settings import load_settings

INTRO = (
    "Generated from the OpenAPI document that the service serves at `/docs/openapi.json` "
    "(browsable at `/docs` and `/docs/swagger`). JSON in and out; every failure is an RFC 9457 "
    "problem body (`application/problem+json`) with `status`, `title`, `detail` and, where "
    "one is to blame, `field`. Every route that names a scope needs "
    "`Authorization: Bearer <API key or tenant token>` carrying that scope (see "
    "[Access control and API keys](../concepts/access-control.md))."
)
METHODS = ("get", "post", "put", "patch", "delete")
# Never connected: building the OpenAPI document touches no database.
UNCONNECTED = "postgresql+psycopg://reference@localhost/reference"


def render() -> str:
    app = application()
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    handlers = _handlers(app)
    operations = [
        (path, method, op)
        for path, item in sorted(document["paths"].items())
        for method, op in sorted(item.items(), key=lambda kv: _order(kv[0]))
        if method in METHODS
    ]
    lines = header("HTTP API", "the application's OpenAPI document", INTRO)
    lines += table(
        ("operation", "scope", "what it does"),
        [
            (f"[{code(f'{m.upper()} {p}')}](#{_slug(f'{m} {p}')})", _scope(handlers, p, m),
             _first_sentence(_description(handlers, p, m, op)))
            for p, m, op in operations
        ],
    )  # fmt: skip
    for path, method, op in operations:
        lines += _operation(path, method, op, handlers)
    lines += ["## Schemas", ""]
    for name, schema in sorted(document["components"]["schemas"].items()):
        lines += _schema(name, schema)
    return page(lines)


def application() -> Litestar:
    services = Services(load_settings({}), create_engine(UNCONNECTED))
    return create_app(services, load_model=False, vector_cache=False)


def _handlers(app: Litestar) -> dict[tuple[str, str], Any]:
    """The route handler of each (OpenAPI path, method)."""
    found = {}
    for route in app.routes:
        for method, entry in getattr(route, "route_handler_map", {}).items():
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            found[(path, method.lower())] = entry[0]
    return found


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _slug(text: str) -> str:
    """The id the Markdown table of contents gives a heading."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _scope(handlers: dict[tuple[str, str], Any], path: str, method: str) -> str:
    handler = handlers.get((path, method))
    scope = handler.opt.get("scope") if handler else None
    return code(scope) if scope else "public"


def _description(handlers: dict[tuple[str, str], Any], path: str, method: str, op: Any) -> str:
    """The operation's description, else its handler's docstring."""
    if op.get("description"):
        return str(op["description"])
    handler = handlers.get((path, method))
    if handler is None:
        return ""
    fn = handler.fn
    while hasattr(fn, "func"):  # a handler run in a thread is wrapped, maybe more than once
        fn = fn.func
    return inspect.cleandoc(fn.__doc__) if fn.__doc__ else ""


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def _operation(path: str, method: str, op: Any, handlers: dict[tuple[str, str], Any]) -> list[str]:
    lines = [f"## {method.upper()} {path}", ""]
    description = _description(handlers, path, method, op)
    lines += [*description.splitlines(), ""] if description else []
    lines += [f"Scope: {_scope(handlers, path, method)}.", ""]
    if op.get("parameters"):
        lines += table(
            ("parameter", "in", "type", "required", "description"),
            [_parameter(p) for p in op["parameters"]],
        )
    for media, content in sorted(op.get("requestBody", {}).get("content", {}).items()):
        lines += [f"Request body ({code(media)}): {_type(content.get('schema', {}))}.", ""]
    lines += table(
        ("status", "meaning", "body", "headers"),
        [_response(status, r) for status, r in sorted(op.get("responses", {}).items())],
    )
    return lines


def _parameter(p: Any) -> tuple[str, str, str, str, str]:
    schema = p.get("schema", {})
    notes = [p.get("description", ""), _constraints(schema)]
    return (
        code(p["name"]), p["in"], _type(schema), "yes" if p.get("required") else "no",
        "; ".join(n for n in notes if n),
    )  # fmt: skip


def _response(status: str, response: Any) -> tuple[str, str, str, str]:
    bodies = [
        f"{code(media)} {_type(c['schema'])}" if c.get("schema") else code(media)
        for media, c in sorted(response.get("content", {}).items())
    ]
    headers = ", ".join(code(h) for h in sorted(response.get("headers", {})))
    return status, response.get("description", ""), "; ".join(bodies), headers


def _schema(name: str, schema: Any) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    properties = schema.get("properties")
    if not properties:
        return [*lines, f"Type: {_type(schema)}.", ""]
    required = set(schema.get("required", []))
    rows = [
        (code(field), _type(s), "yes" if field in required else "no", _default(s),
         "; ".join(n for n in (s.get("description", ""), _constraints(s)) if n))
        for field, s in properties.items()
    ]  # fmt: skip
    return lines + table(("field", "type", "required", "default", "description"), rows)


def _type(schema: Any) -> str:
    """A schema's type in words, with links to named schemas."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_slug(name)})"
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            return " or ".join(_type(s) for s in schema[combinator])
    if "allOf" in schema:
        return " and ".join(_type(s) for s in schema["allOf"])
    if "enum" in schema:
        return "one of " + ", ".join(code(json.dumps(v)) for v in schema["enum"])
    if "const" in schema:
        return code(json.dumps(schema["const"]))
    kinds = schema.get("type", "any")
    if isinstance(kinds, list):
        return " or ".join(_type({**schema, "type": k}) for k in kinds)
    if kinds == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return f"{kinds} ({schema['format']})" if "format" in schema else str(kinds)


def _default(schema: Any) -> str:
    return code(json.dumps(schema["default"])) if "default" in schema else ""


def _constraints(schema: Any) -> str:
    words = {
        "minimum": "at least {}", "maximum": "at most {}", "exclusiveMinimum": "above {}",
        "exclusiveMaximum": "below {}", "minLength": "at least {} characters",
        "maxLength": "at most {} characters", "minItems": "at least {} items",
        "maxItems": "at most {} items", "pattern": "matches `{}`",
    }  # fmt: skip
    return ", ".join(text.format(schema[key]) for key, text in words.items() if key in schema)
