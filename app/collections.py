"""Collections: create, look up, list and delete the namespaces documents live in.

A collection is tied to the embedding model that produced its vectors and to a PostgreSQL
text search configuration (stemming and stop words of its language).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from app.db.engine import unbounded
from app.db.queries import query
from app.errors import Conflict, Invalid, NotFound
from app.search.request import check_collection_settings

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    description: str
    embedding_model: str
    embedding_dim: int
    text_config: str
    settings: dict[str, Any]
    created_at: datetime
    documents: int = 0
    chunks: int = 0


def create(
    conn: Connection,
    name: str,
    *,
    embedding_model: str,
    embedding_dim: int,
    text_config: str = "english_unaccent",
    description: str = "",
    settings: dict[str, Any] | None = None,
) -> Collection:
    check_name(name)
    checked = check_collection_settings(settings or {})
    if "\x00" in description:
        raise Invalid("description: must not contain NUL characters", field="description")
    if not conn.execute(
        query("collections.sql", "text_config_exists"), {"text_config": text_config}
    ).scalar():
        raise Invalid(
            f"text_config: no text search configuration named {text_config!r} "
            "(try english, simple, german, french, ...)",
            field="text_config",
        )
    row = (
        conn.execute(
            query("collections.sql", "create_collection"),
            {
                "name": name,
                "description": description,
                "embedding_model": embedding_model,
                "embedding_dim": embedding_dim,
                "text_config": text_config,
                "settings": json.dumps(checked),
            },
        )
        .mappings()
        .first()
    )
    if row is None:
        raise Conflict(f"collection {name!r} already exists", field="name")
    return Collection(**row)


def get(conn: Connection, name: str) -> Collection:
    row = (
        conn.execute(query("collections.sql", "get_collection"), {"name": name}).mappings().first()
    )
    if row is None:
        raise NotFound(f"no collection named {name!r}", field="collection")
    return Collection(**row)


def get_or_create(
    conn: Connection, name: str, *, embedding_model: str, embedding_dim: int
) -> Collection:
    row = (
        conn.execute(query("collections.sql", "get_collection"), {"name": name}).mappings().first()
    )
    if row is not None:
        return Collection(**row)
    return create(conn, name, embedding_model=embedding_model, embedding_dim=embedding_dim)


def list_all(conn: Connection) -> list[Collection]:
    """Every collection, with live document and chunk counts."""
    rows = conn.execute(query("collections.sql", "list_collections"), {"name": None}).mappings()
    return [Collection(**row) for row in rows]


def get_with_counts(conn: Connection, name: str) -> Collection:
    rows = conn.execute(query("collections.sql", "list_collections"), {"name": name}).mappings()
    row = rows.first()
    if row is None:
        raise NotFound(f"no collection named {name!r}", field="collection")
    return Collection(**row)


def delete(conn: Connection, name: str) -> None:
    """Delete the collection and everything in it, however long that takes (the statement
    bound is lifted; lock waits stay bounded)."""
    with unbounded(conn):
        found = conn.execute(query("collections.sql", "delete_collection"), {"name": name})
        if found.first() is None:
            raise NotFound(f"no collection named {name!r}", field="collection")


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise Invalid(
            f"name: expected 1-63 characters of a-z, 0-9, '_' or '-' starting with a letter or "
            f"digit, got {name!r}",
            field="name",
        )
