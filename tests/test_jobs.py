"""Background jobs on the PostgreSQL queue: ingest and delete by filter through the API and the
CLI, run by real workers (in process, and `hybrid worker` processes: killed with SIGKILL, or
running two jobs at once), with progress (chunk totals, rate, ETA), idempotency keys, cancel,
retry, transient failures (the embedding provider down, the database restarting) against
failures that end a job at once, and the upload folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import cli
from app.db import embedded
from app.jobs.blobs import BlobStore
from app.jobs.queue import InProcessWorker
from app.jobs.run import Runner
from app.service import Services
from tests.conftest import make_settings, own_services, serving
from tests.openai_server import OpenAIServer
from tests.test_cli import hybrid

COLLECTION = "notes"


def records(n: int, prefix: str = "d", words: int = 40) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i}",
            "title": f"Note {i}",
            "text": " ".join(f"word{(i * 7 + j) % 97} topic{i % 5}" for j in range(words)),
            "metadata": {"group": i % 3},
        }
        for i in range(n)
    ]


def uncached(n: int, tag: str) -> list[dict[str, Any]]:
    """Records whose texts no earlier test embedded (the embedding cache outlives tests)."""
    return [{**r, "text": f"{tag} {r['text']}"} for r in records(n)]


def wait_for(client: httpx.Client, job_id: int, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job}"
        time.sleep(0.2)


def scalar(services: Services, sql: str, **params: Any) -> Any:
    with services.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.fixture
def worker(services: Services) -> Iterator[InProcessWorker]:
    running = InProcessWorker(services)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def api(services: Services) -> Iterator[httpx.Client]:
    with serving(services) as client:
        assert client.post("/v1/collections", json={"name": COLLECTION}).status_code == 201
        yield client


def test_json_ingest_is_queued_and_run_by_a_worker(
    api: httpx.Client, worker: InProcessWorker, services: Services
) -> None:
    sent = api.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": records(20)})
    assert sent.status_code == 202, sent.text
    job = sent.json()
    assert sent.headers["location"] == f"/v1/jobs/{job['id']}" == job["url"]
    assert job["kind"] == "ingest" and job["documents"]["total"] == 20
    done = wait_for(api, job["id"])
    assert done["state"] == "done", done
    assert done["documents"] | {"total": 20} == {
        "total": 20, "done": 20, "created": 20, "updated": 0, "metadata_updated": 0,
        "unchanged": 0, "deleted": 0, "failed": 0,
    }  # fmt: skip
    assert done["chunks"] == scalar(services, "SELECT count(*) FROM chunks") > 0
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
    hits = api.post("/v1/search", json={"collection": COLLECTION, "query": "word3 topic1"})
    assert hits.json()["hits"]
    # The JSON batch's file is not kept once its job is done.
    with services.engine.connect() as conn:
        sha = conn.execute(text("SELECT sha256 FROM job_files")).scalar_one()
    assert not BlobStore.of(services.settings).path(sha).exists()
    listed = api.get("/v1/jobs", params={"state": "done"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_an_ingest_reports_its_chunk_total_rate_and_eta(
    database_url: str, data_dir: Path, services: Services
) -> None:
    """While it runs: a chunk total estimated from the batches written, a rate and an ETA;
    once done: the exact total."""
    with (
        own_services(database_url, data_dir, HYBRID_INGEST_BATCH="4") as slow,
        serving(slow) as client,
    ):
        client.post("/v1/collections", json={"name": COLLECTION})
        body = {"documents": records(32, words=60)}
        job = client.post(f"/v1/collections/{COLLECTION}/documents", json=body).json()
        assert job["chunks_total"] is None and not job["chunks_total_estimated"]
        worker = InProcessWorker(slow)
        worker.start()
        try:
            running = wait_until_done_at_least(client, job["id"], 8)
            done = wait_for(client, job["id"])
        finally:
            worker.stop()
    assert running["state"] == "running" and running["chunks_total_estimated"]
    assert running["chunks"] > 0 and running["chunks_total"] >= running["chunks"]
    assert running["rate"] > 0 and running["eta_s"] is not None
    left = running["documents"]["total"] - running["documents"]["done"]
    assert running["eta_s"] == pytest.approx(left / running["rate"], rel=0.05, abs=0.1)

    chunks = scalar(services, "SELECT count(*) FROM chunks")
    assert done["state"] == "done" and done["chunks"] == done["chunks_total"] == chunks
    assert not done["chunks_total_estimated"] and done["eta_s"] is None
    # The documents are alike: the estimate was close.
    assert running["chunks_total"] == pytest.approx(chunks, rel=0.2)
    seconds = (
        datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    ).total_seconds()
    assert done["rate"] == pytest.approx(32 / seconds, rel=0.05)


def wait_until_done_at_least(client: httpx.Client, job_id: int, documents: int) -> dict[str, Any]:
    """The job as soon as it has written `documents` documents."""
    deadline = time.monotonic() + 120
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["documents"]["done"] >= documents:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_wait_true_writes_during_the_request_within_its_limit(api: httpx.Client) -> None:
    path = f"/v1/collections/{COLLECTION}/documents"
    written = api.post(path, params={"wait": "true"}, json={"documents": records(3)})
    assert written.status_code == 201 and written.json()["created"] == 3
    too_many = api.post(path, params={"wait": "true"}, json={"documents": records(101)})
    assert too_many.status_code == 413 and too_many.json()["field"] == "wait"


def test_an_idempotency_key_makes_a_retry_find_the_first_job(
    api: httpx.Client, services: Services
) -> None:
    path = f"/v1/collections/{COLLECTION}/documents"
    body = {"documents": records(2)}
    key = {"Idempotency-Key": "batch-0001"}
    # Sent at once by several clients: one job.
    with_key = [None] * 6

    def send(i: int) -> None:
        with_key[i] = api.post(path, json=body, headers=key)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status_code for r in with_key} == {202}  # type: ignore[union-attr]
    assert len({r.json()["id"] for r in with_key}) == 1  # type: ignore[union-attr]
    assert scalar(services, "SELECT count(*) FROM jobs") == 1
    assert scalar(services, "SELECT count(*) FROM procrastinate_jobs") == 1
    other = api.post(path, json={"documents": records(3)}, headers=key)
    assert other.status_code == 409 and other.json()["field"] == "Idempotency-Key"
    assert api.post(path, json=body, headers={"Idempotency-Key": ""}).status_code == 400
    assert api.post(path, json=body).json()["id"] != with_key[0].json()["id"]  # type: ignore[union-attr]


def test_uploads_are_kept_once_per_content_and_a_bad_file_fails_alone(
    api: httpx.Client, worker: InProcessWorker, services: Services
) -> None:
    same = b"# Cats\n\nCats purr when they are content.\n"
    files = [
        ("files", ("a.md", same, "text/markdown")),
        ("files", ("b.md", same, "text/markdown")),
        ("files", ("broken.pdf", b"%PDF-1.4 not really", "application/pdf")),
        ("files", ("c.txt", b"Dogs bark at the mail carrier.", "text/plain")),
    ]
    sent = api.post(f"/v1/collections/{COLLECTION}/files", files=files)
    assert sent.status_code == 202, sent.text
    job_id = sent.json()["id"]
    assert scalar(services, "SELECT count(DISTINCT sha256) FROM job_files") == 3
    with services.engine.connect() as conn:
        kept = [BlobStore.of(services.settings).path(sha) for sha in conn.execute(
            text("SELECT DISTINCT sha256 FROM job_files")
        ).scalars()]  # fmt: skip
    done = wait_for(api, job_id)
    assert done["state"] == "done"
    assert done["documents"]["created"] == 3 and done["documents"]["failed"] == 1
    assert [f["source"] for f in done["failures"]] == ["broken.pdf"]
    assert "broken.pdf" in done["failures"][0]["error"]
    assert not any(path.exists() for path in kept)
    refused = api.post(
        f"/v1/collections/{COLLECTION}/files", files=[("files", ("x.exe", b"MZ", "x/y"))]
    )
    assert refused.status_code == 415


def test_cancel_and_retry(api: httpx.Client, services: Services) -> None:
    # No worker yet: the job waits in the queue.
    job = api.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": records(4)}).json()
    cancelled = api.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert scalar(services, "SELECT status::text FROM procrastinate_jobs") == "cancelled"
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 409
    retried = api.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202 and retried.json()["state"] == "queued"
    assert api.post(f"/v1/jobs/{job['id']}/retry").status_code == 409
    assert api.get("/v1/jobs/999999").status_code == 404
    running = InProcessWorker(services)
    running.start()
    try:
        assert wait_for(api, job["id"])["documents"]["created"] == 4
    finally:
        running.stop()


def test_a_running_job_stops_at_its_next_batch_when_cancelled(
    database_url: str, data_dir: Path, services: Services
) -> None:
    with (
        own_services(database_url, data_dir, HYBRID_INGEST_BATCH="4") as slow,
        serving(slow) as client,
    ):
        client.post("/v1/collections", json={"name": COLLECTION})
        job = client.post(
            f"/v1/collections/{COLLECTION}/documents", json={"documents": records(400, words=120)}
        ).json()
        worker = InProcessWorker(slow)
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while client.get(f"/v1/jobs/{job['id']}").json()["documents"]["done"] < 8:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            client.delete(f"/v1/jobs/{job['id']}")
            done = wait_for(client, job["id"])
        finally:
            worker.stop()
    assert done["state"] == "cancelled"
    written = done["documents"]["created"]
    assert 8 <= written < 400
    # Whole documents only: every one written has all its chunks, none is half there.
    assert scalar(services, "SELECT count(*) FROM documents") == written
    assert (
        scalar(
            services,
            "SELECT count(*) FROM documents d WHERE d.chunk_count <> "
            "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id)",
        )
        == 0
    )


def test_delete_by_filter_is_a_job_with_a_dry_run_count(
    api: httpx.Client, worker: InProcessWorker
) -> None:
    path = f"/v1/collections/{COLLECTION}/documents"
    api.post(path, params={"wait": "true"}, json={"documents": records(9)})
    where = json.dumps({"metadata.group": 1})
    counted = api.delete(path, params={"filter": where, "dry_run": "true"})
    assert counted.status_code == 200 and counted.json() == {
        "matched": 3, "deleted": 0, "dry_run": True,
    }  # fmt: skip
    queued = api.delete(path, params={"filter": where})
    assert queued.status_code == 202 and queued.json()["kind"] == "delete"
    done = wait_for(api, queued.json()["id"])
    assert done["state"] == "done" and done["documents"]["deleted"] == 3
    assert done["documents"]["total"] == 3
    assert api.get(path).json()["total"] == 6


def test_a_transient_embedding_failure_is_retried_with_backoff(
    database_url: str, data_dir: Path, server: OpenAIServer, services: Services
) -> None:
    with (
        remote_services(database_url, data_dir, server) as remote,
        serving(remote) as client,
    ):
        client.post("/v1/collections", json={"name": "remote"})
        server.down = 503
        job = client.post("/v1/collections/remote/documents", json={"documents": records(5)}).json()
        worker = InProcessWorker(remote)
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while "retrying" not in (client.get(f"/v1/jobs/{job['id']}").json()["error"] or ""):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waiting = client.get(f"/v1/jobs/{job['id']}").json()
            assert waiting["state"] == "queued" and "HTTP 503" in waiting["error"]
            server.down = None
            done = wait_for(client, job["id"])
        finally:
            worker.stop()
    assert done["state"] == "done" and done["documents"]["created"] == 5
    assert done["attempts"] >= 2 and done["error"] is None


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(401, "rejected the request: HTTP 401: Incorrect API key"), ("wrong_dim", "385-dimensional")],
)
def test_a_provider_refusing_the_request_fails_the_job_at_once(
    database_url: str,
    data_dir: Path,
    server: OpenAIServer,
    services: Services,
    fault: int | str,
    reason: str,
) -> None:
    """A rejected request (a bad key) or an unusable answer is not retried: it would come
    again."""
    with (
        remote_services(database_url, data_dir, server) as remote,
        serving(remote) as client,
    ):
        client.post("/v1/collections", json={"name": "remote"})
        if fault == 401:
            server.down = 401
        else:
            server.fail("wrong_dim")
        body = {"documents": uncached(3, f"refused-{fault}")}
        job = client.post("/v1/collections/remote/documents", json=body)
        worker = InProcessWorker(remote)
        worker.start()
        try:
            done = wait_for(client, job.json()["id"])
        finally:
            worker.stop()
    assert done["state"] == "failed" and done["attempts"] == 1, done
    assert reason in done["error"] and "retrying" not in done["error"]
    assert len(server.embedding_inputs) == 1
    assert done["documents"]["created"] == 0


class RecordedWaits(Runner):
    """A runner that records the waits before its retries instead of sleeping them, and
    brings the provider back after `waits_down` of them."""

    def __init__(self, services: Services, server: OpenAIServer, waits_down: int) -> None:
        super().__init__(services, BlobStore.of(services.settings))
        self.server = server
        self.waits_down = waits_down
        self.waits: list[float] = []

    def _pause(self, seconds: float, should_stop: Callable[[], bool]) -> None:
        self.waits.append(seconds)
        if len(self.waits) == self.waits_down:
            self.server.down = None


def test_the_wait_before_each_retry_doubles(
    database_url: str, data_dir: Path, server: OpenAIServer, services: Services
) -> None:
    with (
        remote_services(database_url, data_dir, server) as remote,
        serving(remote) as client,
    ):
        client.post("/v1/collections", json={"name": "remote"})
        server.down = 503
        body = {"documents": uncached(3, "backoff")}
        job = client.post("/v1/collections/remote/documents", json=body)
        runner = RecordedWaits(remote, server, waits_down=3)
        runner.run(job.json()["id"], lambda: False)
        done = client.get(f"/v1/jobs/{job.json()['id']}").json()
    assert runner.waits == [0.5, 1.0, 2.0]
    assert done["state"] == "done" and done["attempts"] == 4 and done["error"] is None
    assert done["documents"]["created"] == 3


@contextmanager
def remote_services(database_url: str, data_dir: Path, server: OpenAIServer) -> Iterator[Services]:
    """Services embedding with the loopback server, whose client does not retry by itself."""
    with own_services(
        database_url,
        data_dir,
        HYBRID_EMBEDDING_PROVIDER="openai",
        HYBRID_EMBEDDING_MODEL="loopback-embed",
        HYBRID_EMBEDDING_DIM="384",
        OPENAI_BASE_URL=server.base_url,
        OPENAI_API_KEY="unused",
        HYBRID_EMBEDDING_MAX_RETRIES="0",
        HYBRID_JOB_RETRY_WAIT="0.5",
    ) as remote:
        yield remote


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """An embedded server of its own (data directory, URL): the session's is never stopped."""
    path = Path(tempfile.mkdtemp(prefix="hybrid-jobs-"))
    url, _ = embedded.start(path)
    try:
        yield path, url
    finally:
        embedded.stop(path)
        shutil.rmtree(path, ignore_errors=True)


