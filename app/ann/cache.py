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

`VectorCache` puts together the parts that do each job: the entries and their registry
(`app.ann.entries`), builds (`app.ann.builds`), catching up (`app.ann.follow`), snapshots
(`app.ann.snapshot`) and the searches' candidates (`app.ann.candidates`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from app.ann import snapshot, source
from app.ann.builds import Builder
from app.ann.candidates import Candidates, PassRates
from app.ann.entries import Entry, Lag, Registry, iso
from app.ann.follow import Follower, Updater
from app.ann.index import IndexParams
from app.settings import VectorCacheSettings

log = logging.getLogger(__name__)


class VectorCache:
    """Every collection's index, the background threads that keep them, and the searches."""

    def __init__(self, engine: Engine, settings: VectorCacheSettings, root: Path) -> None:
        self.engine = engine
        self.settings = settings
        self.root = root
        self._synced_at = 0.0
        self.params = IndexParams(
            kind=settings.index,
            exact_below=settings.exact_below,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construction=settings.hnsw_ef_construction,
            hnsw_ef_search=settings.hnsw_ef_search,
            ivf_nprobe=settings.ivf_nprobe,
        )
        self.registry = Registry(engine)
        self.updater = Updater(engine, settings, self.params, self._start_rebuild)
        self.builder = Builder(engine, self.registry, self.params, root, self.updater.apply_pending)
        self.follower = Follower(engine, settings, self._round)
        self.pass_rates = PassRates(settings.max_candidates)
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load or build every collection's index in the background, then follow the log."""
        if self.started:
            return
        self.started = True
        self._sync_collections()
        self.follower.start()

    def stop(self, *, save: bool = True) -> None:
        """Stop following; write snapshots of changed indexes first (unless told not to)."""
        self.follower.stop()
        if save:
            for entry in self.entries():
                if entry.status == "ready":
                    snapshot.keep(self.root, entry, only_if_changed=True)
        self.builder.shutdown()

    def entries(self) -> list[Entry]:
        return self.registry.all()

    def entry(self, collection_id: int) -> Entry | None:
        return self.registry.get(collection_id)

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
        *,
        version: int,
    ) -> Candidates | None:
        """The nearest ids for a vector leg that keeps `needed` rows (see
        `PassRates.nearest`); None when the collection's index is not ready, or is of another
        vector version than the search's (`version`). `ef_search` overrides the HNSW search
        list length of the index's settings."""
        entry = self.entry(collection_id)
        if (
            entry is None
            or entry.current is None
            or entry.identity.created_at != iso(created_at)
            or entry.identity.version != version
        ):
            return None
        return self.pass_rates.nearest(
            entry.current, vector, needed, restriction, exact_below, ef_search
        )

    def observe(self, restriction: Hashable, asked: int, passed: int) -> None:
        """Record how many of `asked` candidates passed a restricted search's checks."""
        self.pass_rates.observe(restriction, asked, passed)

    # -- building --------------------------------------------------------------------------

    def ensure(self, collection_id: int) -> Entry:
        """Load or build one collection's index now, in this thread (CLI and evaluation)."""
        entry = self._known(collection_id)
        if entry.current is None:
            self.builder.load_or_build(entry)
        return entry

    def rebuild(self, collection_id: int, *, wait: bool = False, progress: bool = False) -> Entry:
        """Build the index again from the table and swap it in (in the background unless
        `wait`; with `progress`, a progress bar on the terminal)."""
        entry = self._known(collection_id)
        future = self.builder.rebuild(entry, progress)
        if wait:
            future.result()
            if entry.status == "failed":
                raise RuntimeError(f"rebuild failed: {entry.detail}")
        return entry

    def _known(self, collection_id: int) -> Entry:
        self._sync_collections(build=False)
        entry = self.entry(collection_id)
        if entry is None:
            raise KeyError(collection_id)
        return entry

    def _sync_collections(self, *, build: bool = True) -> None:
        """Track new collections (building their indexes) and forget dropped ones."""
        fresh, gone = self.registry.sync()
        for collection_id in gone:
            snapshot.remove(self.root, collection_id)
        if build:
            for entry in fresh:
                self.builder.submit(entry, self.builder.load_or_build)

    def _start_rebuild(self, entry: Entry) -> Future[None]:
        return self.builder.start_rebuild(entry)

    # -- following -------------------------------------------------------------------------

    def catch_up(self, collection_id: int) -> int:
        """Apply what changed since the collection's position; the number of changes."""
        entry = self.entry(collection_id)
        return 0 if entry is None else self.updater.catch_up(entry)

    def _round(self, woken: set[int] | None) -> None:
        """Catch up the entries of the collections notified (None: every one), and submit a
        snapshot of each one saved longer ago than the snapshot interval."""
        # New or dropped collections when they are notified or all is quiet; a re-embedded one
        # (a new vector version) at least once a poll interval, however busy the log is.
        stale = time.monotonic() - self._synced_at >= self.settings.poll_s
        if woken is None or stale or any(self.entry(cid) is None for cid in woken):
            self._synced_at = time.monotonic()
            self._sync_collections()
        for entry in self.entries():
            if entry.status != "ready" or (woken is not None and entry.identity.collection_id
                                           not in woken):  # fmt: skip
                continue
            try:
                self.updater.catch_up(entry, wait=False)
            except Exception:
                log.exception("vector cache of %s could not catch up",
                              entry.identity.collection_name)  # fmt: skip
            if time.time() - entry.saved_at >= self.settings.snapshot_s:
                self.builder.submit(entry, self._save_if_changed)

    def _save_if_changed(self, entry: Entry) -> None:
        snapshot.keep(self.root, entry, only_if_changed=True)

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
                    "model": entry.identity.model,
                    "dimension": entry.identity.dim,
                    "vectors_version": entry.identity.version,
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
