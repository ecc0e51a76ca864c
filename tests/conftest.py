"""Shared fixtures: one throwaway embedded PostgreSQL per test run, schema built by alembic,
the real bundled embedding model, and a clean database for every test that asks for one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from app.api.app import create_app
from app.db import embedded
from app.service import Services
from app.settings import Settings, load_settings


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
        **overrides,
    }
    return load_settings(environ)


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
    with session_services.engine.begin() as conn:
        conn.execute(text("TRUNCATE collections, change_log RESTART IDENTITY CASCADE"))
        conn.execute(text(DROP_VECTOR_INDEXES))


# TRUNCATE skips the trigger that drops a deleted collection's vector index, and the ids start
# again from 1: without this, the next test's collection would find an index already built.
DROP_VECTOR_INDEXES = """
DO $$
DECLARE
    index_name text;
BEGIN
    FOR index_name IN
        SELECT indexname FROM pg_indexes
        WHERE tablename = 'chunks' AND indexname ~ '^chunks_embedding_[0-9]+$'
    LOOP
        EXECUTE format('DROP INDEX %I', index_name);
    END LOOP;
END $$
"""


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(app=create_app(services)) as test_client:
        yield test_client
