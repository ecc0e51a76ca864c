"""Shared fixtures: one throwaway embedded PostgreSQL per test run, schema built by alembic,
the real bundled embedding model (and a tiny cross-encoder built from it), a clean database
for every test that asks for one, and the real API server on a loopback port (`serving`) for
tests that speak real HTTP."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from litestar.testing import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from app.api.app import create_app
from app.db import embedded
from app.service import Services
from app.settings import Settings, load_settings
from tests.cross_encoder import build_tiny_cross_encoder
from tests.openai_server import OpenAIServer


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # Not under pytest's own temporary root: pytest keeps that private (0700), and the server
    # runs as a separate system user when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix="hybrid-test-"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(data_dir: Path) -> str:
    url, _ = embedded.start(data_dir)
    return url


@contextmanager
def scratch_database(database_url: str, name: str, options: str = "") -> Iterator[str]:
    """A database of its own on the test server (`options` after CREATE DATABASE name), its
    URL yielded, dropped afterwards: the shared test schema is never touched."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} {options}")
    yield database_url.replace("/hybrid?", f"/{name}?")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def make_settings(database_url: str, data_dir: Path, **overrides: str) -> Settings:
    environ = {
        "DATABASE_URL": database_url,
        "HYBRID_DATA_DIR": str(data_dir),
        "HYBRID_INGEST_BATCH": "8",
        # Tests of everything else act as an admin (`tests/test_identity.py` turns it on).
        "HYBRID_AUTH": "off",
        # Admission control has tests of its own; the others send more requests at once.
        "HYBRID_MAX_IN_FLIGHT": "64",
        # Vector caches that tests create and start follow the change log on a connection of
        # the shared pool until the session ends; more overflow keeps the later tests' own.
        "HYBRID_DB_POOL_OVERFLOW": "30",
        **overrides,
    }
    return load_settings(environ)


@pytest.fixture(scope="session")
def model_dir() -> Iterator[Path]:
    """A cross-encoder built from the bundled MiniLM encoder with a new one-logit head."""
    path = build_tiny_cross_encoder(Path(tempfile.mkdtemp(prefix="tiny-cross-encoder-")))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path) -> Settings:
    return make_settings(database_url, data_dir)


@pytest.fixture(scope="session")
def session_services(settings: Settings) -> Iterator[Services]:
    services = Services.open(settings)
    yield services
    services.close()


@pytest.fixture
def services(session_services: Services) -> Iterator[Services]:
    """The shared services over an empty database (the embedding cache is kept: it is keyed
    by model and text, so it cannot leak between tests)."""
    yield session_services
    # What the test's requests logged is written now, not into the next test's tables.
    session_services.query_log.flush()
    empty_tables(session_services.engine)


def empty_tables(engine: Engine) -> None:
    """Empty every table a test may have written. A vector cache still following the log
    (started by an earlier test's application) may deadlock with the TRUNCATE: PostgreSQL
    rolls one of them back, and this tries again."""
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                conn.execute(text(EMPTY_TABLES))
                conn.execute(text(DROP_VECTOR_INDEXES))
            return
        except OperationalError as exc:
            if not isinstance(exc.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                raise
            time.sleep(0.2)


# Everything a test may have written (jobs go with their collections; the queue's entries
# must go too, as job ids start again from 1).
EMPTY_TABLES = (
    "TRUNCATE collections, change_log, api_keys, audit_log, query_log, feedback, "
    "procrastinate_jobs, procrastinate_workers RESTART IDENTITY CASCADE"
)

# TRUNCATE skips the trigger that drops a deleted collection's vector index, and the ids start
# again from 1: without this, the next test's collection would find an index already built.
DROP_VECTOR_INDEXES = """
DO $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN
        SELECT indexname FROM pg_indexes
        WHERE tablename = 'chunks' AND indexname ~ '^chunks_embedding_[0-9]+(_v[0-9]+)?$'
    LOOP
        EXECUTE format('DROP INDEX %I', index_name);
    END LOOP;
END $$
"""


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(app=create_app(services)) as test_client:
        yield test_client


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    """An OpenAI-compatible chat and embedding server on loopback (`tests/openai_server.py`)."""
    with OpenAIServer(hang_s=5.0) as running:
        yield running


@pytest.fixture
def backup() -> Iterator[OpenAIServer]:
    """A second such server, whose answers say they come from the backup."""
    with OpenAIServer(hang_s=5.0) as running:
        running.say(*["Backup says cats purr [1]."] * 20)
        yield running


@contextmanager
def own_services(database_url: str, data_dir: Path, **settings: str) -> Iterator[Services]:
    """Services of their own over the test database, with `settings` (environment names)."""
    services = Services.open(make_settings(database_url, data_dir, **settings))
    try:
        yield services
    finally:
        services.close()


@contextmanager
def serving(
    services: Services, bind_host: str | None = None, *, vector_cache: bool = False
) -> Iterator[httpx.Client]:
    """The API over `services` on a loopback port of its own (uvicorn, real HTTP), and a
    client for it; `vector_cache` starts the FAISS cache as `hybrid serve` does."""
    app = create_app(services, vector_cache=vector_cache, bind_host=bind_host)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    # Start-up loads the models: generous, for a busy machine.
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
