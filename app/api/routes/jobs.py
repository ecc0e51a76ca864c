"""Background jobs: list, show, cancel, retry (`/v1/jobs`), and how ingest routes queue them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from app.access.caller import ADMIN, INGEST, Caller
from app.api.schemas import JobDocuments, JobFailure, JobOut, JobPage
from app.errors import Invalid
from app.jobs import records
from app.jobs import submit as jobs_submit
from app.jobs.blobs import BlobStore, Staged
from app.service import Services

MAX_PAGE = 200
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255

JobId = Annotated[int, Parameter(ge=1, le=2**63 - 1, description="The job's id")]


class JobController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]
    opt = {"scope": INGEST}

    @get(sync_to_thread=True)
    def list_jobs(
        self,
        services: Services,
        caller: Caller,
        state_: Annotated[
            Literal["queued", "running", "done", "failed", "cancelled"] | None,
            Parameter(query="state", description="Only jobs in this state"),
        ] = None,
        collection: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=2**31 - 1)] = 0,
    ) -> JobPage:
        """Jobs, newest first (a key sees the jobs it asked for; an admin key sees all)."""
        with services.transaction() as conn:
            found = records.page(
                conn,
                key_id=owner(caller),
                state=state_,
                collection=collection,
                limit=limit,
                offset=offset,
            )
        return JobPage(jobs=[job_out(job) for job in found], limit=limit, offset=offset)

    @get("/{job_id:int}", sync_to_thread=True)
    def get_job(self, job_id: JobId, services: Services, caller: Caller) -> JobOut:
        """A job: its state, documents done of total, rate and ETA, and its failures."""
        with services.transaction() as conn:
            return job_out(records.get(conn, job_id, owner(caller)))

    @delete("/{job_id:int}", sync_to_thread=True, status_code=200)
    def cancel_job(self, job_id: JobId, services: Services, caller: Caller) -> JobOut:
        """Cancel a job: a queued one at once, a running one at its next batch (what it has
        written stays, whole documents only). A finished job is 409."""
        return job_out(jobs_submit.cancel(services, job_id, owner(caller)))

    @post("/{job_id:int}/retry", sync_to_thread=True, status_code=202)
    def retry_job(self, job_id: JobId, services: Services, caller: Caller) -> Response[JobOut]:
        """Queue a failed or cancelled job again: it resumes where it stopped."""
        blobs = BlobStore.of(services.settings)
        job = services.write(lambda conn: records.retry(conn, blobs, job_id, owner(caller)))
        return accepted(job)


def owner(caller: Caller) -> int | None:
    """Whose jobs the caller sees: every job for an admin, else its key's."""
    return None if ADMIN in caller.scopes else caller.key_id


def idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get(IDEMPOTENCY_HEADER.lower())
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise Invalid(
            f"{IDEMPOTENCY_HEADER}: expected 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
            field=IDEMPOTENCY_HEADER,
        )
    return value


def submit(
    services: Services,
    caller: Caller,
    key: str | None,
    *,
    kind: str,
    collection_id: int,
    params: dict[str, Any],
    files: Sequence[Staged] = (),
    documents_total: int | None = None,
) -> Response[JobOut]:
    """Queue a job for the caller (or find the one an earlier try of the same request with
    the same idempotency `key` queued): 202 with the job and its Location."""
    job = jobs_submit.submit(
        services,
        kind=kind,
        collection_id=collection_id,
        params=params,
        key_id=caller.key_id,
        requested_by=caller.describe(),
        files=files,
        idempotency_key=key,
        documents_total=documents_total,
    )
    return accepted(job)


def accepted(job: records.Job) -> Response[JobOut]:
    out = job_out(job)
    return Response(out, status_code=202, headers={"Location": out.url})


def job_out(job: records.Job) -> JobOut:
    counts = job.counts
    chunks_total, estimated = job.chunks_expected
    return JobOut(
        id=job.id,
        kind=job.kind,  # type: ignore[arg-type]
        collection=job.collection,
        state=job.state,  # type: ignore[arg-type]
        params=job.params,
        documents=JobDocuments(total=job.documents_total, done=job.documents_done, **counts),
        chunks=job.chunks,
        chunks_total=chunks_total,
        chunks_total_estimated=estimated,
        embedded=job.embedded,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        error=job.error,
        requested_by=job.requested_by,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
        rate=_rounded(job.rate()),
        eta_s=_rounded(job.eta_s()),
        failures=[
            JobFailure(id=f["external_id"], source=f["source"], error=f["error"])
            for f in job.failures
        ],
        url=f"/v1/jobs/{job.id}",
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
