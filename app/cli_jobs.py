"""`hybrid worker` and `hybrid jobs`: run the background jobs, and watch or steer them.

hybrid worker [--concurrency N]           run jobs until stopped (Ctrl+C / SIGTERM)
hybrid jobs list [--state S] [-c C] [--json]
hybrid jobs show ID [--follow] [--json]   state, progress (a live bar with --follow), failures
hybrid jobs cancel ID
hybrid jobs retry ID
hybrid reembed -c C --model M [--dim N] [--async]
                                          re-embed a collection with another model
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app import collections
from app.api.routes.jobs import job_out
from app.errors import Conflict
from app.ingest.pipeline import Defaults
from app.jobs import records
from app.jobs.blobs import BlobStore
from app.jobs.queue import InProcessWorker, Worker
from app.jobs.submit import cancel, submit, submit_reembed
from app.service import Services
from app.settings import Settings

console = Console()
errors = Console(stderr=True)
# Seconds between two looks at a followed job.
FOLLOW_EVERY_S = 1.0


@contextmanager
def _services() -> Iterator[Services]:
    settings: Settings = click.get_current_context().find_root().obj
    services = Services.open(settings)
    try:
        yield services
    finally:
        services.close()


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    help="Jobs run at once (default HYBRID_WORKER_CONCURRENCY).",
)
def worker_command(concurrency: int | None) -> None:
    """Run background jobs (ingest, delete by filter, re-embed) until stopped; as many
    workers as wanted may run, on any machine that reaches the database and the upload
    folder."""
    with _services() as services:
        services.ingestor.embedder  # noqa: B018 - the model loads before the first job
        console.print(
            f"worker running ({concurrency or services.settings.jobs.concurrency} at once); "
            "Ctrl+C stops it (running jobs go back to the queue)"
        )
        Worker(services, concurrency=concurrency).run()


@click.group("jobs")
def jobs_group() -> None:
    """Background jobs: list, show (and follow), cancel, retry."""


@jobs_group.command("list")
@click.option("--state", type=click.Choice(records.STATES), help="Only jobs in this state.")
@click.option("-c", "--collection", help="Only jobs of this collection.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def jobs_list(state: str | None, collection: str | None, limit: int, as_json: bool) -> None:
    """Jobs, newest first."""
    with _services() as services, services.transaction() as conn:
        found = records.page(conn, state=state, collection=collection, limit=limit)
    if as_json:
        click.echo(describe(found))
        return
    table = Table("id", "kind", "collection", "state", "documents", "chunks", "created")
    for job in found:
        table.add_row(
            str(job.id),
            job.kind,
            job.collection,
            job.state,
            _progress_text(job),
            str(job.chunks),
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
        )
    console.print(table)


@jobs_group.command("show")
@click.argument("job_id", type=click.IntRange(min=1))
@click.option("--follow", is_flag=True, help="Show a progress bar until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def jobs_show(job_id: int, follow: bool, as_json: bool) -> None:
    """A job's state, progress, rate, ETA and failures; exits 1 if it failed."""
    with _services() as services:
        job = _follow(services, job_id) if follow else _get(services, job_id)
    if as_json:
        click.echo(describe(job))
    else:
        _print_job(job)
    if job.state == "failed":
        sys.exit(1)


@jobs_group.command("cancel")
@click.argument("job_id", type=click.IntRange(min=1))
def jobs_cancel(job_id: int) -> None:
    """Cancel a job (a running one stops at its next batch)."""
    with _services() as services:
        job = cancel(services, job_id)
    word = "cancelled" if job.state == "cancelled" else "asked to stop at its next batch"
    console.print(f"job {job_id}: {word}")


