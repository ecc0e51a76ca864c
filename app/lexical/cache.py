"""Every collection's keyword index in process, kept in step with the change log.

Indexes are built from the table in the background when the cache starts (and when a search
names a collection it does not know), then catch up with the change log by the vector cache's
rules (snapshot positions, sql/lexical.sql). A search uses an index only when the statement
finds that its position has applied every chunk change the search's transaction can see;
otherwise the SQL leg runs as it would without the cache, and the search asks the index to
catch up in the background. So the cache changes speed, never results, and holds no database
connection of its own between catch-ups (no LISTEN: the first search after a write pays for
the SQL leg instead). Nothing is written to disk: building a collection's index reads its
tsvectors once (about a second per 10,000 chunks here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine

from app.ann.candidates import PassRates
from app.ann.source import snapshot_transaction
from app.collections import collection_defaults
from app.db.queries import query
from app.lexical import maxscore
from app.lexical.index import Chunk, KeywordIndex

log = logging.getLogger(__name__)

Status = Literal["loading", "ready", "failed"]

# Rows fetched per round trip while building.
FETCH_ROWS = 2_000
# Past this share of rows deleted or inserted since the last compaction, the index is compacted
# (the delta folded in, deleted rows dropped), in the follower's thread.
COMPACT_SHARE = 0.2
# The most candidates the index hands one restricted search: past that, the SQL leg (which
# counts the chunks the search may see and reads them when they are few) is cheaper.
MAX_CANDIDATES = 3_000


@dataclass
class KeywordEntry:
    """One collection's index and the change-log position it reflects, replaced together."""

    collection_id: int
    collection_name: str
    created_at: datetime
    status: Status = "loading"
    detail: str = "waiting to build"
    current: tuple[KeywordIndex, str] | None = None
    built_in_s: float = 0.0
    applied: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()


