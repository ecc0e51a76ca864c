"""The search result cache and single flight: a repeated search is served from the cache, no
cached result crosses principals or survives a write to its collection (ingest, delete, ACL or
metadata update), and identical concurrent searches run one computation."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, text

from app.db.queries import query as statement
from app.search.cache import (
    CHANGE_LOG_LOCK_CLASS,
    CachedSearch,
    SearchCache,
    SingleFlight,
    _settled,
    cached_search,
)
from app.search.engine import QueryEmbeddings, Searcher
from app.search.request import SearchRequest
from app.service import Services
from tests.test_api import Client, ingest

SEARCH = "/v1/search"


@pytest.fixture
def kb(client: Client, services: Services) -> Iterator[Client]:
    services.search_cache.clear()
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    response = ingest(
        client,
        {"id": "owls", "title": "Owls", "text": "Owls hunt mice at night.", "metadata": {"n": 1}},
        {"id": "lab", "text": "Owls in the secret lab hunt robots.", "acl": ["alice"]},
    )
    assert response.status_code == 201, response.text
    yield client
    services.search_cache.clear()


def search(client: Client, **body: Any) -> tuple[list[str], str]:
    response = client.post(SEARCH, json={"collection": "kb", "query": "owls hunt", **body})
    assert response.status_code == 200, response.text
    result = response.json()
    return [h["document_id"] for h in result["hits"]], result["cache"]


def test_repeated_search_is_served_from_the_cache(kb: Client) -> None:
    first, origin = search(kb)
    assert origin == "computed"
    again, origin = search(kb)
    assert (again, origin) == (first, "cached")
    assert search(kb, k=1) == (first[:1], "computed")  # k is part of the key


def test_cached_results_never_cross_principals(kb: Client) -> None:
    assert "lab" in search(kb, principals=["alice"])[0]
    assert search(kb, principals=["alice"])[1] == "cached"
    for principals in (["bob"], None, ["Alice"]):
        hits, origin = search(kb, principals=principals)
        assert "lab" not in hits
        assert origin == "computed"


def test_ingest_retires_cached_results(kb: Client) -> None:
    before, _ = search(kb)
    assert search(kb)[1] == "cached"
    ingest(kb, {"id": "barn", "title": "Barn owls", "text": "Barn owls hunt voles."})
    after, origin = search(kb)
    assert origin == "computed"
    assert "barn" in after and "barn" not in before


def test_delete_retires_cached_results(kb: Client) -> None:
    assert "owls" in search(kb)[0]
    assert search(kb)[1] == "cached"
    assert kb.delete("/v1/collections/kb/documents/owls").status_code == 204
    hits, origin = search(kb)
    assert origin == "computed"
    assert "owls" not in hits


def test_acl_update_retires_cached_results(kb: Client) -> None:
    assert "lab" not in search(kb, principals=["bob"])[0]
    assert search(kb, principals=["bob"])[1] == "cached"
    patched = kb.patch("/v1/collections/kb/documents/lab", json={"acl": ["alice", "bob"]})
    assert patched.status_code == 200, patched.text
    assert "lab" in search(kb, principals=["bob"])[0]
    kb.patch("/v1/collections/kb/documents/lab", json={"acl": ["alice"]})
    assert "lab" not in search(kb, principals=["bob"])[0]


def test_metadata_update_retires_cached_results(kb: Client) -> None:
    assert search(kb, filter={"metadata.n": 2}) == ([], "computed")
    assert search(kb, filter={"metadata.n": 2}) == ([], "cached")
    kb.patch("/v1/collections/kb/documents/owls", json={"metadata": {"n": 2}})
    assert search(kb, filter={"metadata.n": 2}) == (["owls"], "computed")


def log_a_change(conn: Connection, collection: str = "kb") -> None:
    """Append a change-log row as every writer of the collection does (uncommitted)."""
    conn.execute(
        text(
            "INSERT INTO change_log (collection_id, chunk_id, op) "
            "SELECT id, 0, 'U' FROM collections WHERE name = :name"
        ),
        {"name": collection},
    )


def test_results_are_not_stored_while_a_write_is_in_flight(kb: Client, services: Services) -> None:
    # A transaction writing the log may still commit a lower position than one already read.
    with services.engine.connect() as writer:
        log_a_change(writer)
        search(kb)
        assert search(kb)[1] == "computed"
        writer.rollback()
    search(kb)
    assert search(kb)[1] == "cached"


def test_writes_elsewhere_do_not_hold_results_back(kb: Client, services: Services) -> None:
    assert kb.post("/v1/collections", json={"name": "elsewhere"}).status_code == 201
    with services.engine.connect() as writer:
        writer.execute(text("SELECT pg_current_xact_id()"))  # any write: the query log's too
        log_a_change(writer, "elsewhere")
        search(kb)
        assert search(kb)[1] == "cached"
        writer.rollback()


def test_a_write_committed_during_the_search_unsettles_it(kb: Client, services: Services) -> None:
    # The writer was in flight when the position was read and ended before the search did.
    with services.engine.connect() as reader:
        row = reader.execute(statement("cache.sql", "collection_position"), {"name": "kb"})
        position = row.mappings().one()
        reader.commit()
        assert _settled(reader, position)
        with services.engine.begin() as writer:
            log_a_change(writer)
        assert not _settled(reader, position)


def test_recreated_collection_does_not_see_old_results(kb: Client) -> None:
    assert search(kb)[0]
    assert kb.delete("/v1/collections/kb").status_code == 204
    assert kb.post("/v1/collections", json={"name": "kb"}).status_code == 201
    assert search(kb) == ([], "computed")


def test_cache_can_be_turned_off(services: Services) -> None:
    from app.settings import CacheSettings

    cache = SearchCache(CacheSettings(results=0))
    assert not cache.enabled


def test_concurrent_searches_of_other_principals_never_share_a_result(
    kb: Client, services: Services
) -> None:
    request = SearchRequest(query="owls in the lab hunting")
    callers, start = 12, threading.Barrier(12)
    seen: dict[str, list[list[str]]] = {"alice": [], "bob": []}

    def call(principal: str) -> None:
        with services.engine.begin() as conn:
            start.wait()
            outcome = cached_search(
                conn,
                "kb",
                replace(request, principals=[principal]),
                Searcher(settings=services.settings.search, embeddings=services.embeddings),
                cache=services.search_cache,
            )
        seen[principal].append([h.document_id for h in outcome.result.hits])

    threads = [
        threading.Thread(target=call, args=("alice" if i % 2 else "bob",)) for i in range(callers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("lab" in hits for hits in seen["alice"]) and len(seen["alice"]) == 6
    assert all("lab" not in hits for hits in seen["bob"]) and len(seen["bob"]) == 6


# --- query embeddings ------------------------------------------------------------------------


class Counting:
    """An embedder that counts the texts it embeds."""

    model_id = "counting"
    dimension = 3
    runtime = "test"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Any:
        self.texts.extend(texts)
        return np.ones((len(texts), 3), dtype=np.float32)


def test_query_embeddings_are_a_bounded_lru() -> None:
    embedder = Counting()
    embeddings = QueryEmbeddings(embedder, size=2)
    for query in ("a", "b", "a", "c", "a", "b"):
        assert embeddings(query) == [1.0, 1.0, 1.0]
    # "a" was used again before "c" came, so "b" was the one evicted, then "c" for "b".
    assert embedder.texts == ["a", "b", "c", "b"]
    assert len(embeddings._cache) == 2


# --- single flight ---------------------------------------------------------------------------


def test_single_flight_runs_one_computation_for_concurrent_callers() -> None:
    flights: SingleFlight[int] = SingleFlight()
    callers, start = 20, threading.Barrier(20)
    outcomes: list[tuple[int, bool]] = []

    def compute() -> int:
        time.sleep(0.2)  # long enough for every caller to arrive
        return 42

    def call() -> None:
        start.wait()
        outcomes.append(flights.run("key", compute))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert flights.computations == 1
    assert sorted(outcomes) == [(42, False)] + [(42, True)] * (callers - 1)


def test_single_flight_shares_errors_and_then_forgets_them() -> None:
    flights: SingleFlight[int] = SingleFlight()

    def boom() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        flights.run("key", boom)
    assert flights.run("key", lambda: 1) == (1, False)


def test_concurrent_identical_searches_run_once(kb: Client, services: Services) -> None:
    cache = services.search_cache
    before = cache.flights.computations
    callers, start = 10, threading.Barrier(10)
    origins: list[str] = []
    request = SearchRequest(query="owls hunting at night", principals=["alice"])

    def call() -> None:
        with services.engine.begin() as conn:
            start.wait()
            outcome: CachedSearch = cached_search(
                conn,
                "kb",
                request,
                Searcher(settings=services.settings.search, embeddings=services.embeddings),
                cache=cache,
            )
        origins.append(outcome.origin)
        assert "lab" in [h.document_id for h in outcome.result.hits]

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.flights.computations - before == 1
    assert origins.count("computed") == 1
    assert len(origins) == callers


def test_the_log_writers_lock_is_the_one_the_cache_looks_for(services: Services) -> None:
    with services.engine.connect() as conn:
        body = conn.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'change_log_writer'"))
        taken = re.search(r"pg_advisory_xact_lock_shared\(\s*(\d+),", body.scalar_one())
        assert taken and int(taken[1]) == CHANGE_LOG_LOCK_CLASS
