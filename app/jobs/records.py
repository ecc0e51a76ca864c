"""The `jobs` table: creating a job with its queue entry, reading its progress, cancelling and
retrying it. Every function works in the caller's transaction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, RowMapping

from app.db.queries import query
from app.errors import Conflict, NotFound
from app.jobs.blobs import BlobStore, Staged

INGEST = "ingest"
DELETE = "delete"
REEMBED = "reembed"
# The queue's task of each kind of job (app/jobs/queue.py registers them).
TASKS = {INGEST: "hybrid.ingest", DELETE: "hybrid.delete", REEMBED: "hybrid.reembed"}
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
OUTCOMES = ("created", "updated", "metadata_updated", "unchanged", "deleted", "failed")
# Failures listed with a job (the counters count them all).
FAILURES_SHOWN = 100


@dataclass
class Job:
    id: int
    kind: str
    collection: str
    state: str
    params: dict[str, Any]
    documents_total: int | None
    counts: dict[str, int]
    chunks: int
    embedded: int
    attempts: int
    cancel_requested: bool
    error: str | None
    requested_by: str
    key_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    done_before: int
    chunks_total: int | None = None
    failures: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def documents_done(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def chunks_expected(self) -> tuple[int | None, bool]:
        """The chunks the job writes in all (unknown: None), and whether that is an estimate.

        A re-embedding counts the collection's chunks before it starts. An ingest chunks each
        batch just before embedding it, so its total is exact once it is done; until then it is
        estimated from the chunks per document of the batches written so far (unchanged and
        failed documents count, with no chunks). A delete writes no chunks."""
        if self.kind == REEMBED:
            return self.chunks_total, False
        if self.kind != INGEST:
            return None, False
        if self.state == "done":
            return self.chunks, False
        done, total = self.documents_done, self.documents_total
        if not done or total is None:
            return None, False
        return round(self.chunks * max(total, done) / done), True

    @property
    def progress(self) -> tuple[int, int | None]:
        """Work done and its total (unknown: None): documents, or for a re-embedding the
        collection's chunks."""
        if self.kind == REEMBED:
            return self.chunks, self.chunks_total
        return self.documents_done, self.documents_total

    def rate(self, now: datetime | None = None) -> float | None:
        """Documents (a re-embedding: chunks) a second in the current (or last) run. An
        ingest's chunk total is estimated from its documents until it is done, so counting
        chunks would give the same ETA."""
        if self.started_at is None:
            return None
        end = self.finished_at or now or datetime.now(UTC)
        seconds = (end - self.started_at).total_seconds()
        done = self.progress[0] - self.done_before
        return done / seconds if seconds > 0 and done > 0 else None

    def eta_s(self, now: datetime | None = None) -> float | None:
        """Seconds left at the current rate (running jobs whose total is known)."""
        rate = self.rate(now)
        done, total = self.progress
        if self.state != "running" or rate is None or total is None:
            return None
        return max(total - done, 0) / rate


def request_hash(kind: str, collection_id: int, params: dict[str, Any], shas: list[str]) -> bytes:
    """What a request asked, for telling a client's retry from another request that reuses its
    idempotency key."""
    payload = json.dumps([kind, collection_id, params, shas], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).digest()


def create(
    conn: Connection,
    blobs: BlobStore,
    *,
    kind: str,
    collection_id: int,
    params: dict[str, Any],
    key_id: int | None,
    requested_by: str,
    files: list[Staged] | None = None,
    idempotency_key: str | None = None,
    documents_total: int | None = None,
) -> tuple[int, bool]:
    """A queued job (its files kept, its queue entry made), or the job an earlier request with
    the same `idempotency_key` made: (id, whether it is new). A reused key with a different
    request is a conflict."""
    files = files or []
    fingerprint = request_hash(kind, collection_id, params, [f.sha256 for f in files])
    row = conn.execute(
        query("jobs.sql", "create_job"),
        {
            "kind": kind,
            "collection_id": collection_id,
            "params": json.dumps(params),
            "key_id": key_id,
            "requested_by": requested_by,
            "idempotency_key": idempotency_key,
            "request_hash": fingerprint,
            "documents_total": documents_total,
        },
    ).first()
    if row is None:
        blobs.discard(files)
        return _idempotent(conn, key_id, idempotency_key, fingerprint), False
    job_id = int(row.id)
    for position, staged in enumerate(files):
        blobs.keep(conn, staged)
        conn.execute(
            query("jobs.sql", "add_file"),
            {
                "job_id": job_id,
                "position": position,
                "sha256": staged.sha256,
                "name": staged.name,
                "size": staged.size,
            },
        )
    enqueue(conn, job_id, kind)
    return job_id, True