class KeywordCache:
    """See the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._entries: dict[int, KeywordEntry] = {}
        self._lock = threading.Lock()
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="keyword-cache-build")
        # What is queued for the builder's thread: a sync of the collections, catch-ups.
        self._queued: set[int | None] = set()
        self.started = False
        # Per restriction, the share of the index's candidates that passed its checks; a
        # restricted search asks for at most this many candidates.
        self.pass_rates = PassRates(MAX_CANDIDATES)

    def start(self) -> None:
        """Build every collection's index in the background."""
        if self.started:
            return
        self.started = True
        # The first search on a large collection would otherwise compile the MaxScore loop.
        self._builder.submit(maxscore.warm)
        self._queue(None, self._sync)

    def stop(self) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)

    def entries(self) -> list[KeywordEntry]:
        with self._lock:
            return list(self._entries.values())

    def current(self, collection_id: int, created_at: datetime) -> tuple[KeywordIndex, str] | None:
        """The collection's index and its position, when one is built for this collection (not
        an older one that had its id)."""
        with self._lock:
            entry = self._entries.get(collection_id)
        if entry is None or entry.created_at != created_at:
            if self.started:
                self._queue(None, self._sync)  # a collection created since: build its index
            return None
        return entry.current

    def behind(self, collection_id: int) -> None:
        """A search found the collection's index behind the log: catch up in the background."""
        if self.started:
            self._queue(collection_id, lambda: self.catch_up(collection_id))

    def status(self) -> list[dict[str, Any]]:
        """One row per collection: state, size, memory, changes applied since built."""
        rows = []
        for entry in sorted(self.entries(), key=lambda e: e.collection_name):
            index = entry.current[0] if entry.current else None
            rows.append(
                {
                    "collection": entry.collection_name,
                    "status": entry.status,
                    "detail": entry.detail,
                    "chunks": index.size if index else 0,
                    "terms": len(index.vocabulary) if index else 0,
                    "postings": index.postings if index else 0,
                    "dead_chunks": index.dead if index else 0,
                    "delta_chunks": index.delta_rows if index else 0,
                    "bytes": index.nbytes if index else 0,
                    "built_in_s": round(entry.built_in_s, 2),
                    "changes_applied": entry.applied,
                }
            )
        return rows

    def ensure(self, collection_id: int) -> KeywordEntry | None:
        """Build the collection's index now, in this thread, if it has none."""
        self._sync(build=False)
        with self._lock:
            entry = self._entries.get(collection_id)
        if entry is not None and entry.current is None:
            self._build(entry)
        return entry

    def catch_up(self, collection_id: int) -> int:
        """Apply what changed since the collection's position; the number of changes."""
        with self._lock:
            entry = self._entries.get(collection_id)
        return 0 if entry is None else self._catch_up(entry)

    # -- building and catching up -------------------------------------------------------------

    def _sync(self, *, build: bool = True) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(query("ann.sql", "collections")).mappings().all()
        seen = {r["id"]: r for r in rows}
        with self._lock:
            for cid in [c for c, e in self._entries.items()
                        if c not in seen or seen[c]["created_at"] != e.created_at]:  # fmt: skip
                del self._entries[cid]
            fresh = [
                KeywordEntry(r["id"], r["name"], r["created_at"])
                for cid, r in seen.items()
                if cid not in self._entries
            ]
            for entry in fresh:
                self._entries[entry.collection_id] = entry
        if build:
            for entry in fresh:
                self._submit(entry)

    def _submit(self, entry: KeywordEntry) -> Future[None] | None:
        try:
            return self._builder.submit(self._build_logged, entry)
        except RuntimeError:  # stopped
            return None

    def _queue(self, key: int | None, work: Callable[[], object]) -> None:
        """Run `work` in the builder's thread, unless the same work is queued already."""
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)

        def run() -> None:
            with self._lock:
                self._queued.discard(key)
            try:
                work()
            except Exception:
                log.exception("keyword cache: %s failed", "sync" if key is None else "catch-up")

        try:
            self._builder.submit(run)
        except RuntimeError:  # stopped
            with self._lock:
                self._queued.discard(key)

    def _build_logged(self, entry: KeywordEntry) -> None:
        try:
            self._build(entry)
        except Exception as exc:
            entry.status, entry.detail = "failed", f"build failed: {exc}"
            log.exception("keyword cache of collection %s could not be built",
                          entry.collection_name)  # fmt: skip

    def _build(self, entry: KeywordEntry) -> None:
        started = time.perf_counter()
        with entry.lock:
            if entry.current is not None:
                return
            entry.status, entry.detail = "loading", "building"
            with snapshot_transaction(self.engine) as (conn, position):
                index = KeywordIndex.build(_chunks(conn, entry.collection_id, None))
                bm25 = _bm25(conn, entry.collection_id)
            entry.current = (_ordered(index, bm25), position)
            entry.built_in_s = time.perf_counter() - started
            entry.status, entry.detail = "ready", describe(index)
        log.info(
            "keyword cache of collection %s built: %s in %.1f s",
            entry.collection_name, describe(index), entry.built_in_s,
        )  # fmt: skip
        self._catch_up(entry)

    def _catch_up(self, entry: KeywordEntry) -> int:
        with entry.lock:
            if entry.current is None:
                return 0
            index, position = entry.current
            with snapshot_transaction(self.engine) as (conn, now):
                params = {"collection_id": entry.collection_id, "position": position}
                changes = conn.execute(query("lexical.sql", "changes"), params).all()
                bm25 = _bm25(conn, entry.collection_id)
                if not changes:
                    entry.current = (_ordered(index, bm25), now)
                    return 0
                inserted: dict[int, None] = {}
                deleted: list[int] = []
                for op, chunk_id in changes:
                    if op == "I":
                        inserted[chunk_id] = None
                    elif chunk_id in inserted:
                        del inserted[chunk_id]
                    else:
                        deleted.append(chunk_id)
                added = list(_chunks(conn, entry.collection_id, list(inserted))) if inserted else []
            index = index.apply(added, deleted)
            if index.dead + index.delta_rows > COMPACT_SHARE * max(index.rows, 1):
                index = index.compacted()
            entry.current = (_ordered(index, bm25), now)
            entry.applied += len(changes)
            entry.detail = describe(index)
            return len(changes)


def _bm25(conn: Any, collection_id: int) -> tuple[float, float, float]:
    """The collection's BM25 parameters: k1, b, title weight."""
    settings = conn.execute(query("lexical.sql", "bm25"), {"collection_id": collection_id})
    defaults = collection_defaults(settings.scalar() or {})
    return defaults["bm25_k1"], defaults["bm25_b"], defaults["bm25_title_weight"]


def _ordered(index: KeywordIndex, bm25: tuple[float, float, float]) -> KeywordIndex:
    """The index with its long postings in impact order for these BM25 parameters (again
    only when they changed)."""
    impacts = index.impacts
    if impacts is not None and (impacts.k1, impacts.b, impacts.title_weight) == bm25:
        return index
    return index.ordered(*bm25)


def _chunks(conn: Any, collection_id: int, ids: list[int] | None) -> Iterator[Chunk]:
    result = conn.execution_options(yield_per=FETCH_ROWS).execute(
        query("lexical.sql", "postings"), {"collection_id": collection_id, "ids": ids}
    )
    for chunk_id, document_id, length, lexemes, tfs, titles in result:
        postings = list(zip(lexemes or (), tfs or (), titles or (), strict=True))
        yield chunk_id, document_id, length, postings


def describe(index: KeywordIndex) -> str:
    return (
        f"{index.size:,} chunks, {len(index.vocabulary):,} terms, {index.postings:,} postings, "
        f"{index.nbytes / 2**20:.0f} MiB"
    )
