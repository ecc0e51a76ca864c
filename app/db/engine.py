"""Which PostgreSQL to use, the SQLAlchemy engine over it, and the bounds of every wait.

`DATABASE_URL` wins; without it the embedded server is started (or reused). Every connection
gets the pgvector type adapters so that numpy arrays go in and out as `vector` values, and the
service's time bounds: `statement_timeout`, `lock_timeout` and
`idle_in_transaction_session_timeout`, so that no statement, lock wait or forgotten transaction
can hold a request (or the rows it locked) for ever. Maintenance that is long by nature (index
builds, purges) lifts the statement bound for itself with `unbounded()`.

A request's transaction begins and commits inside the one call that does its work
(`transaction`, `retrying`): it is never left open across a hand-off to a thread pool that the
commit would have to wait for.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from pgvector.psycopg import register_vector
from psycopg import Connection as PgConnection
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from app.db import embedded
from app.errors import ConfigError
from app.settings import DatabaseSettings, Settings

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Failures after which the whole transaction can run again and may then succeed: PostgreSQL
# rolled it back, so nothing of it was written.
RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


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


class CountingPool(QueuePool):
    """The standard pool, knowing how many checkouts are under way: waiting for a free
    connection (up to `HYBRID_DB_POOL_TIMEOUT`) or opening one (`/metrics` reads it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = 0
        self._waiting_lock = threading.Lock()

    def _do_get(self) -> ConnectionPoolEntry:
        with self._waiting_lock:
            self.waiting += 1
        try:
            return super()._do_get()
        finally:
            with self._waiting_lock:
                self.waiting -= 1


# SQLAlchemy names a pool's logger after the pool's class: ours is kept as quiet as its own.
logging.getLogger(f"{__name__}.{CountingPool.__name__}").setLevel(logging.WARNING)


def make_engine(url: str, database: DatabaseSettings | None = None) -> Engine:
    """The engine with its pool and time bounds from `database` (the defaults without)."""
    database = database or DatabaseSettings()
    engine = create_engine(
        sqlalchemy_url(url),
        poolclass=CountingPool,
        pool_size=database.pool_size,
        max_overflow=database.pool_overflow,
        pool_timeout=database.pool_timeout_s,
        pool_pre_ping=True,
    )
    bounds = {
        "statement_timeout": f"{database.statement_timeout_ms}ms",
        "lock_timeout": f"{database.lock_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{database.idle_in_transaction_ms}ms",
        # psycopg prepares a statement on the server once it has run five times, and PostgreSQL
        # may then plan it once for any values: blind to a collection or a log position, the
        # change-log checks of every search read the whole log (0.8 ms each instead of 0.05).
        # Plans are always made for the values; the prepared parse is still reused.
        "plan_cache_mode": "force_custom_plan",
    }
    event.listen(engine, "connect", lambda dbapi, _record: _prepare(dbapi, bounds))
    return engine


def _prepare(dbapi_connection: Any, bounds: dict[str, str]) -> None:
    with dbapi_connection.cursor() as cur:
        for name, value in bounds.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
    dbapi_connection.commit()
    # Before the first migration the extension does not exist yet; the engine is disposed
    # after migrating so that new connections register the type.
    try:
        register_vector(dbapi_connection)
    except Exception:
        dbapi_connection.rollback()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    with engine.begin() as conn:
        yield conn


def retrying(engine: Engine, work: Callable[[Connection], T], retries: int) -> T:
    """Run `work` in a transaction of its own, again (up to `retries` times, after a short
    random pause) when PostgreSQL rolled it back for a deadlock or a serialization failure;
    `work` must not have effects outside the transaction."""
    for attempt in range(retries + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if attempt == retries or not isinstance(exc.orig, RETRYABLE):
                raise
            log.info("transaction retried", reason=type(exc.orig).__name__, attempt=attempt + 1)
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")


@contextmanager
def unbounded(conn: Connection) -> Iterator[Connection]:
    """Lift the statement bound on `conn` for the block (long maintenance: index builds,
    purges, collection deletes); lock waits stay bounded. Works inside a transaction and in
    autocommit mode alike, and restores the bound afterwards."""
    previous = conn.execute(text("SELECT current_setting('statement_timeout')")).scalar_one()
    conn.execute(text("SELECT set_config('statement_timeout', '0', false)"))
    succeeded = False
    try:
        yield conn
        succeeded = True
    finally:
        # A transaction that fails is rolled back, and the setting with it.
        if succeeded or conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            conn.execute(
                text("SELECT set_config('statement_timeout', :value, false)"), {"value": previous}
            )


def conninfo(url: URL, *, password: bool = True) -> str:
    """A libpq connection string for `url` (without its password when told: the tools get it
    from their environment instead)."""
    fields = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    if password:
        fields["password"] = url.password
    given = {key: str(value) for key, value in {**fields, **url.query}.items() if value}
    return make_conninfo(**given)


def driver_connection(conn: Connection) -> PgConnection[Any]:
    """The psycopg connection under a SQLAlchemy one, inside the same transaction (for COPY
    and other driver-level calls)."""
    driver = conn.connection.driver_connection
    assert isinstance(driver, PgConnection)
    return driver
