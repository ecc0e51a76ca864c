"""Re-embedding: a collection moves to another embedding model or dimension while it goes on
being searched and written.

The chunks table has two vector columns; a collection reads one. A re-embedding:

1. `begin`: records the next model and dimension on the collection (`next_model`,
   `next_dim`), after emptying the other column of anything an abandoned run left there;
2. `fill`: gives every chunk its next vector in the other column, a batch a transaction, in id
   order, while searches read the current column with the current model and writes go on
   writing it;
3. builds the next version's HNSW index on the other column, concurrently (a search never
   waits for it);
4. `switch`: one transaction locks the collection row (`FOR UPDATE`: the write transactions
   in flight, which hold `FOR KEY SHARE`, finish first; new ones wait), embeds the chunks
   written since the fill, and makes the other column, model, dimension and version the
   collection's. Searches see the old version or the new one, never a mix; a write that
   embedded its batch with the old model embeds it again under the lock (app/ingest/pipeline.py);
5. `retire`: drops the old version's index and empties its column, a batch at a time.

Every step is safe to repeat: a run that stops anywhere (a killed worker, a database restart)
resumes from what the tables say, embedding only the chunks that have no next vector yet.
`abandon` undoes steps 1-3 (a cancelled re-embedding). The in-process vector cache sees the new
version and builds its index from the new column (app/ann).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from sqlalchemy import Connection, Engine, Row, TextClause, text

from app.collections import VECTOR_COLUMNS, Collection
from app.db.engine import unbounded
from app.db.queries import query
from app.errors import Conflict, Invalid, NotFound
from app.ingest import vector_index
from app.ingest.model import embedding_text_of

log = structlog.get_logger(__name__)

# Chunks emptied per transaction.
CLEAR_BATCH = 2000
# Widest vector an HNSW index takes (pgvector's limit for `vector`).
MAX_DIMENSION = 2000

NEXT_MARK = re.compile(r"/\* next \*/ (c\.)?embedding_alt")

# Texts in, unit vectors out (the next model, through the embedding cache).
Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Target:
    """The model and dimension a collection is moving to."""

    model: str
    dimension: int

    def check(self) -> Target:
        if not 1 <= self.dimension <= MAX_DIMENSION:
            raise Invalid(
                f"dimension: expected 1 to {MAX_DIMENSION} (the widest vector an HNSW index "
                f"takes), got {self.dimension}",
                field="dimension",
            )
        return self


@dataclass
class Progress:
    """Chunks of the collection, and how many have their next vector."""

    total: int = 0
    done: int = 0


def refuse_current(collection: Collection, target: Target) -> None:
    """A re-embedding into the model the collection already has is a mistake, said at once."""
    if collection.next_model is None and (
        collection.embedding_model,
        collection.embedding_dim,
    ) == (target.model, target.dimension):
        raise Conflict(
            f"collection {collection.name!r} is embedded with {target.model} "
            f"({target.dimension} dimensions) already",
            field="model",
        )


def begin(engine: Engine, collection_id: int, target: Target) -> Collection:
    """Record `target` as the collection's next model (resuming when it is already). Whatever
    another, abandoned re-embedding (or a crash) left, its vectors and its index, goes first."""
    with engine.connect() as conn:
        collection = get(conn, collection_id)
    if (collection.next_model, collection.next_dim) == (target.model, target.dimension):
        return collection
    if collection.next_model is not None:
        log.info(
            "abandoned re-embedding replaced",
            collection=collection.name,
            abandoned=collection.next_model,
        )
    vector_index.drop_others(engine, collection.id, {collection.vectors_version})
    clear(engine, collection)
    with engine.begin() as conn:
        collection = lock(conn, collection_id)
        refuse_current(collection, target)
        conn.execute(
            query("reembed.sql", "set_next"),
            {"collection_id": collection_id, "model": target.model, "dim": target.dimension},
        )
        return lock(conn, collection_id)


def counts(engine: Engine, collection: Collection) -> Progress:
    with engine.connect() as conn:
        row = conn.execute(
            _next(collection, "chunk_counts"), {"collection_id": collection.id}
        ).one()
    return Progress(total=int(row.total), done=int(row.done))


def fill(
    engine: Engine,
    collection: Collection,
    embed: Embed,
    progress: Progress,
    between: Callable[[Progress], None],
    batch: int,
) -> None:
    """Give every chunk without one its next vector, `batch` chunks a transaction; `between`
    runs after each batch (it records progress, and raises to stop)."""
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                _next(collection, "chunks_to_embed"),
                {"collection_id": collection.id, "after": after, "limit": batch},
            ).all()
        if not rows:
            return
        with engine.begin() as conn:
            stored = _store(conn, collection, rows, embed)
        after = rows[-1].id
        progress.done += stored
        between(progress)


def build_index(engine: Engine, collection: Collection, memory: str) -> None:
    """The next version's HNSW index (another session building it is waited for)."""
    if collection.next_model is None:
        raise Conflict(f"collection {collection.name!r} is not being re-embedded")
    while not vector_index.build(engine, collection.id, memory, next_version=True):
        with engine.connect() as conn:
            if vector_index.is_built(conn, collection.id, next_version=True):
                return
        time.sleep(1.0)


