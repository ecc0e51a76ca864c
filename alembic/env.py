"""Alembic environment: runs migrations on the connection `hybrid migrate` hands over, or on the
database the settings point at when alembic is run by hand."""

from __future__ import annotations

from alembic import context

from app.db.engine import make_engine, resolve_database_url
from app.settings import load_settings


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url, _ = resolve_database_url(load_settings())
    engine = make_engine(url, pool_size=1)
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


def _migrate(connection: object) -> None:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


run()
