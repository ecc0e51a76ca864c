"""Each collection's HNSW index: a bulk load into a collection without one writes first and
builds it after; later writes go into it row by row; searches use it (checked with EXPLAIN);
the BM25 statistics stay exact; an interrupted build is replaced; deleting drops it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text

from app import collections
from app.db.queries import load
from app.ingest import vector_index
from app.ingest.pipeline import Ingestor
from app.search.engine import VectorSource, statement, statement_parameters
from app.search.request import SearchRequest, resolve
from app.service import Services
from tests.test_ingest import doc, scalar
from tests.test_search import recomputed_stats, stored_stats

# More documents than one batch (HYBRID_INGEST_BATCH is 8 in the tests).
CORPUS = [
    doc(f"d{i}", f"Document {i} is about {topic}. It mentions {topic} twice: {topic}.")
    for i, topic in enumerate(["cats", "dogs", "birds", "fish", "boats", "trains"] * 4)
]


def index_name(services: Services, collection: str) -> str:
    return str(
        scalar(
            services,
            "SELECT vector_index_name(id, vectors_version) FROM collections WHERE name = :n",
            n=collection,
        )
    )


def built(services: Services, collection: str) -> bool:
    with services.engine.connect() as conn:
        return vector_index.is_built(conn, collections.get(conn, collection).id)


def test_bulk_load_writes_without_the_index_and_builds_it_after(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    original = Ingestor._write_batch

    def watching(self: Ingestor, *args: Any) -> Any:
        seen.append(built(services, "kb"))
        return original(self, *args)

    monkeypatch.setattr(Ingestor, "_write_batch", watching)
    services.ingestor.ingest("kb", CORPUS, create=True)
    assert seen == [False, False, False]
    assert built(services, "kb")
    assert stored_stats(services) == recomputed_stats(services)


def test_later_writes_go_into_the_built_index(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS[:4], create=True)
    assert built(services, "kb")
    services.ingestor.ingest("kb", [doc("late", "Submarines dive under the polar ice.")])
    plan, hits = vector_search(services, "kb", "submarine under ice")
    assert index_name(services, "kb") in plan
    assert hits[0] == "late"
    assert stored_stats(services) == recomputed_stats(services)


def test_searches_use_their_collections_indexes(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    services.ingestor.ingest("other", CORPUS[:3], create=True)
    with services.engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))
    plan, hits = vector_search(services, "kb", "cats and boats", "hybrid")
    assert f"Index Scan using {index_name(services, 'kb')} on chunks" in plan
    assert index_name(services, "other") not in plan
    assert len(hits) == 10


def test_an_interrupted_build_is_replaced(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS[:2], create=True)
    name = index_name(services, "kb")
    with services.engine.begin() as conn:
        conn.execute(
            text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(:n)"),
            {"n": name},
        )
    assert not built(services, "kb")
    services.ingestor.ingest("kb", CORPUS[2:4])
    assert built(services, "kb")
    assert scalar(services, "SELECT count(*) FROM chunks") == 4


def test_a_failed_load_leaves_no_index_and_the_next_load_builds_it(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any) -> None:
        raise RuntimeError("embedding provider down")

    services.ingestor.ingest("kb", CORPUS[:8], create=True)
    with services.engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {index_name(services, 'kb')}"))
    with monkeypatch.context() as patched:
        patched.setattr(Ingestor, "_embed", failing)
        with pytest.raises(RuntimeError):
            services.ingestor.ingest("kb", CORPUS[8:])
    assert not built(services, "kb")
    services.ingestor.ingest("kb", CORPUS[8:])
    assert built(services, "kb")


def test_deleting_a_collection_drops_its_index(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS[:2], create=True)
    name = index_name(services, "kb")
    with services.engine.begin() as conn:
        collections.delete(conn, "kb")
    assert scalar(services, "SELECT to_regclass(:n)", n=name) is None


def vector_search(
    services: Services, collection: str, query: str, mode: str = "vector"
) -> tuple[str, list[str]]:
    """EXPLAIN and run one search through the index legs (no exact scan). Sequential scans
    and sorts are switched off, so that the planner orders by distance with the HNSW index
    whenever it can use it, however few rows the table has."""
    settings = replace(services.settings.search, exact_threshold=0)
    request = SearchRequest(query=query, mode=mode, k=10)
    plan = resolve(request, {}, settings)
    vector = services.embeddings(query)
    with services.engine.begin() as conn:
        found = collections.get(conn, collection)
        params = statement_parameters(found, plan, vector, VectorSource("pgvector"), settings)
        conn.execute(
            load("search.sql")["prepare"],
            {
                "principals": plan.principals,
                "ef_search": "40",
                "max_scan_tuples": "1000",
                "collection_id": found.id,
                "cache_position": None,
                "keyword_position": None,
                "generic_plan_below": 0,
                "text_config": "english",
                "query_text": "",
                "max_terms": 1,
            },
        )
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_sort = off"))
        search = statement(plan.filter, found)
        explained = conn.execute(text("EXPLAIN " + search.text), params).scalars()
        hits = [r["document_id"] for r in conn.execute(search, params).mappings()]
    return "\n".join(explained), hits
