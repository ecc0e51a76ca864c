"""Schema management through alembic: upgrade, downgrade, and the start-up check.

The service refuses to run on a schema it does not know: at start-up it applies pending
migrations (HYBRID_AUTO_MIGRATE, the default) or stops with a message saying what to run.
Vector dimensions are the collections' own (each records its model and dimension), so a
service configured with another model still serves the collections it finds.
"""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from app import PROJECT_ROOT
from app.db.engine import unbounded
from app.errors import ConfigError
from app.settings import Settings

# Alembic narrates every step at INFO; the CLI and the server say what matters themselves.
logging.getLogger("alembic").setLevel(logging.WARNING)


def alembic_config(
    connection: Connection | None = None, embedding_dim: int | None = None
) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "alembic"))
    config.attributes["connection"] = connection
    config.attributes["embedding_dim"] = embedding_dim
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, settings: Settings, revision: str = "head") -> None:
    """Migrate to `revision`; a migration may rewrite a large table, so the statement bound
    is lifted (lock waits stay bounded)."""
    with engine.begin() as conn, unbounded(conn):
        config = alembic_config(conn, settings.embedding.dimension)
        command.upgrade(config, revision)
    engine.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn, unbounded(conn):
        command.downgrade(alembic_config(conn), revision)
    engine.dispose()


def ensure_schema(engine: Engine, settings: Settings) -> None:
    """Bring the schema to head or refuse to start."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        if not settings.database.auto_migrate:
            raise ConfigError(
                f"database schema is at revision {current or 'none'}, this version needs "
                f"{head}: run `hybrid migrate` (or set HYBRID_AUTO_MIGRATE=true)"
            )
        upgrade(engine, settings)
