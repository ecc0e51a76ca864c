"""Queueing a job, from a request or the command line: its files kept, its row and its queue
entry made in one transaction (retried after a deadlock), or the job an earlier try with the
same idempotency key made. The staged files are discarded when nothing is queued."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from app.jobs import records
from app.jobs.blobs import BlobStore, Staged
from app.service import Services


def submit(
    services: Services,
    *,
    kind: str,
    collection_id: int,
    params: dict[str, Any],
    key_id: int | None,
    requested_by: str,
    files: Sequence[Staged] = (),
    idempotency_key: str | None = None,
    documents_total: int | None = None,
) -> records.Job:
    blobs = BlobStore.of(services.settings)

    def work(conn: Connection) -> records.Job:
        job_id, _ = records.create(
            conn,
            blobs,
            kind=kind,
            collection_id=collection_id,
            params=params,
            key_id=key_id,
            requested_by=requested_by,
            files=list(files),
            idempotency_key=idempotency_key,
            documents_total=documents_total,
        )
        return records.get(conn, job_id)

    try:
        return services.write(work)
    except BaseException:
        blobs.discard(list(files))
        raise
