"""The schema only comes from alembic: upgrade → downgrade → upgrade on a real server, the
start-up check refuses an old schema or a mismatched vector dimension, and data written at any
earlier revision searches, once upgraded, exactly as the same data written at head."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, TextClause, inspect, text

from app import collections, documents
from app.db import migrate
from app.db.engine import make_engine, sqlalchemy_url
from app.errors import ConfigError
from app.ingest.model import Block, SourceDocument
from app.ingest.pipeline import Ingestor
from app.search.engine import Searcher, search
from app.search.request import Boosts, PopularityBoost, SearchRequest
from app.search.results import Hit, SearchResult
from app.service import Services
from tests.conftest import make_settings, scratch_database
from tests.test_ingest import doc

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


def test_a_service_of_another_dimension_starts_on_collections_of_this_one(
    scratch_url: str, data_dir: Path
) -> None:
    """Dimensions are the collections' own (revision 0013): the configured model only decides
    what new collections are embedded with."""
    engine = make_engine(scratch_url)
    migrate.ensure_schema(engine, make_settings(scratch_url, data_dir))
    migrate.ensure_schema(engine, make_settings(scratch_url, data_dir, HYBRID_EMBEDDING_DIM="768"))
    assert migrate.current_revision(engine) == migrate.head_revision()
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


# --- Upgrades with data in place ----------------------------------------------------------------
#
# The reference is the corpus as the write path stores it at head. Its rows are written with
# plain SQL into a database at each earlier revision, which is then upgraded to head: the
# searches must return the same chunks in the same order with the same scores, so every
# statistic, length and index a migration derives from existing rows must equal the ones the
# write path keeps.

CORPUS = [
    doc(
        "cats",
        "Cats are small domestic felines. A cat sleeps most of the day.",
        title="Cats",
        metadata={"kind": "mammal"},
    ),
    doc(
        "dogs",
        "Dogs are loyal. A dog likes long walks and a dog barks at cats.",
        title="Dogs",
        metadata={"kind": "mammal"},
        popularity=40.0,
    ),
    SourceDocument(
        "birds",
        "Birds",
        [
            Block("Birds fly south in winter.", ("Migration",)),
            Block("Some birds, like penguins, cannot fly.", ("Flightless birds",)),
        ],
        acl=["zoo"],
    ),
    doc("fish", "Fish live in water and breathe through gills.", title="Fish"),
    doc(
        "pets",
        "Common pets: cats, dogs, fish and birds. Cats and dogs need care.",
        title="Pets",
        popularity=3.0,
    ),
    doc("zebras", "Zebras are striped horses of the savanna.", title="Zebras"),
]
DELETED = "zebras"

# Explained, so that BM25 scores and vector distances are compared, not only fused ranks.
SEARCHES: list[dict[str, Any]] = [
    {"query": "cats", "mode": "keyword"},
    {"query": "a dog walks and barks", "mode": "keyword"},
    {"query": "animals that live in water", "mode": "vector"},
    {"query": "which pets need care", "mode": "hybrid"},
    {"query": "striped zebras", "mode": "hybrid"},
    {"query": "cats dogs birds", "mode": "hybrid", "filter": {"metadata.kind": "mammal"}},
    {"query": "birds fly south", "mode": "hybrid", "principals": ["zoo"]},
    {
        "query": "pets and birds",
        "mode": "hybrid",
        "principals": ["zoo"],
        "per_document": True,
        "boosts": Boosts(popularity=PopularityBoost()),
    },
]

# The columns the write path fills, each present since the first revision (later ones only
# add generated columns and tables that triggers keep), so one writer serves every revision.
COPIED = {
    "collections": ("id", "name", "embedding_model", "embedding_dim", "settings"),
    "documents": (
        "collection_id", "id", "external_id", "title", "source", "content_hash", "version",
        "metadata", "acl", "popularity", "chunk_count", "created_at", "updated_at",
        "published_at", "deleted_at",
    ),
    "sections": ("collection_id", "document_id", "ordinal", "heading_path", "text"),
    "chunks": (
        "collection_id", "id", "document_id", "ordinal", "section_ordinal", "heading_path",
        "context", "text", "token_count", "embedding",
    ),
}  # fmt: skip
# Read as text, written back through a cast.
TEXT_FORMS = {"settings": "jsonb", "metadata": "jsonb", "embedding": "vector"}
# A collection's text configuration is the schema's default at that revision (`english`
# before 0002 created `english_unaccent`), and its chunks take the collection's.
CHUNK_TEXT_CONFIG = "(SELECT text_config FROM collections WHERE id = :collection_id)"
LOG_CHUNKS = (
    "INSERT INTO change_log (collection_id, chunk_id, op) "
    "SELECT collection_id, id, 'I' FROM chunks ORDER BY id"
)


Rows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class Reference:
    """The corpus written by the write path at head: its rows, indexes and search results."""

    rows: Rows
    indexes: set[tuple[str, str]]
    results: dict[str, SearchResult]


def all_revisions() -> list[str]:
    """Every revision, oldest first, as alembic's script directory lists them."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


