"""Named SQL statements loaded once from the files in `sql/`.

A file holds several statements, each introduced by a `-- name: <name>` line; comments stay in
the text so that `pg_stat_statements` and logs show them too. Parameters are SQLAlchemy
`:name` binds, never formatted into the text.
"""

from __future__ import annotations

import re
from functools import cache

from sqlalchemy import TextClause, text

from app import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def load(filename: str) -> dict[str, TextClause]:
    """Every named statement in `sql/<filename>`."""
    source = (SQL_DIR / filename).read_text()
    parts = _NAME.split(source)[1:]
    return {name: text(body.strip()) for name, body in zip(parts[::2], parts[1::2], strict=True)}


def query(filename: str, name: str) -> TextClause:
    return load(filename)[name]
