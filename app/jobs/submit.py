"""Queueing a job, from a request or the command line: its files kept, its row and its queue
entry made in one transaction (retried after a deadlock), or the job an earlier try with the
same idempotency key made. The staged files are discarded when nothing is queued. A
re-embedding is checked before it is queued (the model, its dimension, one at a time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from app import collections
from app.access import audit
from app.access.caller import Caller
from app.errors import ConfigError, Invalid
from app.ingest import reembed
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


def submit_reembed(
    services: Services,
    collection_name: str,
    model: str,
    dimension: int | None,
    *,
    key: Caller | None,
    idempotency_key: str | None = None,
) -> records.Job:
    """Queue the re-embedding of a collection with `model` (vectors of `dimension`, default
    the collection's), after checking that the model can be made here and is not the one the
    collection has. `key`: who asks (None: the command line)."""
    with services.transaction() as conn:
        collection = collections.get(conn, collection_name)
    target = reembed.Target(model, dimension or collection.embedding_dim).check()
    reembed.refuse_current(collection, target)
    try:
        services.embedders.get(target.model, target.dimension)
    except ConfigError as exc:
        raise Invalid(f"model: {exc.message}", field="model") from exc
    params = {"model": target.model, "dimension": target.dimension}
    blobs = BlobStore.of(services.settings)

    def work(conn: Connection) -> records.Job:
        job_id, new = records.create(
            conn,
            blobs,
            kind=records.REEMBED,
            collection_id=collection.id,
            params=params,
            key_id=key.key_id if key else None,
            requested_by=key.describe() if key else "command line",
            idempotency_key=idempotency_key,
        )
        if new:
            detail = {**params, "job": job_id}
            audit.record(conn, audit.COLLECTION_REEMBED, key, collection.name, detail)
        return records.get(conn, job_id)

    return services.write(work)
