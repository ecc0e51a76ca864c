"""What a worker does with a job: ingest its files, delete what its filter matches, or
re-embed a collection with another model (app/ingest/reembed.py).

A run is safe to repeat. Ingest writes whole batches, each in one transaction that also records
its documents' outcomes in `job_documents`; a run that starts again (after a crash, a stop or a
retry) skips the documents already recorded, and the write path's content hashes make a
document written twice an `unchanged` one, never a second copy. A delete writes a few hundred
documents a transaction and counts them in the same transaction. A re-embedding resumes from
what the collection's tables say: chunks that have their next vector are not embedded again.

A run stops between batches when the job is cancelled (`cancelled`) or the worker is stopping
(`Interrupted`: the job goes back to the queue for another worker). A transient failure (the
database restarting, the embedding provider down, rate limiting or timing out) is retried in
the run, after a pause that doubles each time, up to `HYBRID_JOB_ATTEMPTS` runs; any other
failure (a provider rejecting the request or answering with something unusable, a bug) fails
the job at once with its reason. A document or file that cannot be read or is refused fails
alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app import collections, documents
from app.access import audit
from app.db.engine import unbounded
from app.db.failures import translate
from app.db.queries import query
from app.documents import Visibility
from app.errors import HybridError, Unavailable
from app.ingest import load, reembed
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Defaults, IngestReport, PendingBatch
from app.jobs import records
from app.jobs.blobs import BlobStore
from app.search.filters import compile_filter
from app.service import Services

log = structlog.get_logger(__name__)

# Documents soft-deleted per transaction by a delete job.
DELETE_BATCH = 500


class Interrupted(Exception):
    """The worker is stopping: the job goes back to the queue and resumes elsewhere."""


class Cancelled(Exception):
    """The job was cancelled while it ran."""


class Runner:
    """Runs jobs with one process's services; `should_stop()` says the worker is stopping."""

    def __init__(self, services: Services, blobs: BlobStore) -> None:
        self.services = services
        self.blobs = blobs
        self.settings = services.settings

    def run(self, job_id: int, should_stop: Callable[[], bool]) -> None:
        """Run the job to its end (done, failed, cancelled), retrying transient failures; raise
        `Interrupted` when the worker stops first."""
        attempts = self.settings.jobs.attempts
        for attempt in range(attempts):
            try:
                self._attempt(job_id, attempt, should_stop)
                return
            except Cancelled:
                self._abandon(job_id)
                self._finish(job_id, "cancelled")
                return
            except Interrupted:
                self._note(job_id, "the worker stopped; the job resumes on the next worker")
                raise
            except Exception as exc:
                reason = _reason(exc)
                if not _transient(exc) or attempt + 1 == attempts:
                    log.warning("job failed", job_id=job_id, reason=reason)
                    self._finish(job_id, "failed", reason)
                    return
                wait = self.settings.jobs.retry_wait_s * 2**attempt
                log.info("job retried", job_id=job_id, reason=reason, wait_s=wait)
                self._note(job_id, f"retrying in {wait:g} s (run {attempt + 1}): {reason}")
            self._pause(wait, should_stop)

    def _attempt(self, job_id: int, attempt: int, should_stop: Callable[[], bool]) -> None:
        with self.services.transaction() as conn:
            started = conn.execute(query("jobs.sql", "start_run"), {"job_id": job_id}).first()
            job = records.get(conn, job_id) if started else None
        if job is None:
            raise Cancelled  # cancelled meanwhile (a finished job is left as it is)
        log.info("job started", job_id=job_id, kind=job.kind, attempt=attempt + 1)
        work = {
            records.INGEST: self._ingest,
            records.DELETE: self._delete,
            records.REEMBED: self._reembed,
        }[job.kind]
        work(job, lambda: self._check_stop(job_id, should_stop))
        self._finish(job_id, "done")

    # Ingest

    def _ingest(self, job: records.Job, check: Callable[[], None]) -> None:
        services = self.services
        with services.transaction() as conn:
            files = list(conn.execute(query("jobs.sql", "job_files"), {"job_id": job.id}))
            recorded = {
                row.external_id: row.content_hash
                for row in conn.execute(query("jobs.sql", "recorded_documents"), {"job_id": job.id})
            }
        params = job.params
        if job.documents_total is None:
            total = self._count(job.id, files, params)
            with services.transaction() as conn:
                conn.execute(query("jobs.sql", "set_total"), {"job_id": job.id, "total": total})
        ingestor = services.ingestor
        stopped: list[BaseException] = []

        def pending() -> Iterator[SourceDocument]:
            """The input documents not yet written by this job, checking between batches
            whether to stop (the pipeline then finishes the batches it holds)."""
            every = self.settings.ingest.batch_documents
            for row in files:
                for n, doc in enumerate(self._documents(job.id, row, params) or []):
                    if n % every == 0:
                        try:
                            check()
                        except (Cancelled, Interrupted) as exc:
                            stopped.append(exc)
                            return
                    if recorded.get(doc.external_id) == ingestor.stored_hash(doc):
                        continue
                    yield doc

        defaults = Defaults(metadata=params.get("metadata") or {}, acl=params.get("acl"))
        ingestor.ingest(
            job.collection,
            pending(),
            defaults=defaults,
            isolate_failures=True,
            record=lambda conn, batch: _record(conn, job.id, batch),
        )
        if stopped:
            raise stopped[0]

    def _count(self, job_id: int, files: list[Any], params: dict[str, Any]) -> int:
        """The input's documents (an id repeated counts once, a file that cannot be read
        counts as one failure)."""
        ids: set[str] = set()
        unreadable = 0
        for row in files:
            docs = self._documents(job_id, row, params)
            if docs is None:
                unreadable += 1
            else:
                ids.update(doc.external_id for doc in docs)
        return len(ids) + unreadable

    def _documents(
        self, job_id: int, row: Any, params: dict[str, Any]
    ) -> list[SourceDocument] | None:
        """A file's documents; None when it cannot be read (recorded as its failure)."""
        limits = self.settings.ingest
        try:
            data = self.blobs.path(row.sha256).read_bytes()
        except FileNotFoundError:
            self._file_failed(job_id, row.name, "the uploaded file is no longer kept")
            return None
        try:
            return load.load_bytes(
                data,
                row.name,
                max_bytes=max(limits.max_upload_bytes, row.size),  # checked when it came
                max_chars=limits.max_document_chars,
                max_pdf_pages=limits.max_pdf_pages,
                external_id=params.get("external_id"),
            )
        except HybridError as exc:
            self._file_failed(job_id, row.name, exc.message)
            return None

    def _file_failed(self, job_id: int, name: str, reason: str) -> None:
        with self.services.transaction() as conn:
            conn.execute(
                query("jobs.sql", "record_file_failure"),
                {"job_id": job_id, "source": name, "error": reason},
            )

    # Delete by filter

    def _delete(self, job: records.Job, check: Callable[[], None]) -> None:
        compiled = compile_filter(job.params["filter"])
        matching = Visibility(None, compiled.check_sql, compiled.params)
        with self.services.transaction() as conn:
            collection = collections.get(conn, job.collection)
            if job.documents_total is None:
                total = documents.delete_matching(conn, collection.id, matching, dry_run=True)
                conn.execute(query("jobs.sql", "set_total"), {"job_id": job.id, "total": total})

        def batch(conn: Connection) -> int:
            with unbounded(conn):
                deleted = documents.delete_matching(
                    conn, collection.id, matching, dry_run=False, limit=DELETE_BATCH
                )
            conn.execute(
                query("jobs.sql", "record_deleted"), {"job_id": job.id, "deleted": deleted}
            )
            if deleted:
                detail = {"filter": job.params["filter"], "deleted": deleted, "job": job.id}
                audit.record(conn, audit.DOCUMENTS_DELETED, job.key_id, job.collection, detail)
            return deleted

        while True:
            check()
            if self.services.write(batch) < DELETE_BATCH:
                break

    # Re-embedding

    def _reembed(self, job: records.Job, check: Callable[[], None]) -> None:
        services, engine = self.services, self.services.engine
        target = reembed.Target(job.params["model"], int(job.params["dimension"]))
        with services.transaction() as conn:
            collection = collections.get(conn, job.collection)
        model = (collection.embedding_model, collection.embedding_dim)
        if collection.next_model is None and model == (target.model, target.dimension):
            reembed.retire(engine, collection.id)  # an earlier run switched it
            return
        embedder = services.embedders.get(target.model, target.dimension)
        ingestor = services.ingestor

        counted = IngestReport()  # what the model embedded (the rest came from the cache)

        def embed(texts: list[str]) -> Any:
            return ingestor.embed_cached(texts, counted, embedder)

        recorded = {"embedded": 0}

        def record(progress: reembed.Progress) -> None:
            with services.transaction() as conn:
                conn.execute(
                    query("reembed.sql", "job_progress"),
                    {
                        "job_id": job.id,
                        "total": progress.total,
                        "done": progress.done,
                        "embedded": counted.embedded - recorded["embedded"],
                    },
                )
            recorded["embedded"] = counted.embedded

        def between(progress: reembed.Progress) -> None:
            record(progress)
            check()

        collection = reembed.begin(engine, collection.id, target)
        progress = reembed.counts(engine, collection)
        between(progress)
        batch = self.settings.jobs.reembed_batch
        reembed.fill(engine, collection, embed, progress, between, batch)
        reembed.build_index(engine, collection, self.settings.ingest.index_memory)
        check()
        # What was written during the build, so that the switch's own share stays small.
        reembed.fill(engine, collection, embed, progress, between, batch)
        reembed.switch(engine, collection, embed, progress, batch)
        progress.total = progress.done = reembed.counts(engine, collection).total
        record(progress)
        reembed.retire(engine, collection.id)

    # State

    def _check_stop(self, job_id: int, should_stop: Callable[[], bool]) -> None:
        if should_stop():
            raise Interrupted
        with self.services.transaction() as conn:
            if conn.execute(query("jobs.sql", "cancel_requested"), {"job_id": job_id}).scalar():
                raise Cancelled

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        """Wait before a retry (a cancel is seen when the next run starts)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
            if should_stop():
                raise Interrupted

    def _abandon(self, job_id: int) -> None:
        """A re-embedding cancelled before its switch leaves its collection as it was."""
        with self.services.transaction() as conn:
            job = records.get(conn, job_id)
            if job.kind != records.REEMBED:
                return
            collection = collections.get(conn, job.collection)
        reembed.abandon(self.services.engine, collection.id)

    def _finish(self, job_id: int, state: str, error: str | None = None) -> None:
        with self.services.transaction() as conn:
            conn.execute(
                query("jobs.sql", "finish_job"), {"job_id": job_id, "state": state, "error": error}
            )
            removed = self.blobs.remove_unused(conn, job_id) if state != "failed" else 0
        log.info("job finished", job_id=job_id, state=state, files_removed=removed)

    def _note(self, job_id: int, message: str) -> None:
        """Say on the job why it waits (best effort: the database may be what failed)."""
        try:
            with self.services.transaction() as conn:
                conn.execute(query("jobs.sql", "note_retry"), {"job_id": job_id, "error": message})
        except Exception as exc:  # the retry goes on either way
            log.info("job note not written", job_id=job_id, reason=_reason(exc))


def _record(conn: Connection, job_id: int, batch: PendingBatch) -> None:
    results = batch.results
    conn.execute(
        query("jobs.sql", "record_documents"),
        {
            "job_id": job_id,
            "external_ids": [r.external_id for r in results],
            "statuses": [r.status for r in results],
            "chunks": [r.chunks for r in results],
            "hashes": [r.content_hash for r in results],
            "errors": [r.error for r in results],
            "embedded": batch.embedded,
        },
    )


def _transient(exc: BaseException) -> bool:
    """Whether running the job again later may succeed: a dependency that cannot serve right
    now (the database restarting, an embedding provider down, rate limiting or timing out).
    A provider that rejects the request (a bad key, a model it does not have) or answers with
    something unusable (`UpstreamError`) will do so again: the job fails at once."""
    if isinstance(exc, (Unavailable, OperationalError, PoolTimeout)):
        return True
    if isinstance(exc, (psycopg.OperationalError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        return isinstance(translate(exc), Unavailable)
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HybridError):
        return exc.message
    known = translate(exc)
    if known is not None:
        return known.message
    return f"{type(exc).__name__}: {exc}"[:500]