@jobs_group.command("retry")
@click.argument("job_id", type=click.IntRange(min=1))
def jobs_retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (it resumes where it stopped)."""
    with _services() as services:
        blobs = BlobStore.of(services.settings)
        services.write(lambda conn: records.retry(conn, blobs, job_id))
    console.print(f"job {job_id}: queued again")


@click.command("reembed")
@click.option("-c", "--collection", required=True, help="The collection to re-embed.")
@click.option(
    "--model",
    required=True,
    help="The model to move to: local/<model or path>[+bf16|+int8] or openai/<model> "
    "(at OPENAI_BASE_URL).",
)
@click.option(
    "--dim",
    "dimension",
    type=click.IntRange(1, 2000),
    help="Its vectors' dimension (default: the collection's current one).",
)
@click.option(
    "--async",
    "run_async",
    is_flag=True,
    help="Queue it for the workers and return; otherwise it also runs here, with a progress bar.",
)
def reembed_command(collection: str, model: str, dimension: int | None, run_async: bool) -> None:
    """Re-embed a collection with another model or dimension, without downtime: searches use
    the current vectors until the new ones are written and indexed, then switch at once. Run
    again after an interruption, it resumes the unfinished job."""
    with _services() as services:
        with services.transaction() as conn:
            found = collections.get(conn, collection)
            running = records.unfinished(conn, found.id, records.REEMBED)
        if running is not None:
            asked = running.params["model"], running.params["dimension"]
            if asked != (model, dimension or asked[1]):
                raise Conflict(
                    f"collection {collection!r} is being re-embedded to {asked[0]} already "
                    f"(job {running.id}); cancel it first: hybrid jobs cancel {running.id}",
                    field="model",
                )
            job = running
            console.print(f"job {job.id}: resuming the re-embedding of {collection!r}")
        else:
            job = submit_reembed(services, collection, model, dimension, key=None)
            console.print(
                f"job {job.id}: re-embedding {collection!r} with {model}", highlight=False
            )
        if run_async:
            console.print(f"  follow it: hybrid jobs show {job.id} --follow", highlight=False)
            return
        # A worker here runs it (unless another worker took it first: this one then follows).
        worker = InProcessWorker(services)
        worker.start()
        try:
            job = _follow(services, job.id)
        finally:
            worker.stop()
        _print_job(job)
        if job.state != "done":
            sys.exit(1)


def enqueue_files(
    services: Services, collection: str, files: list[Path], defaults: Defaults
) -> int:
    """Queue an ingest job for `files` (copied into the upload folder, once per content) into
    `collection`, created first if needed; the job's id."""
    embedder = services.ingestor.embedder
    with services.transaction() as conn:
        found = collections.get_or_create(
            conn, collection, embedding_model=embedder.model_id, embedding_dim=embedder.dimension
        )
    blobs = BlobStore.of(services.settings)
    with ExitStack() as opened:
        sources = ((path.name, opened.enter_context(path.open("rb"))) for path in files)
        staged = blobs.stage_files(sources, services.settings.ingest.max_upload_bytes)
    job = submit(
        services,
        kind=records.INGEST,
        collection_id=found.id,
        params={"metadata": defaults.metadata, "acl": defaults.acl},
        key_id=None,
        requested_by="command line",
        files=staged,
    )
    return job.id


def describe(found: records.Job | list[records.Job]) -> str:
    """The job (or jobs) as JSON, as `GET /v1/jobs/{id}` shows it."""
    shown = [job_out(job) for job in found] if isinstance(found, list) else job_out(found)
    return msgspec.json.format(msgspec.json.encode(shown), indent=2).decode()


def _get(services: Services, job_id: int) -> records.Job:
    with services.transaction() as conn:
        return records.get(conn, job_id)


def _follow(services: Services, job_id: int) -> records.Job:
    """Poll the job with a progress bar until it ends."""
    job = _get(services, job_id)
    columns = (
        TextColumn(f"job {job_id} [progress.description]{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, transient=False) as bar:
        done, total = job.progress
        task = bar.add_task(job.state, total=total, chunks=job.chunks)
        while True:
            done, total = job.progress
            bar.update(task, description=job.state, total=total, completed=done, chunks=job.chunks)
            if job.finished:
                return job
            time.sleep(FOLLOW_EVERY_S)
            job = _get(services, job_id)


def _progress_text(job: records.Job) -> str:
    done, total = job.progress
    return f"{done}/{'?' if total is None else total}"


def _chunks_text(job: records.Job) -> str:
    total, estimated = job.chunks_expected
    if total is None:
        return str(job.chunks)
    return f"{job.chunks}/{'~' if estimated else ''}{total}"


def _print_job(job: records.Job) -> None:
    rate, eta = job.rate(), job.eta_s()
    unit = "chunks" if job.kind == records.REEMBED else "documents"
    console.print(f"job {job.id}: {job.kind} into {job.collection!r}, [bold]{job.state}[/bold]")
    if job.kind == records.REEMBED:
        target = f"{job.params['model']} ({job.params['dimension']} dimensions)"
        console.print(f"  to: {target}", highlight=False, markup=False)
        console.print(f"  chunks: {_progress_text(job)} ({job.embedded} embedded)")
    else:
        console.print(f"  documents: {_progress_text(job)}  " + "  ".join(
            f"{name}={count}" for name, count in job.counts.items() if count
        ))  # fmt: skip
        console.print(f"  chunks: {_chunks_text(job)} ({job.embedded} embedded)")
    console.print(f"  attempts: {job.attempts}")
    if rate is not None:
        console.print(f"  rate: {rate:.1f} {unit}/s" + (f"  eta: {eta:.0f} s" if eta else ""))
    if job.error:
        console.print(f"  error: {job.error}", highlight=False, markup=False)
    for failure in job.failures:
        what = failure["external_id"] or failure["source"]
        console.print(f"  failed {what}: {failure['error']}", highlight=False, markup=False)
