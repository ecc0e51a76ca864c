"""Backups of the database as pg_dump archives, and restoring them.

Both run the client tools shipped with the embedded server (PostgreSQL 18, next to psql)
against the server the engine points at, embedded or `DATABASE_URL`; the password reaches
them in the environment, never on a command line or in a message.

A backup is one custom-format archive (`pg_dump -Fc`) of the whole database: tables with
their data (`alembic_version` included), functions, triggers, the text search configuration,
grants and the row-level security policy. It appears at its path only once complete.

A restore runs in one transaction (`pg_restore --single-transaction --clean --if-exists`), so
a failure leaves the database as it was, and it refuses a database that holds rows unless
forced. Two things are put in place beforehand instead of being restored: the extensions
(created if missing, never dropped: the restoring user may not own them) and the roles (the
reader role of row-level security and the analysts' role: roles belong to the server, not to
the database, so no backup has them). Afterwards the schema is migrated from the backup's
revision to this version's head.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from app.db import embedded, migrate
from app.db.engine import conninfo, driver_connection
from app.errors import Conflict, HybridError, Invalid
from app.settings import Settings

# `pg_restore --list` lines that create an extension or comment on it; group 1: its name.
EXTENSION_ENTRY = re.compile(r"^\d+; \d+ \d+ (?:EXTENSION -|COMMENT - EXTENSION) (\S+)", re.M)
# The data of `alembic_version` as `pg_restore --data-only` prints it.
REVISION_DATA = re.compile(r"^COPY \S*alembic_version \(version_num\) FROM stdin;\n(\w+)$", re.M)
STDERR_LINES = 5

# The database's own tables (not an extension's), except those a migration fills: alembic's
# bookkeeping and the key of the query log's principals hash.
USER_TABLES = """
SELECT c.oid::regclass::text, n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^(pg_|information_schema$)'
  AND c.relname NOT IN ('alembic_version', 'query_log_salt')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""

DROP_LOG_PARTITIONS = """
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass('query_log')
    LOOP
        EXECUTE format('DROP TABLE %I', part);
    END LOOP;
END $$
"""

# The role searches read through, as migration 0002 creates it, and the analysts' role, as
# migration 0010 does (roles belong to the server: the grants of a backup need them).
READER_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hybrid_reader') THEN
        CREATE ROLE hybrid_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hybrid_analyst') THEN
        CREATE ROLE hybrid_analyst NOLOGIN;
    END IF;
    IF NOT pg_has_role(current_user, 'hybrid_reader', 'MEMBER') THEN
        EXECUTE format('GRANT hybrid_reader TO %I', current_user);
    END IF;
END $$
"""


@dataclass(frozen=True)
class Archive:
    """A backup file: its table of contents (`pg_restore --list`) and schema revision."""

    path: Path
    contents: str
    revision: str

    @property
    def extensions(self) -> list[str]:
        """The extensions the backup creates, each once."""
        return list(dict.fromkeys(EXTENSION_ENTRY.findall(self.contents)))

    @property
    def restore_list(self) -> str:
        """The table of contents without the extensions (`;` comments a line out)."""
        return EXTENSION_ENTRY.sub(lambda entry: ";" + entry.group(0), self.contents)


def dump(engine: Engine, path: Path) -> int:
    """Write the engine's database to `path`, readable by its owner only; the archive's size
    in bytes. An earlier file at `path` is replaced only by a complete archive."""
    conninfo, env = _connection(engine.url)
    try:
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise Invalid(f"cannot write a backup to {path}: {exc.strerror}") from exc
    os.close(handle)
    try:
        _run("pg_dump", "--format=custom", f"--file={partial}", f"--dbname={conninfo}", env=env)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path.stat().st_size


def read_archive(path: Path) -> Archive:
    """The table of contents and schema revision of a backup made by `dump`."""
    try:
        contents = _run("pg_restore", "--list", str(path))
    except HybridError as exc:
        raise Invalid(f"{path} is not a backup made by `hybrid db backup`: {exc}") from exc
    data = _run("pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(path))
    revision = REVISION_DATA.search(data)
    if revision is None:
        raise Invalid(
            f"{path} has no schema revision (alembic_version): not a backup of this service"
        )
    return Archive(path, contents, revision.group(1))


def restore(engine: Engine, settings: Settings, path: Path, *, force: bool = False) -> str:
    """Restore a backup into the engine's database, replacing what the backup holds; the
    schema revision the database ends at. Refuses a database holding rows unless `force`."""
    archive = read_archive(path)
    revisions = _revisions()
    if archive.revision not in revisions:
        raise Invalid(
            f"{path} is at schema revision {archive.revision}, which this version does not "
            f"know (its newest is {revisions[-1]}): restore it with a newer version"
        )
    filled = tables_with_rows(engine)
    if filled and not force:
        raise Conflict(
            f"the database already holds data (tables {', '.join(filled)}): "
            "pass --force to replace it with the backup"
        )
    _match_schema(engine, archive.revision, revisions, holds_data=bool(filled))
    _prepare(engine, archive.extensions)
    _pg_restore(engine.url, archive)
    engine.dispose()  # connections opened before know no `vector` type if it was just created
    migrate.upgrade(engine, settings)
    return migrate.current_revision(engine) or "base"


def tables_with_rows(engine: Engine) -> list[str]:
    """The database's own tables that hold at least one row."""
    with engine.connect() as conn:
        driver = driver_connection(conn)
        tables = driver.execute(USER_TABLES).fetchall()
        exists = sql.SQL("SELECT EXISTS (SELECT FROM {})")
        return [
            shown
            for shown, schema, name in tables
            if driver.execute(exists.format(sql.Identifier(schema, name))).fetchone() == (True,)
        ]


