"""Collections: create, look up, list and delete the namespaces documents live in.

A collection is tied to the embedding model that produced its vectors and to a PostgreSQL
text search configuration (stemming and stop words of its language). Its vectors live in one
of the chunks table's two vector columns (`vector_column`), at a version that names its HNSW
index; a re-embedding (app/ingest/reembed.py) fills the other column with the next model's
vectors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from app.checks import float_in, one_of
from app.db.engine import unbounded
from app.db.queries import query
from app.errors import Conflict, Invalid, NotFound
from app.settings import VECTOR_BACKENDS, VectorBackend

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Search defaults a collection starts with; its `settings` may override each one, within range.
COLLECTION_DEFAULTS: dict[str, float] = {
    "bm25_k1": 1.2,
    "bm25_b": 0.75,
    "bm25_title_weight": 1.5,
    "rrf_k": 10.0,
    "keyword_weight": 1.0,
    "vector_weight": 1.0,
    # The keyword leg's weight follows how rare the query's words are (sql/search.sql).
    "rarity_weight": 0.5,
    "candidates": 100.0,
    # Pseudo-relevance feedback (off while `prf_documents` is 0): see app/search/engine.py.
    "prf_documents": 0.0,
    "prf_terms": 10.0,
    "prf_keyword": 0.5,
    "prf_vector": 0.5,
}
COLLECTION_RANGES: dict[str, tuple[float, float]] = {
    "bm25_k1": (0.0, 10.0),
    "bm25_b": (0.0, 1.0),
    "bm25_title_weight": (0.0, 10.0),
    "rrf_k": (0.0, 10_000.0),
    "keyword_weight": (0.0, 100.0),
    "vector_weight": (0.0, 100.0),
    "rarity_weight": (0.0, 10.0),
    "candidates": (1.0, 10_000.0),
    "prf_documents": (0.0, 100.0),
    "prf_terms": (0.0, 100.0),
    "prf_keyword": (0.0, 1.0),
    "prf_vector": (0.0, 10.0),
}
# The chunks table's vector columns; a collection reads one (`Collection.vector_column`).
VECTOR_COLUMNS = ("embedding", "embedding_alt")
# A collection may also name its vector backend (`vector_backend`), one of VECTOR_BACKENDS,
# and how its legs are fused (`fusion`), one of FUSIONS.
BACKEND_SETTING = "vector_backend"
FUSION_SETTING = "fusion"
# Reciprocal rank fusion, or a weighted sum of each leg's scores normalised per query.
FUSIONS = ("rrf", "minmax", "zscore")
_NAMED_SETTINGS = (BACKEND_SETTING, FUSION_SETTING)


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
    vector_column: str = "embedding"
    vectors_version: int = 1
    next_model: str | None = None
    next_dim: int | None = None
    documents: int = 0
    chunks: int = 0

    @property
    def next_column(self) -> str:
        """The vector column a re-embedding writes: the one the collection does not read."""
        return "embedding_alt" if self.vector_column == "embedding" else "embedding"

    def vector_sql(self, alias: str = "c", *, next_version: bool = False) -> str:
        """The collection's vectors as SQL: its column typed with its dimension, the
        expression its HNSW index is on (the column name is one of two fixed names)."""
        column, dim = (
            (self.next_column, self.next_dim)
            if next_version
            else (self.vector_column, self.embedding_dim)
        )
        assert column in VECTOR_COLUMNS and isinstance(dim, int)
        return f"CAST({alias}.{column} AS vector({dim}))"


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


def lock_for_write(conn: Connection, collection_id: int) -> Collection:
    """The collection, locked against a re-embedding's switch until the transaction ends."""
    row = (
        conn.execute(query("collections.sql", "lock_collection"), {"collection_id": collection_id})
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("the collection was deleted during the write", field="collection")
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


def update_settings(conn: Connection, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge `changes` (checked; None removes a key) into the collection's search defaults;
    its settings as stored after."""
    checked = check_collection_settings({k: v for k, v in changes.items() if v is not None})
    merged = {**{k: None for k in changes}, **checked}
    row = conn.execute(
        query("collections.sql", "update_settings"), {"name": name, "settings": json.dumps(merged)}
    ).first()
    if row is None:
        raise NotFound(f"collection {name!r}: no such collection")
    return dict(row[0])


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise Invalid(
            f"name: expected 1-63 characters of a-z, 0-9, '_' or '-' starting with a letter or "
            f"digit, got {name!r}",
            field="name",
        )


def collection_defaults(collection_settings: dict[str, Any]) -> dict[str, float]:
    """The collection's numeric search defaults, validated (stored settings were checked on
    write)."""
    checked = check_collection_settings(collection_settings)
    for name in _NAMED_SETTINGS:
        checked.pop(name, None)
    return {**COLLECTION_DEFAULTS, **checked}


def check_collection_settings(values: dict[str, Any], path: str = "settings") -> dict[str, Any]:
    """Validate search defaults given for a collection; unknown keys are refused."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key == BACKEND_SETTING:
            checked[key] = vector_backend(f"{path}.{key}", value)
            continue
        if key == FUSION_SETTING:
            checked[key] = fusion_method(f"{path}.{key}", value)
            continue
        if key not in COLLECTION_RANGES:
            known = ", ".join([*COLLECTION_RANGES, *_NAMED_SETTINGS])
            raise Invalid(
                f"{path}.{key}: unknown setting; expected one of {known}", field=f"{path}.{key}"
            )
        low, high = COLLECTION_RANGES[key]
        checked[key] = float_in(f"{path}.{key}", value, low, high)
    return checked


def fusion_method(name: str, value: Any) -> str:
    method: str = one_of(name, value, FUSIONS)
    return method


def vector_backend(name: str, value: Any) -> VectorBackend:
    backend: VectorBackend = one_of(name, value, VECTOR_BACKENDS)
    return backend