def enqueue(conn: Connection, job_id: int, kind: str) -> None:
    conn.execute(query("jobs.sql", "enqueue"), {"job_id": job_id, "task": TASKS[kind]})


def get(conn: Connection, job_id: int, key_id: int | None = None) -> Job:
    """The job (with its first failures); `key_id` set: only a job that key asked for."""
    row = conn.execute(
        query("jobs.sql", "get_job"), {"job_id": job_id, "key_id": key_id}
    ).mappings().first()  # fmt: skip
    if row is None:
        raise NotFound(f"job {job_id} not found", field="job_id")
    job = _job(row)
    failures = conn.execute(
        query("jobs.sql", "job_failures"), {"job_id": job_id, "limit": FAILURES_SHOWN}
    ).mappings()
    job.failures = [dict(f) for f in failures]
    return job


def page(
    conn: Connection,
    *,
    key_id: int | None = None,
    state: str | None = None,
    collection: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Job]:
    rows = conn.execute(
        query("jobs.sql", "list_jobs"),
        {
            "key_id": key_id,
            "state": state,
            "collection": collection,
            "limit": limit,
            "offset": offset,
        },
    ).mappings()
    return [_job(row) for row in rows]


def outcomes(conn: Connection, job_id: int, limit: int = 1000) -> list[dict[str, Any]]:
    """The outcome of each document (or unreadable file) the job took: created, updated,
    metadata_updated, unchanged or failed (with the reason)."""
    rows = conn.execute(
        query("jobs.sql", "job_outcomes"), {"job_id": job_id, "limit": limit}
    ).mappings()
    return [dict(row) for row in rows]


def unfinished(conn: Connection, collection_id: int, kind: str) -> Job | None:
    """The collection's queued or running job of `kind`, if any."""
    found = conn.execute(
        query("jobs.sql", "unfinished_job"), {"collection_id": collection_id, "kind": kind}
    ).scalar()
    return None if found is None else get(conn, int(found))


def cancel(conn: Connection, job_id: int, key_id: int | None = None) -> Job:
    """Cancel a queued job at once, or ask a running one to stop at its next batch (what it
    wrote stays, whole documents only). A finished job is a conflict."""
    job = get(conn, job_id, key_id)
    if job.finished:
        raise Conflict(f"job {job_id} is already {job.state}", field="job_id")
    conn.execute(query("jobs.sql", "cancel_job"), {"job_id": job_id, "key_id": key_id})
    return get(conn, job_id, key_id)


def retry(conn: Connection, blobs: BlobStore, job_id: int, key_id: int | None = None) -> Job:
    """Queue a failed or cancelled job again: it resumes where it stopped."""
    job = get(conn, job_id, key_id)
    row = conn.execute(
        query("jobs.sql", "requeue_job"), {"job_id": job_id, "key_id": key_id}
    ).first()
    if row is None:
        raise Conflict(
            f"job {job_id} is {job.state}: only failed or cancelled jobs can be retried",
            field="job_id",
        )
    if job.kind == INGEST and job.state == "cancelled":
        _check_files(conn, blobs, job_id)
    enqueue(conn, job_id, job.kind)
    return get(conn, job_id, key_id)


def _check_files(conn: Connection, blobs: BlobStore, job_id: int) -> None:
    """A cancelled job's files may be gone: it cannot run again without them."""
    for row in conn.execute(query("jobs.sql", "job_files"), {"job_id": job_id}):
        if not blobs.path(row.sha256).exists():
            raise Conflict(
                f"job {job_id}: its file {row.name!r} is no longer kept; upload it again",
                field="job_id",
            )


def _idempotent(
    conn: Connection, key_id: int | None, idempotency_key: str | None, fingerprint: bytes
) -> int:
    row = conn.execute(
        query("jobs.sql", "idempotent_job"),
        {"key_id": key_id, "idempotency_key": idempotency_key},
    ).one()
    if bytes(row.request_hash) != fingerprint:
        raise Conflict(
            "Idempotency-Key: already used for a different request (a retry must repeat the "
            "request exactly)",
            field="Idempotency-Key",
        )
    return int(row.id)


def _job(row: RowMapping) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        collection=row["collection"],
        state=row["state"],
        params=row["params"],
        documents_total=row["documents_total"],
        counts={outcome: row[outcome] for outcome in OUTCOMES},
        chunks=row["chunks"],
        embedded=row["embedded"],
        attempts=row["attempts"],
        cancel_requested=row["cancel_requested"],
        error=row["error"],
        requested_by=row["requested_by"],
        key_id=row["key_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        done_before=row["done_before"],
        chunks_total=row["chunks_total"],
    )