def switch(
    engine: Engine, collection: Collection, embed: Embed, progress: Progress, batch: int
) -> int:
    """Make the next version the collection's, in one transaction that first embeds the chunks
    written since the fill (held writes wait meanwhile); returns the new version (the current
    one if it already switched)."""
    with engine.begin() as conn:
        current = lock(conn, collection.id)
        locked = time.perf_counter()
        if current.next_model is None:
            return current.vectors_version  # an earlier run switched it
        after = 0
        while rows := conn.execute(
            _next(current, "chunks_to_embed"),
            {"collection_id": current.id, "after": after, "limit": batch},
        ).all():
            progress.done += _store(conn, current, rows, embed)
            after = rows[-1].id
        version = conn.execute(
            query("reembed.sql", "switch"), {"collection_id": current.id}
        ).scalar_one()
        held_ms = (time.perf_counter() - locked) * 1000
    log.info(
        "collection switched to its next model",
        collection=current.name,
        model=current.next_model,
        dim=current.next_dim,
        version=version,
        writes_held_ms=round(held_ms, 1),
    )
    return int(version)


def retire(engine: Engine, collection_id: int) -> None:
    """After the switch: drop the old version's index and empty its column."""
    with engine.connect() as conn:
        collection = get(conn, collection_id)
    vector_index.drop_others(engine, collection.id, _versions(collection))
    clear(engine, collection)


def abandon(engine: Engine, collection_id: int) -> None:
    """Undo a re-embedding that has not switched: drop its index, empty its column, then
    forget the next model (each step safe to repeat)."""
    with engine.connect() as conn:
        collection = get(conn, collection_id)
    if collection.next_model is None:
        return
    vector_index.drop_others(engine, collection.id, {collection.vectors_version})
    clear(engine, collection)
    with engine.begin() as conn:
        conn.execute(
            query("reembed.sql", "set_next"),
            {"collection_id": collection_id, "model": None, "dim": None},
        )
    log.info("re-embedding abandoned", collection=collection.name, model=collection.next_model)


def clear(engine: Engine, collection: Collection) -> None:
    """Empty the column the collection does not read, a batch a transaction."""
    statement, after = _next(collection, "clear_vectors"), 0
    while True:
        with engine.begin() as conn, unbounded(conn):
            cleared = (
                conn.execute(
                    statement,
                    {"collection_id": collection.id, "after": after, "limit": CLEAR_BATCH},
                )
                .scalars()
                .all()
            )
        if not cleared:
            return
        after = max(cleared)


def _versions(collection: Collection) -> set[int]:
    """The vector versions whose indexes the collection needs: its own, and the next while a
    re-embedding writes it."""
    version = collection.vectors_version
    return {version, version + 1} if collection.next_model else {version}


def get(conn: Connection, collection_id: int) -> Collection:
    row = (
        conn.execute(query("reembed.sql", "get_collection"), {"collection_id": collection_id})
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("the collection was deleted", field="collection")
    return Collection(**row)


def lock(conn: Connection, collection_id: int) -> Collection:
    row = (
        conn.execute(query("reembed.sql", "lock_collection"), {"collection_id": collection_id})
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("the collection was deleted", field="collection")
    return Collection(**row)


def _store(conn: Connection, collection: Collection, rows: Sequence[Row[Any]], embed: Embed) -> int:
    vectors = embed([embedding_text_of(r.context, r.text) for r in rows])
    result = conn.execute(
        _next(collection, "store_vectors"),
        {
            "collection_id": collection.id,
            "ids": [r.id for r in rows],
            "vectors": ["[" + ",".join(map(repr, v.tolist())) + "]" for v in vectors],
        },
    )
    return int(result.rowcount)


def _next(collection: Collection, name: str) -> TextClause:
    """A statement of sql/reembed.sql on the column the collection does not read."""
    column = collection.next_column
    assert column in VECTOR_COLUMNS
    return text(NEXT_MARK.sub(lambda m: (m[1] or "") + column, query("reembed.sql", name).text))