def test_a_database_restart_during_a_job_is_retried(own_server: tuple[Path, str]) -> None:
    """The server stops under a running job and comes back: the job waits, runs again and
    ends with every document stored once."""
    path, url = own_server
    with (
        own_services(url, path, HYBRID_INGEST_BATCH="4", HYBRID_JOB_RETRY_WAIT="1",
                     HYBRID_DB_POOL_TIMEOUT="2") as own,
        serving(own) as client,
    ):  # fmt: skip
        client.post("/v1/collections", json={"name": COLLECTION})
        body = {"documents": records(32, words=120)}
        job = client.post(f"/v1/collections/{COLLECTION}/documents", json=body).json()
        worker = InProcessWorker(own)
        worker.start()
        try:
            wait_until_done_at_least(client, job["id"], 8)
            with structlog.testing.capture_logs() as logged:
                embedded.stop(path)
                # Started again once the job has met the server gone and waits to run again.
                deadline = time.monotonic() + 60
                while not any(e["event"] == "job retried" for e in list(logged)):
                    assert time.monotonic() < deadline, logged
                    time.sleep(0.1)
                embedded.start(path)
            done = wait_for(client, job["id"], timeout_s=180)
        finally:
            worker.stop()
        assert done["state"] == "done", done
        assert done["attempts"] >= 2 and done["error"] is None
        assert done["documents"]["created"] == 32
        assert scalar(own, "SELECT count(*) FROM documents") == 32
        assert (
            scalar(
                own,
                "SELECT count(*) FROM documents d WHERE d.chunk_count <> "
                "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id)",
            )
            == 0
        )


