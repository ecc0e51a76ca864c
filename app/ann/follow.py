"""Keeping indexes up to date: the follower thread LISTENs on `hybrid_change_log` (every
change-log append notifies it at commit) and also checks every `HYBRID_FAISS_POLL_INTERVAL`
seconds; it applies the vector changes committed since each index's position (a transaction
snapshot, so a slow writer is never skipped) and moves the position. Too many changes, too
many tombstones or an outgrown exact index start a rebuild instead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from app.ann import source
from app.ann.entries import Entry, Lag
from app.ann.index import IndexParams, VectorIndex, choose_kind
from app.settings import VectorCacheSettings

log = logging.getLogger(__name__)

CHANNEL = "hybrid_change_log"
# Catching up on more changes than this share of the index (or this many) rebuilds instead.
CATCH_UP_SHARE = 0.25
CATCH_UP_MIN = 50_000
# A flat (exact) index is rebuilt as the large-collection type once it is this much past
# its size class.
OUTGROWN = 2.0
WAIT_SLICE_S = 0.25


class Updater:
    """Applies an entry's pending changes; `rebuild` starts a rebuild (under the entry's lock)
    when applying them is not worth it or leaves the index worse than a new one."""

    def __init__(
        self,
        engine: Engine,
        settings: VectorCacheSettings,
        params: IndexParams,
        rebuild: Callable[[Entry], Future[None]],
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.params = params
        self._rebuild = rebuild

    def catch_up(self, entry: Entry, *, wait: bool = True) -> int:
        """Apply what changed since the entry's position; the number of changes (0 without
        waiting while a rebuild swaps or a snapshot is written: the next round applies them)."""
        if not entry.lock.acquire(blocking=wait):
            return 0
        try:
            return self.apply_pending(entry)
        finally:
            entry.lock.release()

    def apply_pending(self, entry: Entry) -> int:
        """Under the entry's lock: apply the pending changes, or rebuild when they are many."""
        if entry.current is None:
            return 0
        index, position = entry.current
        identity = entry.identity
        waiting = source.pending(self.engine, identity.collection_id, position)
        entry.lag = Lag.of(waiting)
        if not waiting.changes:
            return 0
        if waiting.changes > max(CATCH_UP_MIN, CATCH_UP_SHARE * index.size):
            self._rebuild(entry)
            return 0
        changes = source.read_changes(
            self.engine, identity.collection_id, position, identity.dim, identity.version
        )
        index.apply(changes.inserted_ids, changes.inserted, changes.deleted_ids)
        entry.current = (index, changes.position)
        entry.applied += changes.count
        entry.lag = Lag(0, 0.0, waiting.head, time.time())
        entry.detail = entry.describe()
        if self.needs_rebuild(index):
            self._rebuild(entry)
        return changes.count

    def needs_rebuild(self, index: VectorIndex) -> bool:
        if index.kind == "hnsw" and index.tombstone_share >= self.settings.rebuild_tombstones:
            return True
        outgrown = index.kind == "flat" and index.live >= OUTGROWN * max(self.params.exact_below, 1)
        return outgrown and choose_kind(self.params, index.live) != "flat"


class Follower:
    """The thread that wakes on notifications (or every poll interval) and runs `round` with
    the collection ids notified (None: a quiet interval, or a new connection, so every one)."""

    def __init__(
        self,
        engine: Engine,
        settings: VectorCacheSettings,
        round: Callable[[set[int] | None], None],
        name: str = "vector cache",
    ) -> None:
        self.engine = engine
        self.settings = settings
        self._round = round
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Listening before the thread starts: no change committed after `start()` is missed.
        listening = self._listen()
        self._thread = threading.Thread(
            target=self._follow,
            args=(listening,),
            name=f"{self.name.replace(' ', '-')}-follow",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def _follow(self, conn: psycopg.Connection[Any] | None) -> None:
        """After each (re)connection, one full round covers what changed while nobody
        listened."""
        while not self._stop.is_set():
            try:
                with conn or self._listen() as listening:
                    conn = None
                    self._round(None)
                    while not self._stop.is_set():
                        self._round(self._wait(listening))
            except psycopg.OperationalError as exc:
                conn = None
                log.warning("%s follower lost its connection (%s); retrying",
                            self.name, str(exc).splitlines()[0])  # fmt: skip
                self._stop.wait(self.settings.poll_s)
            except Exception:
                conn = None
                log.exception("%s follower failed; retrying", self.name)
                self._stop.wait(self.settings.poll_s)

    def _listen(self) -> psycopg.Connection[Any]:
        url = make_url(self.engine.url).set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _wait(self, conn: psycopg.Connection[Any]) -> set[int] | None:
        """Collection ids notified within the poll interval; None when it passed quietly.
        Waits in short slices so that `stop()` is never kept waiting."""
        woken: set[int] = set()
        deadline = time.monotonic() + self.settings.poll_s
        while not woken and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for note in conn.notifies(timeout=min(left, WAIT_SLICE_S), stop_after=1):
                woken.update(int(part) for part in note.payload.split(",") if part)
        # Gather what else arrived meanwhile without waiting again.
        for note in conn.notifies(timeout=0.01):
            woken.update(int(part) for part in note.payload.split(",") if part)
        return woken or None