def _match_schema(engine: Engine, revision: str, revisions: list[str], holds_data: bool) -> None:
    """Bring a schema newer than the backup's back to its revision: migrating the restored
    database forward must not find the newer objects (which the backup lacks) in its way."""
    current = migrate.current_revision(engine)
    if current is None or current == revision:
        return
    if current not in revisions:
        raise Invalid(f"the database is at schema revision {current}, unknown to this version")
    if revisions.index(current) < revisions.index(revision):
        return
    if holds_data:
        raise Conflict(
            f"the database's schema (revision {current}) is newer than the backup's "
            f"({revision}) and holds data: restore into an empty database, or first run "
            f"`hybrid migrate --downgrade --revision {revision}`"
        )
    migrate.downgrade(engine, revision)


def _prepare(engine: Engine, extensions: list[str]) -> None:
    """What the restore needs but does not bring: the extensions and the roles. And what it
    cannot replace: `pg_restore --clean` drops a partition's inherited primary key before its
    table and fails, so the query log's partitions go first (the backup brings its own; a
    service makes the days it needs again at start). A restore that then fails has lost the
    replaced database's query log rows, and nothing else."""
    with engine.begin() as conn:
        driver = driver_connection(conn)
        for name in extensions:
            driver.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
            )
        driver.execute(READER_ROLE)
        driver.execute(DROP_LOG_PARTITIONS)


def _pg_restore(url: URL, archive: Archive) -> None:
    """Replace what the archive holds, except its extensions, in one transaction."""
    conninfo, env = _connection(url)
    with tempfile.TemporaryDirectory() as scratch:
        listing = Path(scratch) / "restore.list"
        listing.write_text(archive.restore_list)
        _run(
            "pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner",
            f"--use-list={listing}", f"--dbname={conninfo}", str(archive.path), env=env,
        )  # fmt: skip


def _revisions() -> list[str]:
    """This version's schema revisions, oldest first."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [step.revision for step in reversed(list(script.walk_revisions()))]


def _connection(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection string for the tools, and their environment carrying the password."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    return conninfo(url, password=False), env


def _run(tool: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a client tool; its standard output, or an error with its last messages."""
    executable = embedded.psql_path().with_name(tool)
    done = subprocess.run(
        [str(executable), *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise HybridError(
            f"{tool} failed (exit status {done.returncode}):\n{_tail(done.stderr, tool)}"
        )
    return done.stdout


def _tail(stderr: str, tool: str) -> str:
    """The last lines of a tool's messages; of the SQL it quotes after `Command was:`, only
    the first line."""
    kept: list[str] = []
    quoting = False
    for line in stderr.splitlines():
        if line.startswith(f"{tool}:"):
            quoting = False
        elif quoting or not line.strip():
            continue
        kept.append(line)
        quoting = quoting or line.startswith("Command was:")
    return "\n".join(kept[-STDERR_LINES:])
