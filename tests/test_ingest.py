"""The write path against a real PostgreSQL and the real model: dedup, versioned re-ingest,
metadata-only updates, soft delete and purge, the change log, the embedding cache, and
atomicity when something fails in the middle."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from app import documents
from app.errors import NotFound, Unavailable
from app.ingest.model import Block, SourceDocument
from app.ingest.pipeline import Defaults, Ingestor
from app.ingest.store import FIELDS
from app.service import Services


def doc(external_id: str, body: str, **fields: Any) -> SourceDocument:
    paragraphs = [Block(p) for p in body.split("\n\n")]
    return SourceDocument(
        external_id=external_id, title=fields.pop("title", external_id), blocks=paragraphs, **fields
    )


def scalar(services: Services, sql: str, **params: Any) -> Any:
    with services.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(services: Services, sql: str, **params: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def chunk_texts(services: Services, external_id: str) -> list[str]:
    return [
        r.text
        for r in rows(
            services,
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.external_id = :x ORDER BY c.ordinal",
            x=external_id,
        )
    ]


def test_ingest_writes_documents_sections_chunks_and_log(services: Services) -> None:
    report = services.ingestor.ingest(
        "kb",
        [
            doc("a", "Cats purr when content.\n\nThey sleep a lot."),
            doc("b", "Dogs bark at strangers."),
        ],
        create=True,
    )
    assert report.summary()["created"] == 2
    assert scalar(services, "SELECT count(*) FROM documents") == 2
    assert scalar(services, "SELECT count(*) FROM chunks") == report.chunks == 2
    assert scalar(services, "SELECT count(*) FROM sections") == 2
    assert scalar(services, "SELECT count(*) FROM change_log WHERE op = 'I'") == 2
    assert scalar(services, "SELECT vector_dims(embedding) FROM chunks LIMIT 1") == 384
    lexemes = scalar(
        services,
        "SELECT tsv::text FROM chunks c JOIN documents d ON d.id = c.document_id "
        "WHERE d.external_id = 'b'",
    )
    assert "'bark'" in lexemes and "'dog'" in lexemes
    assert scalar(services, "SELECT chunk_count FROM documents WHERE external_id = 'a'") == 1


def test_unchanged_document_writes_nothing(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("a", "Same text.")], create=True)
    before = rows(services, "SELECT version, updated_at FROM documents")
    log_before = scalar(services, "SELECT count(*) FROM change_log")
    report = services.ingestor.ingest("kb", [doc("a", "Same text.")])
    assert report.summary()["unchanged"] == 1
    assert report.embedded == 0
    assert rows(services, "SELECT version, updated_at FROM documents") == before
    assert scalar(services, "SELECT count(*) FROM change_log") == log_before


def test_changed_document_replaces_its_chunks(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("a", "Old first.\n\nOld second.")], create=True)
    old_ids = [r.id for r in rows(services, "SELECT id FROM chunks")]
    report = services.ingestor.ingest("kb", [doc("a", "New text entirely.")])
    assert report.summary()["updated"] == 1
    assert scalar(services, "SELECT version FROM documents WHERE external_id = 'a'") == 2
    assert scalar(services, "SELECT count(*) FROM documents") == 1
    assert chunk_texts(services, "a") == ["New text entirely."]
    deleted = [r.chunk_id for r in rows(services, "SELECT chunk_id FROM change_log WHERE op = 'D'")]
    assert sorted(deleted) == sorted(old_ids)


def test_metadata_only_change_does_not_reembed(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("a", "Stable text.", metadata={"lang": "en"})], create=True)
    chunk_ids = rows(services, "SELECT id FROM chunks")
    report = services.ingestor.ingest("kb", [doc("a", "Stable text.", metadata={"team": "x"})])
    assert report.summary()["metadata_updated"] == 1
    assert report.embedded == 0 and report.cached == 0
    assert rows(services, "SELECT id FROM chunks") == chunk_ids
    assert scalar(services, "SELECT metadata FROM documents") == {"lang": "en", "team": "x"}
    assert scalar(services, "SELECT version FROM documents") == 1
    # Logged, so that cached search results of the collection are retired.
    updated = rows(services, "SELECT chunk_id AS id FROM change_log WHERE op = 'U'")
    assert updated == chunk_ids


# One change per stored field (`app.ingest.store.FIELDS`), and what the row then holds.
FIELD_CHANGES = {
    "source": ({"source": "new.md"}, "new.md"),
    "metadata": ({"metadata": {"lang": "de"}}, {"lang": "de"}),
    "acl": ({"acl": ["team-b"]}, ["team-b"]),
    "popularity": ({"popularity": 5.0}, 5.0),
    "published_at": (
        {"published_at": datetime(2024, 5, 1, tzinfo=UTC)},
        datetime(2024, 5, 1, tzinfo=UTC),
    ),
}


def test_every_stored_field_is_compared() -> None:
    assert set(FIELD_CHANGES) == set(FIELDS)


@pytest.mark.parametrize("name", sorted(FIELD_CHANGES))
def test_a_change_to_one_stored_field_alone_is_written(services: Services, name: str) -> None:
    original = {
        "source": "old.md",
        "metadata": {"lang": "en"},
        "acl": ["team-a"],
        "popularity": 1.0,
        "published_at": datetime(2020, 1, 1, tzinfo=UTC),
    }
    services.ingestor.ingest("kb", [doc("a", "Stable text.", **original)], create=True)
    change, stored = FIELD_CHANGES[name]
    # Metadata given merges into what is stored, so the others give none.
    changed = {**original, "metadata": {}, **change}
    report = services.ingestor.ingest("kb", [doc("a", "Stable text.", **changed)])
    assert report.summary()["metadata_updated"] == 1, name
    assert report.embedded == 0 and report.cached == 0
    assert scalar(services, f"SELECT {name} FROM documents") == stored
    again = services.ingestor.ingest("kb", [doc("a", "Stable text.", **changed)])
    assert again.summary()["unchanged"] == 1


def test_a_title_change_rewrites_the_document(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("a", "Stable text.", title="Old")], create=True)
    report = services.ingestor.ingest("kb", [doc("a", "Stable text.", title="New")])
    assert report.summary()["updated"] == 1
    assert scalar(services, "SELECT title FROM documents") == "New"


def test_acl_defaults_and_is_kept_when_a_reingest_gives_none(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("pub", "Open.")], create=True)
    assert scalar(services, "SELECT acl FROM documents WHERE external_id = 'pub'") == ["*"]
    services.ingestor.ingest(
        "kb", [doc("sec", "Secret.")], defaults=Defaults(acl=["team-a", "alice"])
    )
    services.ingestor.ingest("kb", [doc("sec", "Secret, revised.")])
    assert scalar(services, "SELECT acl FROM documents WHERE external_id = 'sec'") == [
        "alice",
        "team-a",
    ]


def test_record_metadata_wins_over_call_defaults(services: Services) -> None:
    defaults = Defaults(metadata={"source": "crawl", "lang": "en"})
    services.ingestor.ingest(
        "kb", [doc("a", "Text.", metadata={"lang": "de"})], defaults=defaults, create=True
    )
    assert scalar(services, "SELECT metadata FROM documents") == {"source": "crawl", "lang": "de"}


def test_soft_delete_hides_logs_and_reingest_revives(services: Services) -> None:
    services.ingestor.ingest("kb", [doc("a", "Alpha."), doc("b", "Beta.")], create=True)
    with services.engine.begin() as conn:
        cid = scalar(services, "SELECT id FROM collections")
        documents.soft_delete(conn, cid, "a")
    with services.engine.connect() as conn:
        page, counts = documents.list_page(conn, cid, limit=10, offset=0, include_deleted=False)
    assert [r["external_id"] for r in page] == ["b"]
    assert counts == {"live": 1, "deleted": 1}
    assert scalar(services, "SELECT count(*) FROM change_log WHERE op = 'D'") == 1
    report = services.ingestor.ingest("kb", [doc("a", "Alpha.")])
    assert report.summary()["updated"] == 1
    assert scalar(services, "SELECT deleted_at FROM documents WHERE external_id = 'a'") is None


def test_purge_removes_rows(services: Services) -> None:
    services.ingestor.ingest(
        "kb", [doc("a", "Alpha."), doc("b", "Beta."), doc("c", "Gamma.")], create=True
    )
    cid = scalar(services, "SELECT id FROM collections")
    with services.engine.begin() as conn:
        documents.soft_delete(conn, cid, "a")
        documents.purge(conn, cid, "b")
        assert documents.purge_deleted(conn, cid) == 1
    assert [r.external_id for r in rows(services, "SELECT external_id FROM documents")] == ["c"]
    assert scalar(services, "SELECT count(*) FROM chunks") == 1
    assert scalar(services, "SELECT count(*) FROM sections") == 1
    with services.engine.begin() as conn, pytest.raises(NotFound):
        documents.purge(conn, cid, "b")


def test_embedding_cache_serves_repeated_text(services: Services) -> None:
    first = services.ingestor.ingest(
        "kb", [doc("a", "A passage about caching embeddings.", title="t")], create=True
    )
    second = services.ingestor.ingest(
        "kb", [doc("b", "A passage about caching embeddings.", title="t")]
    )
    assert first.embedded == 1
    assert second.embedded == 0 and second.cached == 1
    a, b = (
        scalar(
            services,
            "SELECT embedding::text FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.external_id = :x",
            x=x,
        )
        for x in "ab"
    )
    assert a == b


def test_batches_and_duplicates_within_a_batch(services: Services) -> None:
    docs = [doc(f"d{i}", f"Document number {i} talks about topic {i % 3}.") for i in range(20)]
    docs.append(doc("d3", "The last copy of d3 wins."))
    report = services.ingestor.ingest("kb", docs, create=True, progress=True)
    assert scalar(services, "SELECT count(*) FROM documents") == 20
    assert chunk_texts(services, "d3") in (
        ["The last copy of d3 wins."],
        ["Document number 3 talks about topic 0."],
    )
    assert report.count("created") >= 20


def test_readers_never_see_a_mix_of_versions(services: Services) -> None:
    from app.ingest.chunk import chunk_document

    bodies = {
        "one": "\n\n".join(f"Version one paragraph {i}. " * 30 for i in range(6)),
        "two": "\n\n".join(f"Version two paragraph {i}. " * 30 for i in range(4)),
    }
    sizes = {
        name: len(chunk_document(doc("a", body), services.settings.chunking, services.tokenizer)[1])
        for name, body in bodies.items()
    }
    assert sizes["one"] != sizes["two"]
    services.ingestor.ingest("kb", [doc("a", bodies["one"])], create=True)
    seen: list[tuple[set[str], int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            texts = chunk_texts(services, "a")
            seen.append(({"one" if "one" in t else "two" for t in texts}, len(texts)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for name in ["two", "one"] * 3:
            services.ingestor.ingest("kb", [doc("a", bodies[name])])
    finally:
        stop.set()
        reader.join()
    assert seen, "the reader never ran"
    for versions, count in seen:
        assert len(versions) == 1, f"a read mixed versions: {versions}"
        assert count == sizes[versions.pop()]


def test_database_error_midway_keeps_previous_version(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ingest import store

    services.ingestor.ingest("kb", [doc("a", "Original text."), doc("b", "Other.")], create=True)
    original = store._copy_chunks

    def failing_copy(*args: Any) -> None:
        original(*args)
        raise RuntimeError("connection lost during COPY")

    monkeypatch.setattr(store, "_copy_chunks", failing_copy)
    with pytest.raises(RuntimeError):
        services.ingestor.ingest("kb", [doc("a", "Replacement text."), doc("c", "New doc.")])
    monkeypatch.setattr(store, "_copy_chunks", original)
    assert chunk_texts(services, "a") == ["Original text."]
    assert scalar(services, "SELECT count(*) FROM documents") == 2
    assert scalar(services, "SELECT version FROM documents WHERE external_id = 'a'") == 1
    services.ingestor.ingest("kb", [doc("a", "Replacement text."), doc("c", "New doc.")])
    assert chunk_texts(services, "a") == ["Replacement text."]


def test_provider_down_keeps_previous_version_and_retry_succeeds(services: Services) -> None:
    from dataclasses import replace

    from app.ingest.embed import OpenAIEmbedder
    from tests.openai_server import OpenAIServer

    with OpenAIServer(dimension=384) as server:
        embedding = replace(
            services.settings.embedding,
            provider="openai",
            model="test-embedder",
            openai_base_url=server.base_url,
            max_retries=1,
            timeout_s=2.0,
        )
        ingestor = Ingestor(
            services.engine, services.settings, OpenAIEmbedder(embedding), services.tokenizer
        )
        ingestor.ingest("remote", [doc("a", "First version.")], create=True)
        server.fail(500, 500)
        with pytest.raises(Unavailable):
            ingestor.ingest("remote", [doc("a", "Second version."), doc("b", "Brand new.")])
        assert chunk_texts(services, "a") == ["First version."]
        assert scalar(services, "SELECT count(*) FROM documents") == 1
        ingestor.ingest("remote", [doc("a", "Second version."), doc("b", "Brand new.")])
        assert chunk_texts(services, "a") == ["Second version."]
        assert scalar(services, "SELECT count(*) FROM documents") == 2


def test_collection_of_a_model_this_service_cannot_load_is_refused(services: Services) -> None:
    from app import collections
    from app.errors import Invalid

    with services.engine.begin() as conn:
        collections.create(conn, "other", embedding_model="local//no/such/model", embedding_dim=384)
    with pytest.raises(Invalid, match="cannot load") as refused:
        services.ingestor.ingest("other", [doc("a", "Text.")])
    assert refused.value.field == "collection"


def test_unknown_collection_is_not_found(services: Services) -> None:
    with pytest.raises(NotFound, match="nope"):
        services.ingestor.ingest("nope", [doc("a", "Text.")])


# --- several batches written at once ------------------------------------------------------------


def concurrent_ingestor(services: Services, batch: int, writers: int) -> Ingestor:
    """An ingestor with a fast stand-in model, so that writes, not embeddings, set the pace
    and the writers really overlap."""
    from dataclasses import replace

    from tests.test_search import RandomEmbedder

    ingest = replace(services.settings.ingest, batch_documents=batch, writers=writers)
    settings = replace(services.settings, ingest=ingest)
    return Ingestor(services.engine, settings, RandomEmbedder(), services.tokenizer)


def test_the_concurrent_writer_overlaps_batches_but_never_two_of_one_document(
    services: Services,
) -> None:
    from app.ingest.writers import concurrent_writer

    running: set[str] = set()
    finished: list[int] = []
    lock = threading.Lock()
    # The first two batches share no document: each waits until the other runs too, so the
    # test fails (the barrier breaks) unless they really run at once.
    together = threading.Barrier(2, timeout=30)

    def write(number: int, keys: set[str]) -> Any:
        def run(conn: Any) -> int:
            with lock:
                assert not running & keys, "two batches of one document ran together"
                running.update(keys)
            if number < 2:
                together.wait()
            conn.execute(text("SELECT pg_sleep(0.02)"))
            with lock:
                running.difference_update(keys)
            return number

        return run

    batches = [{"a", "b"}, {"c"}, {"a"}, {"d"}, {"e"}, {"d", "f"}]
    with concurrent_writer(services.engine, 2) as writer:
        for number, keys in enumerate(batches):
            writer.submit(keys, write(number, keys), finished.append)
    assert finished == list(range(len(batches)))  # outcomes in submission order


def test_concurrent_batches_keep_the_bm25_statistics_exact(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ingest import pipeline

    # The first two batches are written at the same time (each waits for the other to start).
    together = threading.Barrier(2, timeout=30)
    started = iter(range(10**6))
    original = pipeline.write_documents

    def write_documents(*args: Any) -> Any:
        if next(started) < 2:
            together.wait()
        return original(*args)

    monkeypatch.setattr(pipeline, "write_documents", write_documents)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    docs = [
        doc(f"d{i}", " ".join(words[(i * j) % len(words)] for j in range(1, 4 + i % 5)) + ".")
        for i in range(120)
    ]
    report = concurrent_ingestor(services, batch=4, writers=3).ingest("kb", docs, create=True)
    assert report.count("created") == 120
    assert [d.external_id for d in report.documents] == [f"d{i}" for i in range(120)]
    corpus = rows(
        services,
        "SELECT s.chunks = (SELECT count(*) FROM chunks) AS chunks_exact, "
        "s.total_length = (SELECT sum(length) FROM chunks) AS length_exact FROM corpus_stats s",
    )
    assert [tuple(r) for r in corpus] == [(True, True)]
    recount = rows(
        services,
        "SELECT l.lexeme, count(*) AS chunks FROM chunks c, "
        "unnest(tsvector_to_array(c.tsv)) AS l(lexeme) GROUP BY 1 "
        "EXCEPT SELECT lexeme, chunks FROM term_stats WHERE chunks > 0",
    )
    assert recount == []
    logged = scalar(services, "SELECT count(DISTINCT chunk_id) FROM change_log WHERE op = 'I'")
    assert logged == scalar(services, "SELECT count(*) FROM chunks")


def test_a_document_repeated_in_later_batches_ends_at_its_last_copy(services: Services) -> None:
    docs = [doc("a", "First copy."), doc("b", "Bee."), doc("a", "Second copy.")]
    docs += [doc("c", "Sea."), doc("a", "Third copy."), doc("d", "Dee.")]
    concurrent_ingestor(services, batch=1, writers=2).ingest("kb", docs, create=True)
    assert chunk_texts(services, "a") == ["Third copy."]
    assert scalar(services, "SELECT version FROM documents WHERE external_id = 'a'") == 3
    assert scalar(services, "SELECT count(*) FROM documents") == 4


def test_a_failing_batch_among_concurrent_ones_leaves_every_batch_whole(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.ingest import store

    original = store._copy_chunks

    def failing_copy(pg: Any, collection_id: int, oid: int, ids: Any, docs: Any) -> None:
        original(pg, collection_id, oid, ids, docs)
        if any(d.external_id == "d13" for d in docs):
            raise RuntimeError("connection lost during COPY")

    monkeypatch.setattr(store, "_copy_chunks", failing_copy)
    docs = [doc(f"d{i}", f"Document {i} about topic {i % 4}.") for i in range(40)]
    ingestor = concurrent_ingestor(services, batch=3, writers=2)
    with pytest.raises(RuntimeError, match="connection lost"):
        ingestor.ingest("kb", docs, create=True)
    stored = rows(
        services,
        "SELECT d.external_id, count(c.id) AS chunks FROM documents d "
        "LEFT JOIN chunks c ON c.document_id = d.id GROUP BY 1",
    )
    written = {r.external_id for r in stored}
    # Batches of three: the failing one (d12-d14) is absent, the four before it are written,
    # and the one after it, in flight when the failure surfaced, is written whole or not at all.
    before, after = {f"d{i}" for i in range(12)}, {"d15", "d16", "d17"}
    assert before <= written and written - before in (set(), after)
    assert all(r.chunks == 1 for r in stored)
    monkeypatch.setattr(store, "_copy_chunks", original)
    ingestor.ingest("kb", docs)
    assert scalar(services, "SELECT count(*) FROM documents") == 40
    assert scalar(services, "SELECT count(*) FROM chunks") == 40