def test_a_killed_worker_loses_nothing(
    database_url: str, data_dir: Path, services: Services, tmp_path: Path
) -> None:
    """SIGKILL a `hybrid worker` mid-job; a second worker takes the stalled job over and it
    ends with every document stored once, none half-written."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in records(240, words=120)))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "HYBRID_INGEST_BATCH": "8",
        "HYBRID_WORKER_HEARTBEAT": "0.5",
        "HYBRID_WORKER_STALLED_AFTER": "2",
        "HYBRID_WORKER_POLL_INTERVAL": "0.5",
        "HYBRID_LOG_FORMAT": "json",
    }
    settings = make_settings(database_url, data_dir)
    result = CliRunner().invoke(
        cli, ["ingest", "--async", "-c", COLLECTION, str(corpus)], obj=settings,
        env={k: v for k, v in env.items() if k.startswith(("HYBRID_", "DATABASE_URL"))},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job_id = int(re.search(r"job (\d+) queued", result.output).group(1))  # type: ignore[union-attr]

    def done_count() -> int:
        return int(scalar(services, "SELECT created FROM jobs WHERE id = :id", id=job_id))

    command = [str(Path(sys.executable).with_name("hybrid")), "worker"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while done_count() < 16:
            assert first.poll() is None, first.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    before = done_count()
    assert before < 240
    second = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while scalar(services, "SELECT state FROM jobs WHERE id = :id", id=job_id) != "done":
            assert second.poll() is None, second.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert done_count() == 240
    assert scalar(services, "SELECT attempts FROM jobs WHERE id = :id", id=job_id) == 2
    assert scalar(services, "SELECT count(*) FROM documents") == 240
    assert scalar(services, "SELECT count(DISTINCT external_id) FROM documents") == 240
    assert scalar(services, "SELECT count(*) FROM collections") == 1
    assert (
        scalar(
            services,
            "SELECT count(*) FROM documents d WHERE d.chunk_count = 0 OR d.chunk_count <> "
            "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id)",
        )
        == 0
    )
    assert (
        scalar(services, "SELECT count(*) FROM job_documents WHERE job_id = :id", id=job_id) == 240
    )


def test_a_worker_with_concurrency_2_runs_two_jobs_at_once(
    database_url: str, data_dir: Path, services: Services, api: httpx.Client
) -> None:
    """Two jobs queued before `hybrid worker --concurrency 2` starts: each run began before
    the other ended (one at a time, the second would start after the first finished)."""
    api.post("/v1/collections", json={"name": "other"})
    jobs = [
        api.post(f"/v1/collections/{name}/documents", json={"documents": records(24)}).json()
        for name in (COLLECTION, "other")
    ]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "HYBRID_INGEST_BATCH": "4",
    }
    command = [str(Path(sys.executable).with_name("hybrid")), "worker", "--concurrency", "2"]
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        done = [wait_for(api, job["id"], timeout_s=180) for job in jobs]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert [job["state"] for job in done] == ["done", "done"], done
    assert all(job["attempts"] == 1 for job in done)
    first, second = (
        (datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"]))
        for job in done
    )
    assert first[0] < second[1] and second[0] < first[1], done


def test_cli_jobs_commands(
    services: Services, database_url: str, data_dir: Path, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": database_url, "HYBRID_DATA_DIR": str(data_dir)}
    note = tmp_path / "note.md"
    note.write_text("# Owls\n\nOwls hunt at night.\n")
    queued = hybrid(env, "ingest", "--async", "-c", COLLECTION, str(note))
    assert queued.code == 0, queued.err
    job_id = re.search(r"job (\d+) queued", queued.out).group(1)  # type: ignore[union-attr]
    listed = hybrid(env, "jobs", "list", "--json")
    assert [j["id"] for j in json.loads(listed.out)] == [int(job_id)]
    assert "cancelled" in hybrid(env, "jobs", "cancel", job_id).out
    assert hybrid(env, "jobs", "cancel", job_id).failed_with("already cancelled")
    assert hybrid(env, "jobs", "retry", job_id).code == 0
    worker = InProcessWorker(services)
    worker.start()
    try:
        shown = hybrid(env, "jobs", "show", job_id, "--follow", "--json")
    finally:
        worker.stop()
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["documents"]["created"] == 1
    assert "1/1" in hybrid(env, "jobs", "show", job_id).text


@pytest.mark.parametrize(
    ("method", "path", "headers", "field"),
    [
        ("GET", "/v1/jobs?collection=a%00b", {}, "collection"),
        ("GET", "/v1/jobs?state=sleeping", {}, "state"),
        ("GET", "/v1/jobs?limit=0", {}, "limit"),
        ("GET", "/v1/jobs?offset=-1", {}, "offset"),
        ("GET", "/v1/jobs/0", {}, "job_id"),
        ("GET", "/v1/jobs/99999999999999999999", {}, None),
        ("DELETE", "/v1/jobs/abc", {}, None),
        ("POST", f"/v1/collections/{COLLECTION}/documents", {"Idempotency-Key": "x" * 256},
         "Idempotency-Key"),
        ("POST", f"/v1/collections/{COLLECTION}/documents", {"Idempotency-Key": "a\tb"},
         "Idempotency-Key"),
        ("POST", f"/v1/collections/{COLLECTION}/documents?wait=maybe", {}, "wait"),
        ("POST", f"/v1/collections/{COLLECTION}/documents", {"content-type": "text/plain"},
         "content-type"),
    ],
)  # fmt: skip
def test_bad_input_to_the_job_routes_is_a_4xx_naming_the_field(
    api: httpx.Client, services: Services, method: str, path: str, headers: dict[str, str],
    field: str | None,
) -> None:  # fmt: skip
    body = json.dumps({"documents": records(1)})
    sent = api.request(method, path, content=body, headers={"content-type": "application/json",
                                                            **headers})  # fmt: skip
    assert 400 <= sent.status_code < 500, sent.text
    if field is not None:
        assert sent.json()["field"] == field, sent.text
    assert scalar(services, "SELECT count(*) FROM jobs") == 0


def test_concurrent_cancels_and_retries_of_one_job(api: httpx.Client, services: Services) -> None:
    job = api.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": records(2)})
    path = f"/v1/jobs/{job.json()['id']}"
    with ThreadPoolExecutor(6) as pool:
        cancels = list(pool.map(lambda _: api.delete(path).status_code, range(6)))
    assert set(cancels) <= {200, 409} and 200 in cancels
    with ThreadPoolExecutor(6) as pool:
        retries = list(pool.map(lambda _: api.post(f"{path}/retry").status_code, range(6)))
    assert sorted(retries) == [202] + [409] * 5
    assert scalar(services, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'") == 1
    assert api.get(path).json()["state"] == "queued"


def test_a_stopping_worker_puts_its_running_job_back_in_the_queue(
    database_url: str, data_dir: Path, services: Services
) -> None:
    with (
        own_services(database_url, data_dir, HYBRID_INGEST_BATCH="4") as slow,
        serving(slow) as client,
    ):
        client.post("/v1/collections", json={"name": COLLECTION})
        body = {"documents": records(200, words=120)}
        job = client.post(f"/v1/collections/{COLLECTION}/documents", json=body).json()
        worker = InProcessWorker(slow)
        worker.start()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}").json()["documents"]["done"] < 8:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        worker.stop()
        stopped = client.get(f"/v1/jobs/{job['id']}").json()
        assert stopped["state"] == "queued" and "worker stopped" in stopped["error"]
        assert scalar(services, "SELECT status::text FROM procrastinate_jobs") == "todo"
        again = InProcessWorker(slow)
        again.start()
        try:
            done = wait_for(client, job["id"])
        finally:
            again.stop()
    assert done["state"] == "done" and done["documents"]["created"] == 200
    assert done["attempts"] == 2
    assert scalar(services, "SELECT count(*) FROM documents") == 200