@pytest.fixture(scope="module")
def reference(database_url: str, data_dir: Path, session_services: Services) -> Iterator[Reference]:
    with scratch_database(database_url, "migrations_reference") as url:
        settings = make_settings(url, data_dir)
        engine = make_engine(url)
        migrate.upgrade(engine, settings)
        services = session_services
        Ingestor(engine, settings, services.embedder, services.tokenizer).ingest(
            "kb", CORPUS, create=True
        )
        # The deleted document's chunks are kept for the revisions whose soft delete kept them.
        rows = read_rows(engine)
        with engine.begin() as conn:
            documents.soft_delete(conn, collections.get(conn, "kb").id, DELETED)
        rows["documents"] = read_rows(engine)["documents"]
        results = search_all(engine, services)
        assert all(result.hits for result in results.values())
        yield Reference(rows, index_definitions(engine), results)
        engine.dispose()


def read_rows(engine: Engine) -> Rows:
    with engine.connect() as conn:
        return {
            table: [dict(r) for r in conn.execute(select_sql(table, columns)).mappings()]
            for table, columns in COPIED.items()
        }


def select_sql(table: str, columns: tuple[str, ...]) -> TextClause:
    read = [f"CAST({c} AS text) AS {c}" if c in TEXT_FORMS else c for c in columns]
    return text(f"SELECT {', '.join(read)} FROM {table} ORDER BY 1, 2")


def insert_sql(table: str, columns: tuple[str, ...]) -> TextClause:
    names = [*columns, *(["text_config"] if table == "chunks" else [])]
    values = [f"CAST(:{c} AS {TEXT_FORMS[c]})" if c in TEXT_FORMS else f":{c}" for c in columns]
    values += [CHUNK_TEXT_CONFIG] if table == "chunks" else []
    return text(
        f"INSERT INTO {table} ({', '.join(names)}) OVERRIDING SYSTEM VALUE "
        f"VALUES ({', '.join(values)})"
    )


def write_rows(engine: Engine, rows: Rows) -> None:
    """Write the reference rows (with their ids, so that hits compare by chunk id) as the
    write path of the database's revision did: before the BM25 statistics (0002) a soft
    delete kept the document's sections and chunks, and since 0005 the writer builds the
    collection's vector index."""
    with engine.begin() as conn:
        statistics, own_index, versioned = conn.execute(
            text(
                "SELECT to_regclass('corpus_stats') IS NOT NULL, "
                "to_regprocedure('vector_index_ddl(bigint, boolean)') IS NOT NULL, "
                "to_regprocedure('vector_index_ddl(bigint, boolean, text, integer, integer)') "
                "IS NOT NULL"
            )
        ).one()
        deleted = {d["id"] for d in rows["documents"] if statistics and d["deleted_at"]}
        for table, columns in COPIED.items():
            kept = [r for r in rows[table] if r.get("document_id") not in deleted]
            conn.execute(insert_sql(table, columns), kept)
        conn.execute(text(LOG_CHUNKS))
        for collection in rows["collections"] if own_index or versioned else []:
            ddl = conn.execute(
                text(
                    "SELECT vector_index_ddl(:id, false, 'embedding', :dim, 1)"
                    if versioned
                    else "SELECT vector_index_ddl(:id, false)"
                ),
                {"id": collection["id"], "dim": collection["embedding_dim"]},
            ).scalar_one()
            conn.exec_driver_sql(ddl)


