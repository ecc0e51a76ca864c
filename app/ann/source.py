"""What the vector cache reads from PostgreSQL: every vector of a collection (binary COPY, in
one snapshot) and the changes committed since a snapshot.

Both reads run in a REPEATABLE READ, read-only transaction whose first statement takes its
snapshot: the index built or caught up from them reflects exactly that snapshot, which becomes
its position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from app.ann.index import Ids, Vectors
from app.db.engine import driver_connection
from app.db.queries import query

# The collection's vectors at one version (none when it has been re-embedded since), from the
# column it reads.
COPY_VECTORS = (
    "COPY (SELECT id, embedding FROM ("
    " SELECT c.id, CASE k.vector_column WHEN 'embedding' THEN c.embedding"
    " ELSE c.embedding_alt END AS embedding"
    " FROM chunks c JOIN collections k ON k.id = c.collection_id"
    " WHERE c.collection_id = %s AND k.vectors_version = %s) AS v"
    " WHERE embedding IS NOT NULL ORDER BY id) TO STDOUT (FORMAT BINARY)"
)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = len(COPY_SIGNATURE) + 8  # flags and header extension length
COPY_TRAILER = b"\xff\xff"
PARSE_BYTES = 8 << 20


@dataclass
class AllVectors:
    ids: Ids
    vectors: Vectors
    position: str


@dataclass
class Changes:
    inserted_ids: Ids
    inserted: Vectors
    deleted_ids: Ids
    position: str

    @property
    def count(self) -> int:
        return len(self.inserted_ids) + len(self.deleted_ids)


def read_all(
    engine: Engine,
    collection_id: int,
    dim: int,
    expected: int,
    progress: Callable[[int], None] | None,
    version: int,
) -> AllVectors:
    """Every chunk vector of the collection at `version`, streamed with binary COPY and
    parsed in bulk."""
    parser = _CopyParser(dim, expected, progress)
    with snapshot_transaction(engine) as (conn, position):
        parts: list[bytes] = []
        size = 0
        with driver_connection(conn).cursor().copy(COPY_VECTORS, [collection_id, version]) as copy:
            for block in copy:  # the server sends one message a row
                parts.append(bytes(block))
                size += len(block)
                if size >= PARSE_BYTES:
                    parser.feed(b"".join(parts))
                    parts, size = [], 0
        parser.feed(b"".join(parts))
    ids, vectors = parser.result()
    return AllVectors(ids, vectors, position)


class _CopyParser:
    """Rows of `COPY (SELECT id, embedding) ... (FORMAT BINARY)` into arrays, many at a time."""

    def __init__(self, dim: int, expected: int, progress: Callable[[int], None] | None):
        self.dim = dim
        self.record = _record_type(dim)
        self.ids = np.empty(max(expected, 1), dtype=np.int64)
        self.vectors = np.empty((max(expected, 1), dim), dtype=np.float32)
        self.count = 0
        self.progress = progress
        self.started = False
        self.rest = b""

    def feed(self, data: bytes) -> None:
        data = self.rest + data
        if not self.started:
            if len(data) < COPY_HEADER:
                self.rest = data
                return
            if not data.startswith(COPY_SIGNATURE):
                raise RuntimeError("unexpected COPY stream from the server")
            data, self.started = data[COPY_HEADER:], True
        whole = len(data) // self.record.itemsize * self.record.itemsize
        rows = np.frombuffer(data, dtype=self.record, count=whole // self.record.itemsize)
        self.rest = data[whole:]
        if not len(rows):
            return
        if not (rows["fields"] == 2).all() or not (rows["dim"] == self.dim).all():
            raise RuntimeError(f"expected rows of an id and a {self.dim}-d vector")
        end = self.count + len(rows)
        self.ids, self.vectors = _grow(self.ids, self.vectors, end)
        self.ids[self.count : end] = rows["id"]
        self.vectors[self.count : end] = rows["vector"]
        self.count = end
        if self.progress:
            self.progress(len(rows))

    def result(self) -> tuple[Ids, Vectors]:
        if self.rest not in (b"", COPY_TRAILER):
            raise RuntimeError("COPY stream ended inside a row")
        return self.ids[: self.count].copy(), np.ascontiguousarray(self.vectors[: self.count])


def read_changes(engine: Engine, collection_id: int, since: str, dim: int, version: int) -> Changes:
    """The vector inserts and deletes committed since the snapshot `since`, in log order.

    A chunk inserted and deleted within the window is left out of both lists."""
    with snapshot_transaction(engine) as (conn, position):
        rows = conn.execute(
            query("ann.sql", "changes"),
            {"collection_id": collection_id, "position": since, "version": version},
        ).all()
    inserted: dict[int, Any] = {}
    deleted: list[int] = []
    for op, chunk_id, embedding in rows:
        if op == "I":
            if embedding is not None:
                inserted[chunk_id] = embedding
        elif inserted.pop(chunk_id, None) is None:
            deleted.append(chunk_id)
    vectors = np.empty((len(inserted), dim), dtype=np.float32)
    for row, vector in enumerate(inserted.values()):
        # pgvector's loader gives `Vector` objects over binary results, arrays over text ones.
        vectors[row] = vector.to_numpy() if hasattr(vector, "to_numpy") else vector
    return Changes(
        inserted_ids=np.fromiter(inserted, dtype=np.int64, count=len(inserted)),
        inserted=vectors,
        deleted_ids=np.array(deleted, dtype=np.int64),
        position=position,
    )


@dataclass(frozen=True)
class Pending:
    """How far the log has gone past a position: changes not applied, the oldest one's age in
    seconds, and the log's head position."""

    changes: int
    seconds: float
    head: int


def pending(engine: Engine, collection_id: int, since: str) -> Pending:
    with engine.connect() as conn:
        row = conn.execute(
            query("ann.sql", "pending"), {"collection_id": collection_id, "position": since}
        ).one()
    return Pending(int(row.changes), float(row.seconds), int(row.head))


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[tuple[Connection, str]]:
    """A REPEATABLE READ, read-only transaction and the snapshot it reads in."""
    with (
        engine.connect().execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        ) as conn,
        conn.begin(),
    ):
        yield conn, conn.execute(query("ann.sql", "snapshot")).scalar_one()


def _record_type(dim: int) -> np.dtype[Any]:
    """One row of `COPY (SELECT id, embedding) ... (FORMAT BINARY)`: field count, then each
    field's length and value; a vector is its dimension, a reserved int16, then float4s."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_length", ">i4"),
            ("id", ">i8"),
            ("vector_length", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vector", ">f4", (dim,)),
        ]
    )


def _grow(ids: Ids, vectors: Vectors, needed: int) -> tuple[Ids, Vectors]:
    if needed <= len(ids):
        return ids, vectors
    size = max(needed, 2 * len(ids))
    grown_ids = np.empty(size, dtype=np.int64)
    grown_ids[: len(ids)] = ids
    grown = np.empty((size, vectors.shape[1]), dtype=np.float32)
    grown[: len(vectors)] = vectors
    return grown_ids, grown
