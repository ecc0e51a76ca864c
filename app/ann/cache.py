"""The in-process vector cache: one FAISS index per collection, rebuilt from the table and
kept up to date from the change log. PostgreSQL stays the source of truth.

Life of a collection's index:

1. Load the snapshot on disk if it belongs to the collection, else build from the table
   (binary COPY in one snapshot). Builds run on one background thread, so `/health` answers
   at once and `/ready` reports the cache as loading until every index is there.
2. Follow: the follower thread LISTENs on `hybrid_change_log` (every change-log append
   notifies it at commit) and also checks every `HYBRID_FAISS_POLL_INTERVAL` seconds; it
   applies the vector changes committed since the index's position (a transaction snapshot,
   so a slow writer is never skipped) and moves the position.
3. Rebuild in the background when an HNSW index carries too many tombstones, when a `flat`
   index has outgrown its size class, or when more changes are pending than catching up is
   worth; the new index catches up and is swapped in atomically.
4. Snapshot to disk after each build and, when changed, every `HYBRID_FAISS_SNAPSHOT_INTERVAL`.

Searches only ask the cache for candidate ids (`candidates`); the search statement checks
each one against the table, ACL and filters. A stale cache costs recall, never correctness,
and the statement reports whether the cache was fresh for the search's own snapshot.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from tqdm import tqdm

from app.ann import snapshot, source
from app.ann.index import IndexParams, VectorIndex, choose_kind
from app.ann.snapshot import Identity
from app.db.queries import query
from app.settings import VectorCacheSettings

log = logging.getLogger(__name__)

CHANNEL = "hybrid_change_log"
Status = Literal["loading", "ready", "failed"]
# Catching up on more changes than this share of the index (or this many) rebuilds instead.
CATCH_UP_SHARE = 0.25
CATCH_UP_MIN = 50_000
# A flat (exact) index is rebuilt as the large-collection type once it is this much past
# its size class.
OUTGROWN = 2.0
# Over-fetch of filtered searches: the share of candidates expected to pass before any was
# seen, and how fast the estimate follows what is seen.
FIRST_PASS_RATE = 0.25
PASS_RATE_WEIGHT = 0.5
PASS_RATES_KEPT = 4096
WAIT_SLICE_S = 0.25


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


@dataclass(frozen=True)
class Candidates:
    """Nearest chunk ids from the cache, the position they reflect, and whether they are
    partial: fewer than every vector the index holds (so more might pass the filters). An IVF
    index searches some of its lists, and HNSW skips tombstones, so either may return fewer
    than were asked and still not all."""

    ids: list[int]
    position: str
    partial: bool
    asked: int


class VectorCache:
    """Every collection's index, the background threads that keep them, and the searches."""

    def __init__(self, engine: Engine, settings: VectorCacheSettings, root: Path) -> None:
        self.engine = engine
        self.settings = settings
        self.root = root
        self.params = IndexParams(
            kind=settings.index,
            exact_below=settings.exact_below,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
            ivf_nprobe=settings.ivf_nprobe,
        )
        self._entries: dict[int, Entry] = {}
        self._entries_lock = threading.Lock()
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-cache-build")
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self._pass_rates: OrderedDict[Hashable, float] = OrderedDict()
        self._rates_lock = threading.Lock()
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load or build every collection's index in the background, then follow the log."""
        if self.started:
            return
        self.started = True
        self._sync_collections()
        # Listening before the thread starts: no change committed after `start()` is missed.
        listening = self._listen()
        self._follower = threading.Thread(
            target=self._follow, args=(listening,), name="vector-cache-follow"
        )
        self._follower.daemon = True
        self._follower.start()

    def stop(self, *, save: bool = True) -> None:
        """Stop following; write snapshots of changed indexes first (unless told not to)."""
        self._stop.set()
        if self._follower:
            self._follower.join(timeout=30)
        if save:
            for entry in self.entries():
                if entry.status == "ready":
                    self._save(entry, only_if_changed=True)
        self._builder.shutdown(wait=True, cancel_futures=True)

    def entries(self) -> list[Entry]:
        with self._entries_lock:
            return list(self._entries.values())

    def entry(self, collection_id: int) -> Entry | None:
        with self._entries_lock:
            return self._entries.get(collection_id)

    @property
    def ready(self) -> bool:
        """Every known collection's index is loaded (failed ones count: search falls back)."""
        return self.started and all(e.status != "loading" for e in self.entries())

    # -- searches --------------------------------------------------------------------------

    def candidates(
        self,
        collection_id: int,
        created_at: datetime,
        vector: list[float],
        needed: int,
        restriction: Hashable | None,
        exact_below: float = 0,
        ef_search: int | None = None,
    ) -> Candidates | None:
        """The nearest ids for a vector leg that keeps `needed` rows, over-fetching for a
        restricted search by the share of candidates such searches saw pass; None when the
        collection's index is not ready. When that share says the search sees no more
        vectors than the statement scans exactly (`exact_below`, the exact-scan threshold,
        grown with the square root of the size past 100k as in search.sql), no ids at all.
        `ef_search` overrides the HNSW search list length of the index's settings."""
        entry = self.entry(collection_id)
        if entry is None or entry.current is None or entry.identity.created_at != _iso(created_at):
            return None
        index, position = entry.current
        asked = needed
        if restriction is not None:
            rate = self._pass_rate(restriction)
            if rate * index.live <= exact_below * math.sqrt(max(index.live, 100_000) / 100_000):
                return Candidates([], position, partial=True, asked=0)
            asked = min(max(needed, math.ceil(needed / rate * 1.2)), self.settings.max_candidates)
        ids = index.search(np.asarray(vector, dtype=np.float32), asked, ef_search)
        return Candidates(ids.tolist(), position, partial=len(ids) < index.live, asked=asked)

    def observe(self, restriction: Hashable, asked: int, passed: int) -> None:
        """Record how many of `asked` candidates passed a restricted search's checks."""
        if asked <= 0:
            return
        seen = max(passed / asked, 1 / max(self.settings.max_candidates, 1))
        with self._rates_lock:
            old = self._pass_rates.pop(restriction, None)
            rate = seen if old is None else PASS_RATE_WEIGHT * seen + (1 - PASS_RATE_WEIGHT) * old
            self._pass_rates[restriction] = rate
            while len(self._pass_rates) > PASS_RATES_KEPT:
                self._pass_rates.popitem(last=False)

    def _pass_rate(self, restriction: Hashable) -> float:
        with self._rates_lock:
            return self._pass_rates.get(restriction, FIRST_PASS_RATE)

    # -- building --------------------------------------------------------------------------

    def ensure(self, collection_id: int) -> Entry:
        """Load or build one collection's index now, in this thread (CLI and evaluation)."""
        self._sync_collections(build=False)
        entry = self.entry(collection_id)
        if entry is None:
            raise KeyError(collection_id)
        if entry.current is None:
            self._load_or_build(entry)
        return entry

    def rebuild(self, collection_id: int, *, wait: bool = False, progress: bool = False) -> Entry:
        """Build the index again from the table and swap it in (in the background unless
        `wait`; with `progress`, a progress bar on the terminal)."""
        self._sync_collections(build=False)
        entry = self.entry(collection_id)
        if entry is None:
            raise KeyError(collection_id)
        future = self._schedule_rebuild(entry, progress)
        if wait:
            future.result()
            if entry.status == "failed":
                raise RuntimeError(f"rebuild failed: {entry.detail}")
        return entry

    def _sync_collections(self, *, build: bool = True) -> None:
        """Track new collections (building their indexes) and forget dropped ones."""
        with self.engine.connect() as conn:
            rows = conn.execute(query("ann.sql", "collections")).mappings().all()
        seen = {}
        for row in rows:
            identity = Identity(
                collection_id=row["id"],
                collection_name=row["name"],
                created_at=_iso(row["created_at"]),
                model=row["embedding_model"],
                dim=row["embedding_dim"],
            )
            seen[row["id"]] = identity
        with self._entries_lock:
            for gone in [cid for cid, e in self._entries.items() if seen.get(cid) != e.identity]:
                del self._entries[gone]
                snapshot.remove(self.root, gone)
            fresh = [Entry(identity) for cid, identity in seen.items() if cid not in self._entries]
            for entry in fresh:
                self._entries[entry.identity.collection_id] = entry
        if build:
            for entry in fresh:
                self._builder.submit(self._guarded, entry, self._load_or_build)

    def _guarded(self, entry: Entry, work: Callable[[Entry], None]) -> None:
        try:
            work(entry)
        except Exception as exc:
            log.exception("vector cache of collection %s failed", entry.identity.collection_name)
            if entry.current is None:
                entry.status, entry.detail = "failed", f"{type(exc).__name__}: {exc}"

    def _load_or_build(self, entry: Entry) -> None:
        loaded = snapshot.load(self.root, entry.identity, self.params)
        if loaded is not None:
            entry.current = (loaded.index, loaded.position)
            entry.saved_position, entry.saved_at = loaded.position, loaded.saved_at
            log.info(
                "vector cache of collection %s loaded from its snapshot (%d vectors)",
                entry.identity.collection_name,
                loaded.index.size,
            )
            self._catch_up(entry)
        else:
            index, position = self._build(entry)
            entry.current = (index, position)
            self._catch_up(entry)
        entry.status, entry.detail = "ready", self._describe(entry)
        if loaded is None:
            self._save(entry)

    def _build(self, entry: Entry, show_progress: bool = False) -> tuple[VectorIndex, str]:
        """Read every vector (one step a vector) and index it (another): progress goes to
        `entry.progress`, the log every 100k steps, and with `show_progress` a bar."""
        identity = entry.identity
        expected = self._chunk_count(identity.collection_id)
        started = time.perf_counter()
        bar = tqdm(total=2 * expected, desc=f"index {identity.collection_name}",
                   unit="step", disable=not show_progress)  # fmt: skip
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            bar.update(rows)
            entry.progress = (done, 2 * expected)
            if expected >= 100_000 and done % 100_000 < rows:
                log.info("vector cache of %s: %d of %d steps", identity.collection_name, done,
                         2 * expected)  # fmt: skip

        entry.detail = f"building from {expected} chunks"
        with bar:
            read = source.read_all(
                self.engine, identity.collection_id, identity.dim, expected, advance
            )
            index = VectorIndex.build(identity.dim, read.ids, read.vectors, self.params, advance)
        entry.built_in_s = time.perf_counter() - started
        log.info(
            "vector cache of collection %s built: %s index of %d vectors in %.1f s",
            identity.collection_name,
            index.kind,
            index.size,
            entry.built_in_s,
        )
        return index, read.position

    def _schedule_rebuild(self, entry: Entry, show_progress: bool = False) -> Future[None]:
        with entry.lock:
            return self._start_rebuild(entry, show_progress)

    def _start_rebuild(self, entry: Entry, show_progress: bool = False) -> Future[None]:
        """Under the entry's lock: the rebuild under way, or a new one on the builder."""
        if entry.rebuilding is None or entry.rebuilding.done():
            work = partial(self._rebuild, show_progress=show_progress)
            entry.rebuilding = self._builder.submit(self._guarded, entry, work)
        return entry.rebuilding

    def _rebuild(self, entry: Entry, show_progress: bool = False) -> None:
        index, position = self._build(entry, show_progress)
        with entry.lock:
            # Catch the new index up to now and swap it in, so no change falls between.
            entry.current = (index, position)
            self._apply_pending(entry)
        entry.status, entry.detail = "ready", self._describe(entry)
        self._save(entry)

    def _chunk_count(self, collection_id: int) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(query("ann.sql", "collections")).mappings().all()
        return next((int(r["chunks"]) for r in rows if r["id"] == collection_id), 0)

    # -- following -------------------------------------------------------------------------

    def catch_up(self, collection_id: int) -> int:
        """Apply what changed since the collection's position; the number of changes."""
        entry = self.entry(collection_id)
        return 0 if entry is None else self._catch_up(entry)

    def _catch_up(self, entry: Entry, *, wait: bool = True) -> int:
        if not entry.lock.acquire(blocking=wait):
            return 0  # a rebuild is swapping or a snapshot is being written: next round
        try:
            return self._apply_pending(entry)
        finally:
            entry.lock.release()

    def _apply_pending(self, entry: Entry) -> int:
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
            self._start_rebuild(entry)
            return 0
        changes = source.read_changes(self.engine, identity.collection_id, position, identity.dim)
        index.apply(changes.inserted_ids, changes.inserted, changes.deleted_ids)
        entry.current = (index, changes.position)
        entry.applied += changes.count
        entry.lag = Lag(0, 0.0, waiting.head, time.time())
        entry.detail = self._describe(entry)
        if self._needs_rebuild(index):
            self._start_rebuild(entry)
        return changes.count

    def _needs_rebuild(self, index: VectorIndex) -> bool:
        if index.kind == "hnsw" and index.tombstone_share >= self.settings.rebuild_tombstones:
            return True
        outgrown = index.kind == "flat" and index.live >= OUTGROWN * max(self.params.exact_below, 1)
        return outgrown and choose_kind(self.params, index.live) != "flat"

    def _follow(self, conn: psycopg.Connection[Any] | None) -> None:
        """Wake on notifications (or every poll interval) and catch every index up. After
        each (re)connection, one full round covers what changed while nobody listened."""
        while not self._stop.is_set():
            try:
                with conn or self._listen() as listening:
                    conn = None
                    self._round(None)
                    while not self._stop.is_set():
                        self._round(self._wait(listening))
            except psycopg.OperationalError as exc:
                conn = None
                log.warning("vector cache follower lost its connection (%s); retrying",
                            str(exc).splitlines()[0])  # fmt: skip
                self._stop.wait(self.settings.poll_s)
            except Exception:
                conn = None
                log.exception("vector cache follower failed; retrying")
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

    def _round(self, woken: set[int] | None) -> None:
        if woken is None or any(self.entry(cid) is None for cid in woken):
            self._sync_collections()
        for entry in self.entries():
            if entry.status != "ready" or (woken is not None and entry.identity.collection_id
                                           not in woken):  # fmt: skip
                continue
            try:
                self._catch_up(entry, wait=False)
            except Exception:
                log.exception("vector cache of %s could not catch up",
                              entry.identity.collection_name)  # fmt: skip
            if time.time() - entry.saved_at >= self.settings.snapshot_s:
                self._builder.submit(self._guarded, entry, self._save_if_changed)

    # -- snapshots -------------------------------------------------------------------------

    def _save_if_changed(self, entry: Entry) -> None:
        self._save(entry, only_if_changed=True)

    def _save(self, entry: Entry, *, only_if_changed: bool = False) -> None:
        with entry.lock:
            if entry.current is None:
                return
            index, position = entry.current
            if only_if_changed and position == entry.saved_position:
                entry.saved_at = time.time()
                return
            try:
                snapshot.save(self.root, entry.identity, index, position)
            except OSError as exc:  # the index in memory is fine; the next save tries again
                log.warning("vector cache snapshot of %s not written: %s",
                            entry.identity.collection_name, exc)  # fmt: skip
                return
            entry.saved_position, entry.saved_at = position, time.time()

    # -- reports ---------------------------------------------------------------------------

    def refresh_lag(self) -> None:
        """Measure every ready index's lag behind the log now."""
        for entry in self.entries():
            if entry.current is not None:
                waiting = source.pending(self.engine, entry.identity.collection_id,
                                         entry.current[1])  # fmt: skip
                entry.lag = Lag.of(waiting)  # fmt: skip

    def snapshot_status(self) -> list[dict[str, Any]]:
        """One row per collection about its snapshot on disk (for processes without a running
        cache): index type, vectors, tombstones, when saved, changes since."""
        self._sync_collections(build=False)
        rows = []
        for entry in self.entries():
            found = snapshot.read_meta(self.root, entry.identity)
            meta = found[1] if found else None
            waiting = source.pending(self.engine, entry.identity.collection_id,
                                     meta["position"]) if meta else None  # fmt: skip
            rows.append(
                {
                    "collection": entry.identity.collection_name,
                    "kind": meta["kind"] if meta else None,
                    "vectors": meta["vectors"] - meta.get("tombstones", 0) if meta else 0,
                    "tombstones": meta.get("tombstones", 0) if meta else 0,
                    "saved": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["saved_at"]))
                    if meta
                    else "never",
                    "lag_changes": waiting.changes if waiting else None,
                }
            )
        return rows

    def status(self) -> list[dict[str, Any]]:
        """One row per collection: state, index type and size, tombstones, lag."""
        rows = []
        for entry in self.entries():
            index = entry.current[0] if entry.current else None
            done, total = entry.progress
            rows.append(
                {
                    "collection": entry.identity.collection_name,
                    "status": entry.status,
                    "detail": entry.detail,
                    "kind": index.kind if index else None,
                    "vectors": index.live if index else 0,
                    "tombstones": index.size - index.live if index else 0,
                    "rebuilding": bool(entry.rebuilding and not entry.rebuilding.done()),
                    "progress": round(done / total, 3) if total and entry.current is None else None,
                    "lag_changes": entry.lag.changes,
                    "lag_seconds": round(entry.lag.seconds, 3),
                    "log_head": entry.lag.head,
                    "built_in_s": round(entry.built_in_s, 2),
                }
            )
        return rows

    def _describe(self, entry: Entry) -> str:
        if entry.current is None:
            return entry.detail
        index = entry.current[0]
        return f"{index.kind} index of {index.live} vectors"


def _iso(moment: datetime) -> str:
    return moment.isoformat()
