"""The filter language: JSON conditions on document fields and metadata, compiled to SQL.

A filter is an object whose keys are fields or the combinators `and`, `or`, `not`:

    {"source": "handbook.md", "metadata.year": {"gte": 2020}, "or": [{...}, {...}]}

A field maps to a value (shorthand for `eq`) or to an object of operators (`eq`, `ne`, `in`,
`nin`, `gt`, `gte`, `lt`, `lte`, `exists`, `contains`), all of which must hold. Fields are the
document columns in `COLUMNS` or `metadata.<key>[.<key>...]`. Nothing from the request reaches
the SQL text except through this whitelist: names become fixed column expressions and values
become bind parameters. Every condition evaluates to true or false, never NULL, so `not` and
`ne` behave as written when a key is missing (a missing key is "not equal" to anything).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from app.errors import Invalid

MAX_DEPTH = 8
MAX_CONDITIONS = 64
MAX_LIST = 1000

# Document columns that filters may read, with their SQL type.
COLUMNS = {
    "id": ("d.external_id", "text"),
    "title": ("d.title", "text"),
    "source": ("d.source", "text"),
    "version": ("d.version", "integer"),
    "popularity": ("d.popularity", "number"),
    "created_at": ("d.created_at", "timestamp"),
    "updated_at": ("d.updated_at", "timestamp"),
    "published_at": ("d.published_at", "timestamp"),
}
OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "exists", "contains")
COMPARISONS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
METADATA_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
ARRAY_INDEX = re.compile(r"^-?[0-9]+$")


@dataclass
class CompiledFilter:
    """A SQL predicate over `d` (documents) and its bind parameters.

    `sql` is for scans of the documents: it may add conditions that only help an index find
    them. `check_sql` is the same condition without those, for checking one document already
    found (where such a helper would run again for every row)."""

    sql: str = "TRUE"
    params: dict[str, Any] = field(default_factory=dict)
    check_sql: str = "TRUE"

    @property
    def empty(self) -> bool:
        return self.sql == "TRUE"


def compile_filter(spec: Any, *, path: str = "filter") -> CompiledFilter:
    """Compile a filter object; raise `Invalid` naming the offending path."""
    if spec is None or spec == {}:
        return CompiledFilter()
    compiler = _Compiler(index_helpers=True)
    sql = compiler.node(spec, path, depth=1)
    # The same walk binds the same parameters in the same order: only the text differs.
    check_sql = _Compiler(index_helpers=False).node(spec, path, depth=1)
    return CompiledFilter(sql=sql, params=compiler.params, check_sql=check_sql)


class _Compiler:
    def __init__(self, *, index_helpers: bool) -> None:
        self.params: dict[str, Any] = {}
        self.conditions = 0
        self.index_helpers = index_helpers

    def node(self, spec: Any, path: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise Invalid(f"{path}: filters nest at most {MAX_DEPTH} levels deep", field=path)
        if not isinstance(spec, dict) or not spec:
            raise Invalid(f"{path}: expected a non-empty object of conditions", field=path)
        parts = [self.entry(key, value, f"{path}.{key}", depth) for key, value in spec.items()]
        return _join(parts, "AND")

    def entry(self, key: str, value: Any, path: str, depth: int) -> str:
        if key in ("and", "or"):
            if not isinstance(value, list) or not value:
                raise Invalid(f"{path}: expected a non-empty list of filters", field=path)
            parts = [self.node(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
            return _join(parts, key.upper())
        if key == "not":
            return f"NOT {self.node(value, path, depth + 1)}"
        target = _field(key, path)
        if isinstance(value, dict):
            if not value:
                raise Invalid(f"{path}: expected at least one operator", field=path)
            return _join([self.condition(target, op, v, f"{path}.{op}") for op, v in value.items()],
                         "AND")  # fmt: skip
        return self.condition(target, "eq", value, path)

    def condition(self, target: _Field, op: str, value: Any, path: str) -> str:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise Invalid(f"{path}: at most {MAX_CONDITIONS} conditions per filter", field=path)
        if op not in OPERATORS:
            raise Invalid(
                f"{path}: unknown operator {op!r}; expected one of {', '.join(OPERATORS)}",
                field=path,
            )
        if op == "exists":
            if not isinstance(value, bool):
                raise Invalid(f"{path}: expected true or false, got {_kind(value)}", field=path)
            return target.exists() if value else f"NOT {target.exists()}"
        if op in ("in", "nin"):
            values = _scalar_list(value, path)
            sql = _join([target.equals(self, v, path) for v in values], "OR")
            return sql if op == "in" else f"NOT {sql}"
        if op == "contains":
            return target.contains(self, value, path)
        if op in ("eq", "ne"):
            sql = target.equals(self, _scalar(value, path), path)
            return sql if op == "eq" else f"NOT {sql}"
        return target.compare(self, COMPARISONS[op], _scalar(value, path), path)

    def bind(self, value: Any) -> str:
        name = f"f_{len(self.params)}"
        self.params[name] = value
        return f":{name}"


@dataclass(frozen=True)
class _Field:
    """A column of `documents` or a path into its metadata."""

    name: str
    column: str = ""
    type: str = "json"
    keys: tuple[str, ...] = ()

    @property
    def json(self) -> str:
        return f"(d.metadata #> CAST('{{{','.join(self.keys)}}}' AS text[]))"

    def exists(self) -> str:
        if self.type == "json":
            return f"({self.json} IS NOT NULL AND jsonb_typeof({self.json}) <> 'null')"
        return f"({self.column} IS NOT NULL)"

    def equals(self, c: _Compiler, value: Any, path: str) -> str:
        if self.type == "json":
            if value is None:
                return f"coalesce(jsonb_typeof({self.json}) = 'null', false)"
            # Containment implies nothing more than equality here, but lets the metadata
            # GIN index find the documents.
            nested: Any = value
            for key in reversed(self.keys):
                nested = {key: nested}
            # Row-level security lets only leakproof operators use an index, and jsonb's are
            # not: the documents holding the value come from the metadata index through
            # `documents_containing` (containment follows from equality), checked exactly here.
            containing = (
                "d.id IN (SELECT documents_containing(:collection_id, "
                f"CAST({c.bind(json.dumps(nested))} AS jsonb)))"
            )
            equal = f"{self.json} = CAST({c.bind(json.dumps(value))} AS jsonb)"
            # A key that is a number also indexes an array (`#>`), which the nested object
            # above does not contain: no index helper then, so that every path agrees.
            if not c.index_helpers or any(ARRAY_INDEX.match(key) for key in self.keys):
                return f"coalesce({equal}, false)"
            return f"({containing} AND coalesce({equal}, false))"
        if value is None:
            return f"({self.column} IS NULL)"
        typed = _column_value(self, value, path)
        return f"coalesce({self.column} = {c.bind(typed)}, false)"

    def compare(self, c: _Compiler, op: str, value: Any, path: str) -> str:
        if value is None or isinstance(value, bool):
            raise Invalid(f"{path}: expected a number, a string or a date, got {_kind(value)}",
                          field=path)  # fmt: skip
        if self.type != "json":
            typed = _column_value(self, value, path)
            return f"coalesce({self.column} {op} {c.bind(typed)}, false)"
        kind = "number" if isinstance(value, int | float) else "string"
        sql = f"{self.json} {op} CAST({c.bind(json.dumps(value))} AS jsonb)"
        return f"coalesce(jsonb_typeof({self.json}) = '{kind}' AND {sql}, false)"

    def contains(self, c: _Compiler, value: Any, path: str) -> str:
        """Arrays contain the element(s); strings contain the text (case-insensitive)."""
        if self.type == "json":
            elements = value if isinstance(value, list) else [value]
            array = f"CAST({c.bind(json.dumps(elements))} AS jsonb)"
            sql = f"(jsonb_typeof({self.json}) = 'array' AND {self.json} @> {array})"
            if isinstance(value, str):
                pattern = c.bind(_like_pattern(value))
                text = f"({self.json} #>> CAST('{{}}' AS text[]))"
                sql += f" OR (jsonb_typeof({self.json}) = 'string' AND {text} ILIKE {pattern})"
            return f"coalesce({sql}, false)"
        if self.type != "text" or not isinstance(value, str):
            raise Invalid(f"{path}: contains needs a text field and a string value", field=path)
        return f"coalesce({self.column} ILIKE {c.bind(_like_pattern(value))}, false)"


def _field(key: str, path: str) -> _Field:
    if key in COLUMNS:
        column, kind = COLUMNS[key]
        return _Field(name=key, column=column, type=kind)
    if key.startswith("metadata."):
        keys = tuple(key.split(".")[1:])
        if keys and all(METADATA_KEY.match(k) for k in keys):
            return _Field(name=key, keys=keys)
        raise Invalid(
            f"{path}: metadata keys are letters, digits, '_' or '-' (at most 64), "
            f"separated by dots; got {key!r}",
            field=path,
        )
    raise Invalid(
        f"{path}: unknown field {key!r}; expected one of {', '.join(COLUMNS)}, "
        "metadata.<key>, and, or, not",
        field=path,
    )


def _column_value(target: _Field, value: Any, path: str) -> Any:
    """Check a value against a document column's type and convert it for binding."""
    if target.type == "text" and isinstance(value, str):
        return value
    if target.type == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target.type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if target.type == "timestamp" and isinstance(value, str):
        return _timestamp(value, path)
    expected = {"timestamp": "an ISO 8601 date or datetime"}.get(target.type, f"a {target.type}")
    raise Invalid(f"{path}: {target.name} needs {expected}, got {_kind(value)}", field=path)


def _timestamp(value: str, path: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = datetime.combine(date.fromisoformat(value), time())
        except ValueError:
            raise Invalid(
                f"{path}: expected an ISO 8601 date or datetime, got {value!r}", field=path
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _scalar(value: Any, path: str) -> Any:
    if isinstance(value, dict | list):
        raise Invalid(f"{path}: expected a single value, got {_kind(value)}", field=path)
    return value


def _scalar_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"{path}: expected a non-empty list of values", field=path)
    if len(value) > MAX_LIST:
        raise Invalid(f"{path}: at most {MAX_LIST} values", field=path)
    return [_scalar(v, f"{path}[{i}]") for i, v in enumerate(value)]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _join(parts: list[str], operator: str) -> str:
    return parts[0] if len(parts) == 1 else "(" + f" {operator} ".join(parts) + ")"


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return names.get(type(value), type(value).__name__)
