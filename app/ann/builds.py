"""Building a collection's index: from its snapshot when one matches, else from the table
(binary COPY in one snapshot), on one background thread; rebuilds catch the new index up and
swap it in under the entry's lock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from sqlalchemy import Engine
from tqdm import tqdm

from app.ann import snapshot, source
from app.ann.entries import Entry, Registry
from app.ann.index import IndexParams, VectorIndex

log = logging.getLogger(__name__)


class Builder:
    """Loads, builds and rebuilds entries' indexes; `catch_up` applies the changes since an
    index's position (under the entry's lock)."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        params: IndexParams,
        root: Path,
        catch_up: Callable[[Entry], int],
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.params = params
        self.root = root
        self._catch_up = catch_up
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vector-cache-build")

    def submit(self, entry: Entry, work: Callable[[Entry], None]) -> Future[None]:
        """Run `work(entry)` on the build thread; a failure marks an entry without an index
        failed (one with an index keeps serving it)."""
        return self._executor.submit(self._guarded, entry, work)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _guarded(self, entry: Entry, work: Callable[[Entry], None]) -> None:
        try:
            work(entry)
        except Exception as exc:
            log.exception("vector cache of collection %s failed", entry.identity.collection_name)
            if entry.current is None:
                entry.status, entry.detail = "failed", f"{type(exc).__name__}: {exc}"

    def load_or_build(self, entry: Entry) -> None:
        loaded = snapshot.load(self.root, entry.identity, self.params)
        if loaded is not None:
            entry.current = (loaded.index, loaded.position)
            entry.saved_position, entry.saved_at = loaded.position, loaded.saved_at
            log.info(
                "vector cache of collection %s loaded from its snapshot (%d vectors)",
                entry.identity.collection_name,
                loaded.index.size,
            )
        else:
            entry.current = self._build(entry)
        with entry.lock:
            self._catch_up(entry)
        entry.status, entry.detail = "ready", entry.describe()
        if loaded is None:
            snapshot.keep(self.root, entry)

    def rebuild(self, entry: Entry, show_progress: bool = False) -> Future[None]:
        with entry.lock:
            return self.start_rebuild(entry, show_progress)

    def start_rebuild(self, entry: Entry, show_progress: bool = False) -> Future[None]:
        """Under the entry's lock: the rebuild under way, or a new one on the build thread."""
        if entry.rebuilding is None or entry.rebuilding.done():
            entry.rebuilding = self.submit(
                entry, partial(self._rebuild, show_progress=show_progress)
            )
        return entry.rebuilding

    def _rebuild(self, entry: Entry, show_progress: bool = False) -> None:
        index, position = self._build(entry, show_progress)
        with entry.lock:
            # Catch the new index up to now and swap it in, so no change falls between.
            entry.current = (index, position)
            self._catch_up(entry)
        entry.status, entry.detail = "ready", entry.describe()
        snapshot.keep(self.root, entry)

    def _build(self, entry: Entry, show_progress: bool = False) -> tuple[VectorIndex, str]:
        """Read every vector (one step a vector) and index it (another): progress goes to
        `entry.progress`, the log every 100k steps, and with `show_progress` a bar."""
        identity = entry.identity
        expected = self.registry.chunk_count(identity.collection_id)
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
                self.engine, identity.collection_id, identity.dim, expected, advance,
                identity.version,
            )  # fmt: skip
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
