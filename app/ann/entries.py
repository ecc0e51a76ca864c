"""The vector cache's state: one entry per collection (its index and the change-log position
it reflects, status, progress, lag) and the registry that keeps the entries in step with the
collections table."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Engine

from app.ann import source
from app.ann.index import VectorIndex
from app.db.queries import query

Status = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class Identity:
    """What an index (or a snapshot of it) must match to serve a collection: the same
    collection (one dropped and created again under the same id has another creation time),
    model, dimension and vector version (a re-embedded collection has a new one)."""

    collection_id: int
    collection_name: str
    created_at: str
    model: str
    dim: int
    version: int = 1


@dataclass(frozen=True)
class Lag:
    changes: int = 0
    seconds: float = 0.0
    head: int = 0
    checked_at: float = 0.0

    @classmethod
    def of(cls, waiting: source.Pending) -> Lag:
        return cls(waiting.changes, waiting.seconds, waiting.head, time.time())


@dataclass
class Entry:
    """One collection in the cache."""

    identity: Identity
    status: Status = "loading"
    detail: str = "waiting to load"
    # The index and the snapshot it reflects, replaced together.
    current: tuple[VectorIndex, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    progress: tuple[int, int] = (0, 0)
    rebuilding: Future[None] | None = None
    saved_position: str | None = None
    saved_at: float = 0.0
    applied: int = 0
    built_in_s: float = 0.0
    lag: Lag = field(default_factory=Lag)

    def describe(self) -> str:
        if self.current is None:
            return self.detail
        index = self.current[0]
        return f"{index.kind} index of {index.live} vectors"


class Registry:
    """The entries by collection id, in step with the collections table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._entries: dict[int, Entry] = {}
        self._lock = threading.Lock()

    def all(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())

    def get(self, collection_id: int) -> Entry | None:
        with self._lock:
            return self._entries.get(collection_id)

    def sync(self) -> tuple[list[Entry], list[int]]:
        """Add an entry for every new collection and drop those of dropped (or recreated)
        ones: (the new entries, the ids dropped)."""
        with self.engine.connect() as conn:
            rows = conn.execute(query("ann.sql", "collections")).mappings().all()
        seen = {
            row["id"]: Identity(
                collection_id=row["id"],
                collection_name=row["name"],
                created_at=iso(row["created_at"]),
                model=row["embedding_model"],
                dim=row["embedding_dim"],
                version=row["vectors_version"],
            )
            for row in rows
        }
        with self._lock:
            gone = [cid for cid, e in self._entries.items() if seen.get(cid) != e.identity]
            for cid in gone:
                del self._entries[cid]
            fresh = [Entry(identity) for cid, identity in seen.items() if cid not in self._entries]
            for entry in fresh:
                self._entries[entry.identity.collection_id] = entry
        return fresh, gone

    def chunk_count(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(query("ann.sql", "collections")).mappings().all()
        return next((int(r["chunks"]) for r in rows if r["id"] == collection_id), 0)


def iso(moment: datetime) -> str:
    return moment.isoformat()
