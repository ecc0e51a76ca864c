"""The embedded server: started once, reused, stopped cleanly, started again in the same
process, stopped with `hybrid serve` (whose in-process worker runs jobs unless told not to);
its database's locale (C.UTF-8, lower-casing and comparing inside PostgreSQL) gives
the tokens and the order of the C library's C.UTF-8 on mixed-script text."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.db import embedded
from tests.conftest import scratch_database
from tests.test_cli import HYBRID, free_port, installed

# Accents, German, Turkish dotted I, Greek final sigma, Cyrillic, CJK, ligatures, emoji,
# numbers, hyphenated words, e-mail, URL and path tokens.
MIXED_TEXT = (
    "Café naïve résumé Straße ÄÖÜ İstanbul ıI ǅemal ΣΊΣΥΦΟΣ σίσυφος Москва ПРИВЕТ "
    "日本語のテキスト 中文 emoji 😀 ﬁnance Ⅻ ÅNGSTRÖM µ-meter ẞ 1,000.5 -3e10 v1.2.3 "
    "self-driving co-operation foo@example.com https://example.com/a/b?c=1 /usr/bin"
)


@pytest.fixture
def libc_url(database_url: str) -> Iterator[str]:
    """A database on the same server with the C library's C.UTF-8 locale."""
    options = "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER libc LOCALE 'C.UTF-8'"
    with scratch_database(database_url, "locale_libc", options) as url:
        yield url


def test_the_database_pins_its_locale(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT datlocprovider, datlocale, datcollate, datctype "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert row == ("b", "C.UTF-8", "C.UTF-8", "C.UTF-8")


def test_builtin_and_libc_locales_agree_on_text(database_url: str, libc_url: str) -> None:
    words = MIXED_TEXT.split()
    statement = """
        SELECT to_tsvector('english', %(text)s)::text, to_tsvector('simple', %(text)s)::text,
               lower(%(text)s), upper(%(text)s),
               (SELECT array_agg(w ORDER BY w) FROM unnest(CAST(%(words)s AS text[])) AS w)
    """
    results = []
    for url in (database_url, libc_url):
        with psycopg.connect(url) as conn:
            results.append(conn.execute(statement, {"text": MIXED_TEXT, "words": words}).fetchone())
    assert results[0] == results[1]
    assert "'straße':" in results[0][0] and "'москва':" in results[0][1]


@pytest.fixture
def fresh_dir() -> Iterator[Path]:
    """A data directory of its own: the session's server is never stopped."""
    path = Path(tempfile.mkdtemp(prefix="hybrid-embedded-"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def test_start_reuses_the_data_directory_and_stop_is_clean(fresh_dir: Path) -> None:
    url, started = embedded.start(fresh_dir)
    assert started
    assert embedded.start(fresh_dir) == (url, False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    assert embedded.stop(fresh_dir)
    assert not embedded.status(fresh_dir).running
    assert not embedded.stop(fresh_dir)

    url, started = embedded.start(fresh_dir)
    assert started
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]


def test_start_after_another_process_stopped_the_server(fresh_dir: Path) -> None:
    embedded.start(fresh_dir)
    stop = installed({"HYBRID_DATA_DIR": str(fresh_dir)}, "db", "stop")
    assert stop.returncode == 0, stop.stderr
    assert not embedded.status(fresh_dir).running

    url, started = embedded.start(fresh_dir)
    assert started
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("args", "environ"),
    [([], {}), (["--no-worker"], {}), ([], {"HYBRID_SERVE_WORKER": "off"})],
    ids=["worker", "no-worker", "worker-off"],
)
def test_serve_runs_jobs_unless_told_not_to_and_stops_its_server_on_sigterm(
    fresh_dir: Path, args: list[str], environ: dict[str, str]
) -> None:
    """A worker runs in the server by default: a queued ingest finishes. Told not to, the job
    waits in the queue for a `hybrid worker`. As a process manager stops it: the embedded
    server does not outlive the service."""
    port = free_port()
    env = {
        "PATH": str(HYBRID.parent), "HYBRID_DATA_DIR": str(fresh_dir), "HYBRID_PORT": str(port),
        "HYBRID_AUTH": "off", **environ,
    }  # fmt: skip
    log = fresh_dir / "serve.log"
    with log.open("w") as output:
        service = subprocess.Popen(
            [str(HYBRID), "serve", *args], env=env, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert service.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the service did not come up"
                time.sleep(0.5)
        assert embedded.status(fresh_dir).running
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            job = queue_an_ingest(client)
            if args or environ:
                waited_in_queue(client, job, embedded.status(fresh_dir).url or "")
            else:
                assert finished(client, job)["documents"]["created"] == 2
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        service.kill()
        service.wait()
    assert not embedded.status(fresh_dir).running


def queue_an_ingest(client: httpx.Client) -> int:
    assert client.post("/v1/collections", json={"name": "notes"}).status_code == 201
    documents = [{"id": f"n{i}", "text": f"Owls hunt at night, note {i}."} for i in range(2)]
    queued = client.post("/v1/collections/notes/documents", json={"documents": documents})
    assert queued.status_code == 202, queued.text
    return int(queued.json()["id"])


def finished(client: httpx.Client, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "done":
            return job
        assert job["state"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.2)


def waited_in_queue(client: httpx.Client, job_id: int, url: str) -> None:
    """No worker takes the job: none is registered, and the job is still queued a few
    seconds later (a worker is woken by the queue's NOTIFY at once)."""
    time.sleep(3)
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone() == (0,)
        status = conn.execute("SELECT status::text FROM procrastinate_jobs").fetchall()
    assert status == [("todo",)]
