"""The schema only comes from alembic: upgrade → downgrade → upgrade on a real server, and the
start-up check refuses an old schema or a mismatched vector dimension."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from app.db import migrate
from app.db.engine import make_engine, sqlalchemy_url
from app.errors import ConfigError
from tests.conftest import make_settings, scratch_database

TABLES = {"collections", "documents", "sections", "chunks", "change_log", "embedding_cache"}


@pytest.fixture
def scratch_url(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "migrations_scratch") as url:
        yield url


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) & TABLES


def test_upgrade_downgrade_upgrade(scratch_url: str, data_dir: Path) -> None:
    settings = make_settings(scratch_url, data_dir)
    engine = make_engine(scratch_url)
    migrate.upgrade(engine, settings)
    assert tables(engine) == TABLES
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert tables(engine) == set()
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine, settings)
    assert tables(engine) == TABLES
    assert {"chunks_tsv_idx", "documents_acl_idx"} <= indexes(engine)
    engine.dispose()


def test_collections_get_their_own_vector_index(scratch_url: str, data_dir: Path) -> None:
    """Before 0005 one HNSW index covers every collection; from 0005 each has its own."""
    settings = make_settings(scratch_url, data_dir)
    engine = make_engine(scratch_url)
    migrate.upgrade(engine, settings, "0004")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO collections (name, embedding_model, embedding_dim) "
                "VALUES ('a', 'm', 384), ('b', 'm', 384)"
            )
        )
    assert "chunks_embedding_idx" in indexes(engine)
    migrate.upgrade(engine, settings)
    assert {"chunks_embedding_1", "chunks_embedding_2"} <= indexes(engine)
    assert "chunks_embedding_idx" not in indexes(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM collections WHERE name = 'a'"))
    assert "chunks_embedding_1" not in indexes(engine)
    migrate.downgrade(engine, "0004")
    found = indexes(engine)
    assert "chunks_embedding_idx" in found
    assert not any(name.startswith("chunks_embedding_") and name[-1].isdigit() for name in found)
    engine.dispose()


def indexes(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT indexname FROM pg_indexes"))}


def test_start_up_refuses_an_old_schema_without_auto_migrate(
    scratch_url: str, data_dir: Path
) -> None:
    settings = make_settings(scratch_url, data_dir, HYBRID_AUTO_MIGRATE="false")
    engine = make_engine(scratch_url)
    with pytest.raises(ConfigError, match="hybrid migrate"):
        migrate.ensure_schema(engine, settings)
    migrate.ensure_schema(engine, make_settings(scratch_url, data_dir))
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_start_up_refuses_a_dimension_that_differs_from_the_column(
    scratch_url: str, data_dir: Path
) -> None:
    engine = make_engine(scratch_url)
    migrate.ensure_schema(engine, make_settings(scratch_url, data_dir))
    other = make_settings(scratch_url, data_dir, HYBRID_EMBEDDING_DIM="768")
    with pytest.raises(ConfigError, match=r"768.*384"):
        migrate.ensure_schema(engine, other)
    engine.dispose()


def test_database_urls_are_normalised_to_psycopg() -> None:
    assert sqlalchemy_url("postgres://u:p@h:5/db").startswith("postgresql+psycopg://u:p@h:5/db")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        sqlalchemy_url("mysql://u@h/db")


def test_token_count_is_replaced_in_place(scratch_url: str, data_dir: Path) -> None:
    """0008 rewrites the BM25 length's counting function, not the lengths it stored."""
    settings = make_settings(scratch_url, data_dir)
    engine = make_engine(scratch_url)
    migrate.upgrade(engine, settings, "0007")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO collections (id, name, embedding_model, embedding_dim) "
                "OVERRIDING SYSTEM VALUE VALUES (1, 'a', 'm', 384);"
                "INSERT INTO documents (collection_id, id, external_id, title, content_hash) "
                "OVERRIDING SYSTEM VALUE VALUES (1, 1, 'd', 'A title, with commas', 'h');"
                "INSERT INTO sections (collection_id, document_id, ordinal, text) "
                "VALUES (1, 1, 0, 'x');"
                "INSERT INTO chunks (collection_id, document_id, ordinal, section_ordinal, "
                "context, text, token_count, text_config, embedding) "
                "VALUES (1, 1, 0, 0, 'A title, with commas', "
                "'Cats, cats and 1,000 dogs: the cat''s toy', 12, 'english', "
                "CAST(array_fill(0.1, ARRAY[384]) AS vector))"
            )
        )

    def language_and_lengths() -> tuple[str, list[tuple[int, int]]]:
        with engine.connect() as conn:
            language = conn.execute(
                text(
                    "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                    "WHERE p.proname = 'tsvector_token_count'"
                )
            ).scalar_one()
            lengths = conn.execute(
                text("SELECT length, tsvector_token_count(tsv) FROM chunks")
            ).all()
        return language, [tuple(row) for row in lengths]

    language, before = language_and_lengths()
    assert language == "sql" and before[0][0] == before[0][1] > 0
    migrate.upgrade(engine, settings)
    assert language_and_lengths() == ("plpgsql", before)
    migrate.downgrade(engine, "0007")
    assert language_and_lengths() == ("sql", before)
    engine.dispose()
