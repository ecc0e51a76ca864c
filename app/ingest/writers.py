"""Batches written by several transactions at once.

A batch's write is one transaction on its own connection; up to `writers` run at the same
time, each in a thread of its own, so that PostgreSQL works on two batches with two
processes (a store step is server-bound: the tsvector, its GIN entries and the BM25
statistics). One writer writes on the calling thread. The BM25 statistics triggers queue
concurrent writers of one collection on its `corpus_stats` row, never deadlocking on lexeme
rows: new documents wait there only for the statistics part of each other's batch, but a
batch that replaces stored chunks takes that row with its deletes, at its start, so batches of
re-ingested documents are written one after another.

Two batches that touch the same document never run together: a batch waits for every batch
in flight that shares one of its keys (external ids), so a document repeated later in the
input still wins, as it does written one batch at a time. Outcomes are delivered in
submission order. A batch that PostgreSQL rolled back for a deadlock or a serialization
failure (with writers of other requests) is written again, up to `retries` times. When a write
fails, no further batch starts, the ones in flight finish, and the first error is raised:
every batch is whole or absent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from app.db.engine import retrying

T = TypeVar("T")


@dataclass
class _InFlight(Generic[T]):
    keys: frozenset[str]
    future: Future[T]
    done: Callable[[T], None]


class ConcurrentWriter(Generic[T]):
    """Runs `write(conn)` jobs in their own transactions, at most `writers` at a time."""

    def __init__(self, engine: Engine, writers: int, retries: int = 0) -> None:
        self.engine = engine
        self.writers = max(writers, 1)
        self.retries = retries
        # One writer writes on the calling thread: one connection at a time, as ever.
        self._pool = (
            ThreadPoolExecutor(self.writers, thread_name_prefix="hybrid-writer")
            if self.writers > 1
            else None
        )
        self._in_flight: deque[_InFlight[T]] = deque()

    def submit(
        self, keys: Collection[str], write: Callable[[Connection], T], done: Callable[[T], None]
    ) -> None:
        """Start `write` once no batch in flight shares a key and a writer is free; `done`
        gets its result, in submission order, on the submitting thread. Raises the error of a
        batch that failed meanwhile instead of starting another."""
        self.wait_for(keys)
        while len(self._in_flight) >= self.writers:
            self._finish_oldest()
        if self._pool is None:
            done(self._transaction(write))
            return
        future = self._pool.submit(self._transaction, write)
        self._in_flight.append(_InFlight(frozenset(keys), future, done))

    def wait_for(self, keys: Collection[str]) -> None:
        """Finish the batches in flight that share a key with `keys` (and those before them);
        raise the error of any batch that has failed."""
        if any(job.future.done() and job.future.exception() for job in self._in_flight):
            self.finish()
        wanted = frozenset(keys)
        while any(job.keys & wanted for job in self._in_flight):
            self._finish_oldest()

    def finish(self) -> None:
        """Finish every batch in flight."""
        while self._in_flight:
            self._finish_oldest()

    def _transaction(self, write: Callable[[Connection], T]) -> T:
        return retrying(self.engine, write, self.retries)

    def _finish_oldest(self) -> None:
        job = self._in_flight.popleft()
        try:
            result = job.future.result()
        except BaseException:
            self.abandon()
            raise
        job.done(result)

    def abandon(self) -> None:
        """After a failure: let the batches in flight end (each commits or rolls back whole)."""
        while self._in_flight:
            job = self._in_flight.popleft()
            job.future.exception()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


@contextmanager
def concurrent_writer(
    engine: Engine, writers: int, retries: int = 0
) -> Iterator[ConcurrentWriter[Any]]:
    """A writer whose batches have all ended (written, or failed and raised) on exit."""
    writer: ConcurrentWriter[Any] = ConcurrentWriter(engine, writers, retries)
    try:
        yield writer
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    finally:
        writer.close()