def search_all(engine: Engine, services: Services) -> dict[str, SearchResult]:
    """Every search of SEARCHES, with the default exact threshold (few chunks: both legs read
    them directly) and with 0 (the legs use the GIN and HNSW indexes), by description."""
    default = services.settings.search
    results = {}
    for threshold in (default.exact_threshold, 0):
        settings = replace(default, exact_threshold=threshold)
        for fields in SEARCHES:
            request = SearchRequest(explain=True, **fields)
            with engine.begin() as conn:
                results[f"{fields}, exact threshold {threshold}"] = search(
                    conn, "kb", request, Searcher(settings=settings, embeddings=services.embeddings)
                )
    return results


def assert_same_results(got: dict[str, SearchResult], expected: dict[str, SearchResult]) -> None:
    assert got.keys() == expected.keys()
    for described, wanted in expected.items():
        found = got[described]
        assert [listed(h) for h in found.hits] == [listed(h) for h in wanted.hits], described
        assert scores(found) == pytest.approx(scores(wanted), abs=1e-6, nan_ok=True), described


def listed(hit: Hit) -> tuple[Any, ...]:
    keyword, vector = legs(hit)
    return (
        hit.chunk_id,
        hit.document_id,
        hit.text,
        hit.highlight,
        keyword.get("rank"),
        vector.get("rank"),
    )


def scores(result: SearchResult) -> list[float]:
    found = []
    for hit in result.hits:
        keyword, vector = legs(hit)
        found += [hit.score, keyword.get("bm25", math.nan), vector.get("distance", math.nan)]
    return found


def legs(hit: Hit) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hit's keyword and vector explanations, empty for a leg that did not find it."""
    assert hit.explain is not None
    return hit.explain["keyword"] or {}, hit.explain["vector"] or {}


def index_definitions(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (r.indexname, r.indexdef)
            for r in conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
            )
        }


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (*COPIED, "change_log", "corpus_stats", "term_stats")
        }


@pytest.mark.parametrize("revision", all_revisions())
def test_data_written_at_a_revision_searches_as_at_head(
    revision: str,
    scratch_url: str,
    data_dir: Path,
    reference: Reference,
    session_services: Services,
) -> None:
    """At head itself, this checks `write_rows` against the write path."""
    settings = make_settings(scratch_url, data_dir)
    engine = make_engine(scratch_url)
    migrate.upgrade(engine, settings, revision)
    write_rows(engine, reference.rows)
    migrate.upgrade(engine, settings)
    assert index_definitions(engine) == reference.indexes
    assert_same_results(search_all(engine, session_services), reference.results)
    engine.dispose()


def test_one_step_down_and_back_keeps_the_data(
    scratch_url: str, data_dir: Path, reference: Reference, session_services: Services
) -> None:
    settings = make_settings(scratch_url, data_dir)
    engine = make_engine(scratch_url)
    migrate.upgrade(engine, settings)
    write_rows(engine, reference.rows)
    before = row_counts(engine)
    migrate.downgrade(engine, "-1")
    assert migrate.current_revision(engine) == all_revisions()[-2]
    migrate.upgrade(engine, settings)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert row_counts(engine) == before
    assert_same_results(search_all(engine, session_services), reference.results)
    engine.dispose()
