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
from app.errors import ConfigError, HybridError, Invalid
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
    asked = reembed.Target(model, dimension or collection.embedding_dim).check()
    try:
        embedder = services.embedders.get(asked.model, asked.dimension)
    except ConfigError as exc:
        raise Invalid(f"model: {exc.message}", field="model") from exc
    # As the embedder names itself, so that another spelling of the same model is the same.
    target = reembed.Target(embedder.model_id, asked.dimension)
    reembed.refuse_current(collection, target)
    params = {"model": target.model, "dimension": target.dimension}
    _probe(services, target)
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


def cancel(services: Services, job_id: int, key_id: int | None = None) -> records.Job:
    """Cancel a job (see `records.cancel`). A queued re-embedding that had begun is abandoned
    here (a running one abandons itself at its next batch)."""
    job = services.write(lambda conn: records.cancel(conn, job_id, key_id))
    if job.kind == records.REEMBED and job.state == "cancelled":
        with services.transaction() as conn:
            collection = collections.get(conn, job.collection)
        reembed.abandon(services.engine, collection.id)
    return job


def _probe(services: Services, target: reembed.Target) -> None:
    """Embed one text with the target model: a wrong model name, a dimension it does not give,
    or an unreachable provider is said now, not after the job has started."""
    try:
        services.embedders.get(target.model, target.dimension).embed(["dimension check"])
    except HybridError as exc:
        raise Invalid(
            f"model: {target.model} cannot embed here: {exc.message}", field="model"
        ) from exc
