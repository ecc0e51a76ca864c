"""Each collection's HNSW index: built once after a bulk load, maintained row by row after.

Inserting rows into an HNSW graph costs a graph search per row; building the graph from the
loaded rows costs about half as much (pgvector's advice for initial loads). Every collection
has an index of its own (a partial index, see migration 0005), so an ingest into a collection
that has none yet writes every batch without it and then builds it, while other collections
keep theirs. Until it is built, searches of that collection scan its vectors exactly: slower,
never wrong.

The build runs `CREATE INDEX CONCURRENTLY`, which lets other collections go on writing; an
interrupted build leaves an invalid index behind, which the next build replaces. Concurrent
loads into one collection leave the build to one of them (an advisory lock). The build comes
after the load has committed, so it can never turn a written load into a failed one: when it
fails (a lock it waited for too long, the server going away) it is logged and left to the
next load, and searches scan exactly meanwhile.

A re-embedding builds the index of the version it writes (`next_version`) the same way,
beside the one searches use, before it switches the collection over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from app.db.engine import unbounded
from app.db.queries import query

log = structlog.get_logger(__name__)
# The first key of the build's advisory lock: the lock space this module uses.
BUILD_LOCK_CLASS = 1_406_000_001


@contextmanager
def deferred(engine: Engine, collection_id: int, memory: str) -> Iterator[bool]:
    """Around a load into the collection: when it has no valid index, the load writes without
    one and, when it has succeeded, the tables are analyzed (the planner then knows the new
    rows at once, not when autovacuum gets to them) and the index is built. Yields whether
    that is the case."""
    with engine.connect() as conn:
        bulk = not is_built(conn, collection_id)
    yield bulk
    if bulk:
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                with unbounded(conn):
                    conn.execute(query("indexes.sql", "analyze_loaded_tables"))
            build(engine, collection_id, memory)
        except DBAPIError as exc:
            log.warning(
                "vector index build deferred to the next load",
                collection_id=collection_id,
                reason=str(exc.orig),
            )


def is_built(conn: Connection, collection_id: int, *, next_version: bool = False) -> bool:
    """Whether the collection has a valid vector index (new rows then go into it one by one)."""
    return _state(conn, collection_id, next_version) is True


def build(engine: Engine, collection_id: int, memory: str, *, next_version: bool = False) -> bool:
    """Build the collection's index (`next_version`: the one a re-embedding writes) if it has
    no valid one and no other session is building it; `memory` is the build's
    maintenance_work_mem (the graph should fit in it). Returns whether this call did the work
    (or found it done)."""
    lock = {"lock_class": BUILD_LOCK_CLASS, "collection_id": collection_id}
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not conn.execute(query("indexes.sql", "try_build_lock"), lock).scalar():
            return False
        try:
            with unbounded(conn):
                _build_locked(conn, collection_id, memory, next_version)
        finally:
            conn.execute(query("indexes.sql", "release_build_lock"), lock)
    return True


def _build_locked(conn: Connection, collection_id: int, memory: str, next_version: bool) -> None:
    state = _state(conn, collection_id, next_version)
    if state is True:
        return
    if state is False:
        conn.exec_driver_sql(
            _ddl(conn, "drop_invalid_vector_index_ddl", collection_id, next_version)
        )
    conn.execute(query("indexes.sql", "set_build_memory"), {"memory": memory})
    try:
        conn.exec_driver_sql(_ddl(conn, "vector_index_ddl", collection_id, next_version))
    finally:
        conn.exec_driver_sql("RESET maintenance_work_mem")


def drop_others(engine: Engine, collection_id: int, keep: set[int]) -> None:
    """Drop every version's index of the collection but those of the `keep` versions, without
    blocking its searches or writes (a version abandoned, replaced, or left by a crash)."""
    kept = {index_name(collection_id, version) for version in keep}
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        found = conn.execute(
            query("indexes.sql", "vector_indexes"), {"collection_id": collection_id}
        ).scalars()
        for name in sorted(set(found) - kept):
            version = int(name.rpartition("_v")[2]) if "_v" in name else 1
            ddl = conn.execute(
                query("indexes.sql", "drop_vector_index_ddl"),
                {"collection_id": collection_id, "version": version},
            ).scalar_one()
            with unbounded(conn):
                conn.exec_driver_sql(str(ddl))


def index_name(collection_id: int, version: int) -> str:
    """As the database names it (`vector_index_name`, alembic revision 0013)."""
    return f"chunks_embedding_{collection_id}" + ("" if version == 1 else f"_v{version}")


def _ddl(conn: Connection, name: str, collection_id: int, next_version: bool) -> str:
    params = {"collection_id": collection_id, "next": next_version}
    return str(conn.execute(query("indexes.sql", name), params).scalar_one())


def _state(conn: Connection, collection_id: int, next_version: bool = False) -> bool | None:
    """True: a valid index; False: an invalid one (an interrupted build); None: none."""
    row = conn.execute(
        query("indexes.sql", "vector_index_state"),
        {"collection_id": collection_id, "next": next_version},
    ).first()
    return None if row is None else bool(row.valid)
