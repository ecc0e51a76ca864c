"""The settings reference: every field of the settings object, by concern, with its
environment variable, type, default and description."""

from __future__ import annotations

import re
from dataclasses import MISSING, Field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import platformdirs

from app.reference.markdown import code, header, page, table
from app.settings import Settings

INTRO = (
    "Every setting is an environment variable, read at start-up from the environment, then "
    "from a `.env` file in the working directory (the environment wins), and validated before "
    "anything else runs: a bad value stops the process with a message naming the variable. An "
    "empty value counts as unset. Lists are comma-separated; booleans accept `true`/`false`, "
    "`1`/`0`, `yes`/`no` and `on`/`off`."
)


def render() -> str:
    lines = header("Settings", "the settings object in `app/settings.py`", INTRO)
    hints = get_type_hints(Settings)
    for section in fields(Settings):
        cls = hints[section.name]
        lines += [f"## {_title(cls.__name__)}", ""]
        lines += table(
            ("variable", "type", "default", "accepts", "description"),
            [_row(f, get_type_hints(cls)[f.name]) for f in fields(cls)],
        )
    return page(lines)


def _title(class_name: str) -> str:
    """`VectorCacheSettings` → `Vector cache`."""
    words = re.findall(r"[A-Z][a-z]*", class_name.removesuffix("Settings"))
    return " ".join(words).capitalize()


def _row(f: Field[Any], hint: Any) -> tuple[str, str, str, str, str]:
    default = f.default if f.default is not MISSING else None
    bounds = f.metadata["bounds"]
    accepts = bounds.summary() if bounds is not None else ""
    return (code(f.metadata["env"]), _type(hint), _default(default), accepts, f.metadata["doc"])


def _type(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        return " or ".join(_type(a) for a in get_args(hint) if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(code(str(a)) for a in get_args(hint))
    if origin is tuple:
        return "list"
    names = {bool: "boolean", int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return _path(value)
    if isinstance(value, bool):
        return code(str(value).lower())
    if isinstance(value, tuple):
        return code(",".join(value)) if value else "empty"
    return code(str(value)) if value != "" else "empty"


def _path(value: Path) -> str:
    """Paths that depend on the machine are named by their rule, not by this machine's."""
    if value == Path(platformdirs.user_data_dir("hybrid-search")):
        return "the user data directory (`~/.local/share/hybrid-search` on Linux)"
    return code(str(value))
