"""The queue and its workers: procrastinate on the service's PostgreSQL.

procrastinate hands each queued job to one worker (`SELECT ... FOR UPDATE SKIP LOCKED`, woken by
LISTEN/NOTIFY, polling as a fallback), keeps a heartbeat per worker, and puts a job whose
worker stopped back in the queue. A worker runs `HYBRID_WORKER_CONCURRENCY` jobs at once, each
in a thread of its own (`app.jobs.run`), with the process's embedding model.

Besides the jobs, every worker looks after the queue (`_housekeeping`): jobs whose worker has
sent no heartbeat for `HYBRID_WORKER_STALLED_AFTER` (killed, its machine lost) are queued
again and resume where their writes stopped; finished jobs older than the retention are
deleted, and the files no job needs any more are removed.

`hybrid worker` runs one in the foreground; `hybrid serve` runs one in a thread of its own
(`InProcessWorker`) unless `HYBRID_SERVE_WORKER=off`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import structlog
from procrastinate import App, JobContext, PsycopgConnector, RetryStrategy
from procrastinate.exceptions import JobAborted

from app.db.engine import conninfo
from app.db.queries import query
from app.jobs import records
from app.jobs.blobs import BlobStore
from app.jobs.run import Interrupted, Runner
from app.service import Services

log = structlog.get_logger(__name__)

QUEUE = "jobs"
# Staged or kept files younger than this may belong to a transaction still running.
SWEEP_AFTER_S = 3600.0
# Seconds between two tidy-ups (old jobs deleted, unneeded files removed) by a worker.
TIDY_EVERY_S = 60.0


def create_queue(services: Services, concurrency: int) -> App:
    """The procrastinate app over the service's database, with a task per kind of job."""
    connector = PsycopgConnector(
        conninfo=conninfo(services.engine.url),
        min_size=1,
        # The jobs' own work uses the service's engine; the queue needs a connection for its
        # notifications, one for fetching and heartbeats, and one per finishing job.
        max_size=concurrency + 3,
        kwargs={"application_name": "hybrid-worker"},
    )
    queue = App(connector=connector)
    runner = Runner(services, BlobStore.of(services.settings))
    # A job stopped by its worker's shutdown goes back to the queue at once, every time; any
    # other failure has been dealt with by the runner (retries, then a failed job).
    retry = RetryStrategy(retry_exceptions=[JobAborted])

    def run(context: JobContext, job_id: int) -> None:
        try:
            runner.run(job_id, context.should_abort)
        except Interrupted:
            raise JobAborted from None

    for task in records.TASKS.values():
        queue.task(name=task, queue=QUEUE, pass_context=True, retry=retry)(run)
    return queue


class Worker:
    """One worker: `run()` until `stop()` (or a signal, in the foreground)."""

    def __init__(self, services: Services, *, concurrency: int | None = None) -> None:
        self.services = services
        self.settings = services.settings.jobs
        self.concurrency = concurrency or self.settings.concurrency
        self.queue = create_queue(services, self.concurrency)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[Any] | None = None
        self.started = threading.Event()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        asyncio.run(self._run(install_signal_handlers))

    async def _run(self, install_signal_handlers: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        async with self.queue.open_async():
            housekeeping = asyncio.create_task(self._housekeeping())
            self.started.set()
            log.info("worker started", concurrency=self.concurrency)
            try:
                await self.queue.run_worker_async(
                    queues=[QUEUE],
                    concurrency=self.concurrency,
                    name="hybrid-worker",
                    fetch_job_polling_interval=self.settings.poll_s,
                    abort_job_polling_interval=self.settings.poll_s,
                    # Running jobs are told to stop at once; each stops at its next batch and
                    # goes back to the queue.
                    shutdown_graceful_timeout=0,
                    update_heartbeat_interval=self.settings.heartbeat_s,
                    stalled_worker_timeout=self.settings.stalled_after_s,
                    install_signal_handlers=install_signal_handlers,
                    delete_jobs="successful",
                )
            except asyncio.CancelledError:
                pass
            finally:
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
        log.info("worker stopped")

    def stop(self) -> None:
        """Stop taking jobs; running ones stop at their next batch and are queued again."""
        if self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)

    async def _housekeeping(self) -> None:
        manager = self.queue.job_manager
        every = max(self.settings.heartbeat_s, 0.5)
        tidied = float("-inf")
        while True:
            try:
                stalled = await manager.get_stalled_jobs(
                    queue=QUEUE, seconds_since_heartbeat=self.settings.stalled_after_s
                )
                for job in stalled:
                    log.warning("stalled job queued again", queue_job_id=job.id)
                    await manager.retry_job(job)
                if time.monotonic() - tidied >= TIDY_EVERY_S:
                    await asyncio.to_thread(self._tidy)
                    tidied = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again
                log.warning("queue housekeeping failed", reason=str(exc))
            await asyncio.sleep(every)

    def _tidy(self) -> None:
        """Delete finished jobs past the retention and files no job needs."""
        blobs = BlobStore.of(self.services.settings)
        with self.services.transaction() as conn:
            conn.execute(query("jobs.sql", "prune_jobs"), {"days": self.settings.retention_days})
            blobs.sweep(conn, SWEEP_AFTER_S)


class InProcessWorker:
    """A worker in a thread of the serving process (`hybrid serve`)."""

    def __init__(self, services: Services) -> None:
        self.worker = Worker(services)
        self._thread = threading.Thread(target=self._run, name="hybrid-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(install_signal_handlers=False)
        except Exception:  # logged; the server keeps serving
            log.exception("in-process worker stopped")

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        self.worker.started.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.worker.stop()
        self._thread.join(timeout_s)
