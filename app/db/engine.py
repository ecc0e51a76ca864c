"""Which PostgreSQL to use, and the SQLAlchemy engine over it.

`DATABASE_URL` wins; without it the embedded server is started (or reused). Every connection
gets the pgvector type adapters so that numpy arrays go in and out as `vector` values.
"""

from __future__ import annotations

from typing import Any

from pgvector.psycopg import register_vector
from psycopg import Connection as PgConnection
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from app.db import embedded
from app.errors import ConfigError
from app.settings import Settings


def resolve_database_url(settings: Settings) -> tuple[str, bool]:
    """The server URL, and whether this call started the embedded server."""
    if settings.database.url:
        return settings.database.url, False
    return embedded.start(settings.database.data_dir)


def sqlalchemy_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` URLs and pin the psycopg 3 driver."""
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except Exception as exc:
        raise ConfigError(f"DATABASE_URL: not a valid URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"DATABASE_URL: expected a postgresql:// URL, got {parsed.drivername}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    engine = create_engine(sqlalchemy_url(url), pool_size=pool_size, pool_pre_ping=True)
    event.listen(engine, "connect", _register_vector)
    return engine


def _register_vector(dbapi_connection: Any, _record: Any) -> None:
    # Before the first migration the extension does not exist yet; the engine is disposed
    # after migrating so that new connections register the type.
    try:
        register_vector(dbapi_connection)
    except Exception:
        dbapi_connection.rollback()


def driver_connection(conn: Connection) -> PgConnection[Any]:
    """The psycopg connection under a SQLAlchemy one, inside the same transaction (for COPY
    and other driver-level calls)."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, PgConnection)
    return driver
