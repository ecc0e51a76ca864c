"""The in-process keyword index: its top-k is the exhaustive BM25 top-k (against brute force,
and chunk by chunk against the SQL leg on a real test collection), searches with it return
what searches without it return, and it never serves a deleted, forbidden or stale chunk."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from app import collections
from app.ann.candidates import PassRates
from app.eval.runner import collection_name, ingest, read_dataset
from app.lexical import index as index_module
from app.lexical.cache import KeywordCache
from app.lexical.index import Chunk, KeywordIndex, Scoring
from app.search import engine
from app.search.engine import Searcher
from app.search.request import Plan, Prf, SearchRequest, resolve
from app.service import Services
from tests.test_api import Client
from tests.test_api import ingest as ingest_documents

# The bundled sample set, and the ADI test collection when the shared data sit beside the
# repository (as in CI).
SETS = [
    path
    for path in (
        Path(__file__).resolve().parents[1] / "app" / "eval" / "datasets" / "samples",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "adi",
    )
    if path.exists()
]
UNBOUNDED = 10**12

# Per chunk id: its length and, per term, its frequency and whether it is in the title.
Chunks = dict[int, tuple[int, dict[str, tuple[int, bool]]]]


def brute_force(chunks: Chunks, scoring: Scoring) -> dict[int, float]:
    """BM25 of every chunk with a query term, as the SQL leg defines it."""
    scores: dict[int, float] = {}
    weights = dict(zip(scoring.lexemes, scoring.weights, strict=True))
    for chunk_id, (length, terms) in chunks.items():
        total = 0.0
        for lexeme, (tf, title) in terms.items():
            if lexeme in weights:
                f = tf + (scoring.title_weight - 1) * title
                norm = scoring.k1 * (1 - scoring.b + scoring.b * length / scoring.avgdl)
                total += weights[lexeme] * f * (scoring.k1 + 1) / (f + norm)
        if total:
            scores[chunk_id] = total
    return scores


def random_chunk(rng: random.Random, words: list[str]) -> tuple[int, dict[str, tuple[int, bool]]]:
    terms = {
        w: (rng.randint(1, 5), rng.random() < 0.2) for w in rng.sample(words, rng.randint(1, 12))
    }
    return sum(tf for tf, _ in terms.values()), terms


def as_rows(chunks: Chunks) -> list[Chunk]:
    """Each chunk in a document of its own, whose id is the chunk's plus one million."""
    return [
        (c, c + 10**6, n, [(w, t, a) for w, (t, a) in terms.items()])
        for c, (n, terms) in chunks.items()
    ]


def check_top(
    index: KeywordIndex,
    chunks: Chunks,
    rng: random.Random,
    words: list[str],
    avgdl: tuple[float, float] = (20.0, 20.0),
) -> None:
    for _ in range(30):
        lexemes = rng.sample(words, rng.randint(1, 6))
        weights = [rng.uniform(0.1, 3) for _ in lexemes]
        scoring = Scoring(lexemes, weights, avgdl=rng.uniform(*avgdl),
                          title_weight=rng.choice([1.0, 1.5]))  # fmt: skip
        expected = brute_force(chunks, scoring)
        k = rng.randint(1, 40)
        # Open, then restricted to the documents of a few chunks or of half of them (the index
        # scores the chosen chunks alone, or reads the postings and skips the others).
        allowed = rng.sample(sorted(chunks), rng.choice([3, 25, len(chunks) // 2]))
        for documents in (None, np.array(sorted(c + 10**6 for c in allowed))):
            top = index.top(scoring, k, documents)
            chosen = set(allowed) if documents is not None else set(chunks)
            best = sorted(
                ((c, score) for c, score in expected.items() if c in chosen),
                key=lambda item: (-item[1], item[0]),
            )
            if index.impacts is None:
                assert top.partial == (len(best) > k)
            else:  # a pruned search may not know that chunks it did not read matched nothing
                assert top.partial or len(best) <= k
            # The same chunks, but for ties (equal scores summed in another order may differ
            # in their last bit, which can swap two tied chunks).
            found = top.ids.tolist()[:k]
            assert len(found) == len(best[:k]) and len(set(found)) == len(found)
            assert set(found) <= chosen
            np.testing.assert_allclose(
                [expected[c] for c in found], [score for _, score in best[:k]], rtol=1e-12
            )
            assert (top.documents == top.ids + 10**6).all()
            np.testing.assert_allclose(top.scores[:k], [s for _, s in best[:k]], rtol=1e-12)


def test_top_k_is_the_brute_force_top_k_through_inserts_deletes_and_compaction() -> None:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(60)]
    chunks = {chunk_id: random_chunk(rng, words) for chunk_id in range(1, 400)}
    index = KeywordIndex.build(as_rows(chunks))
    check_top(index, chunks, rng, words)
    for step in range(4):
        gone = rng.sample(sorted(chunks), 40)
        added = {1000 * (step + 1) + i: random_chunk(rng, [*words, "new"]) for i in range(50)}
        before = index
        index = index.apply(as_rows(added), [*gone, 999_999])
        for chunk_id in gone:
            del chunks[chunk_id]
        chunks.update(added)
        check_top(index, chunks, rng, [*words, "new"])
        assert before.size == len(chunks) - 50 + 40  # the index it came from is unchanged
    compacted = index.compacted()
    assert compacted.dead == 0 and compacted.delta_rows == 0 and compacted.size == len(chunks)
    check_top(compacted, chunks, rng, [*words, "new"])


def test_the_pruned_top_k_is_the_brute_force_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long terms read a prefix at a time in impact order: the same top-k, whatever the
    search's average length against the ordering's, through inserts, deletes and compaction."""
    monkeypatch.setattr(index_module, "LONG_TERM", 30)
    monkeypatch.setattr(index_module, "PRUNE_FROM", 0)
    rng = random.Random(11)
    # Zipfian word choice, so that a few terms are in most chunks and many in a few.
    words = [f"w{i}" for i in range(80)]
    weights = [1 / (i + 1) for i in range(len(words))]

    def zipf_chunk() -> tuple[int, dict[str, tuple[int, bool]]]:
        drawn = set(rng.choices(words, weights, k=rng.randint(1, 14)))
        terms = {w: (rng.randint(1, 6), rng.random() < 0.2) for w in drawn}
        return sum(tf for tf, _ in terms.values()), terms

    chunks = {chunk_id: zipf_chunk() for chunk_id in range(1, 600)}
    index = KeywordIndex.build(as_rows(chunks)).ordered(1.2, 0.75, 1.5)
    assert index.impacts is not None and len(index.impacts.most) >= 5
    check_top(index, chunks, rng, words, avgdl=(3.0, 60.0))
    for step in range(3):
        gone = rng.sample(sorted(chunks), 60)
        added = {1000 * (step + 1) + i: zipf_chunk() for i in range(40)}
        index = index.apply(as_rows(added), gone)
        for chunk_id in gone:
            del chunks[chunk_id]
        chunks.update(added)
        assert index.impacts is not None
        check_top(index, chunks, rng, words, avgdl=(3.0, 60.0))
    compacted = index.compacted()
    assert compacted.impacts is not None and compacted.delta_rows == 0
    check_top(compacted, chunks, rng, words, avgdl=(3.0, 60.0))


def test_the_pruned_top_k_keeps_every_chunk_tied_with_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of chunks with the same score: all of them come back, as without pruning
    (the walk's buffer of candidates grows past its first size)."""
    monkeypatch.setattr(index_module, "LONG_TERM", 30)
    monkeypatch.setattr(index_module, "PRUNE_FROM", 0)
    chunks = {c: (3, {"tie": (1, False), "rare": (1, False)}) for c in range(1, 3001)}
    chunks |= {c: (3, {"tie": (2, False), "other": (1, False)}) for c in range(5001, 5004)}
    index = KeywordIndex.build(as_rows(chunks)).ordered(1.2, 0.75, 1.0)
    scoring = Scoring(["tie", "other"], [1.0, 0.1], avgdl=3.0)
    top = index.top(scoring, 5)
    assert top.ids.tolist()[:3] == [5001, 5002, 5003]
    assert top.ids.tolist()[3:] == list(range(1, 3001)) and top.partial
    unpruned = replace(index, impacts=None).top(scoring, 5)
    assert top.ids.tolist() == unpruned.ids.tolist()


def test_an_empty_index_and_unknown_terms_find_nothing() -> None:
    index = KeywordIndex.build([])
    top = index.top(Scoring(["owl"], [1.0], avgdl=1.0), 10)
    assert (top.ids.tolist(), top.scores.tolist(), top.partial) == ([], [], False)


@pytest.fixture(params=SETS, ids=lambda path: path.name)
def judged_set(
    services: Services, request: pytest.FixtureRequest
) -> Iterator[tuple[str, dict[str, str]]]:
    dataset = read_dataset(request.param)
    name = collection_name(dataset.name)
    ingest(services, dataset, name, progress=False)
    yield name, dataset.queries


def keyword_cache(services: Services, name: str) -> KeywordCache:
    cache = KeywordCache(services.engine)
    with services.engine.connect() as conn:
        collection = collections.get(conn, name)
    entry = cache.ensure(collection.id)
    assert entry is not None and entry.current is not None
    return cache


def run(services: Services, name: str, request: SearchRequest, searcher: Searcher):
    with services.engine.begin() as conn:
        return engine.search(conn, name, request, searcher)


def test_scores_equal_the_sql_leg_chunk_by_chunk(
    services: Services, judged_set: tuple[str, dict[str, str]]
) -> None:
    name, queries = judged_set
    cache = keyword_cache(services, name)
    exhaustive = Searcher(replace(services.settings.search, keyword_budget=UNBOUNDED))
    with services.engine.connect() as conn:
        collection = collections.get(conn, name)
    index = cache.current(collection.id, collection.created_at)
    assert index is not None
    compared = 0
    for query in queries.values():
        request = SearchRequest(query=query, mode="keyword", k=100, candidates=1000, explain=True,
                                highlight=False)  # fmt: skip
        hits = run(services, name, request, exhaustive).hits
        with services.engine.begin() as conn:
            terms = engine.prepare(conn, collection, plan_of(request, collection, services),
                                   services.settings.search, None, index[1])  # fmt: skip
        scoring = Scoring(terms["keyword_lexemes"], terms["keyword_weights"],
                          avgdl=terms["avgdl"], title_weight=1.5)  # fmt: skip
        top = index[0].top(scoring, UNBOUNDED)
        ids = top.ids.tolist()
        by_index = dict(zip(ids, top.scores.tolist(), strict=True))
        assert len(by_index) >= len(hits)
        for hit in hits:
            assert hit.explain is not None
            assert by_index[hit.chunk_id] == pytest.approx(hit.explain["keyword"]["bm25"], rel=1e-9)
            compared += 1
        assert ids[: len(hits)] == [hit.chunk_id for hit in hits]
    assert compared > 100


def plan_of(request: SearchRequest, collection: collections.Collection, services: Services) -> Plan:
    return resolve(request, collection.settings, services.settings.search)


def test_searches_with_the_index_return_what_searches_without_it_return(
    services: Services, judged_set: tuple[str, dict[str, str]]
) -> None:
    name, queries = judged_set
    cache = keyword_cache(services, name)
    without = replace(services.searcher(rerank=False), keywords=None)
    with_index = replace(without, keywords=cache)
    # With pseudo-relevance feedback too: the expanded query's weights reach both legs alike.
    requests = [
        SearchRequest(query=q, mode=mode, k=10, per_document=per_document, highlight=False, prf=prf)
        for q in queries.values()
        for mode, per_document in (("keyword", False), ("hybrid", True))
        for prf in (None, Prf(3, 10, 0.3, 0.1))
    ]
    for request in requests:
        expected = run(services, name, request, without)
        found = run(services, name, request, with_index)
        assert found.keyword_backend == "index" and expected.keyword_backend == "sql"
        assert [h.chunk_id for h in found.hits] == [h.chunk_id for h in expected.hits]
        assert [h.score for h in found.hits] == pytest.approx([h.score for h in expected.hits])


def test_selective_searches_score_the_visible_documents_alone(
    services: Services, judged_set: tuple[str, dict[str, str]]
) -> None:
    """A filter few candidates pass: the index is handed the documents the search may see
    (here every restricted search, as if each restriction had been seen to pass rarely) and
    scores their chunks alone; the hits are those of the SQL leg."""
    name, queries = judged_set
    cache = keyword_cache(services, name)
    cache.pass_rates = PassRates(0)
    without = replace(services.searcher(rerank=False), keywords=None)
    with_index = replace(without, keywords=cache)
    with services.engine.connect() as conn:
        collection = collections.get(conn, name)
        ids = (
            conn.execute(
                text("SELECT external_id FROM documents WHERE collection_id = :c ORDER BY id"),
                {"c": collection.id},
            )
            .scalars()
            .all()
        )
    chosen = {"id": {"in": ids[::3]}}
    for query in queries.values():
        for mode in ("keyword", "hybrid"):
            request = SearchRequest(query=query, mode=mode, k=10, filter=chosen, highlight=False)
            expected = run(services, name, request, without)
            found = run(services, name, request, with_index)
            assert found.keyword_backend == "index" and expected.keyword_backend == "sql"
            assert [h.chunk_id for h in found.hits] == [h.chunk_id for h in expected.hits]
            assert {h.document_id for h in found.hits} <= set(ids[::3])
    # More visible documents than the index is handed: the SQL leg runs.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "VISIBLE_DOCUMENTS", 2)
        request = SearchRequest(query=next(iter(queries.values())), mode="keyword", filter=chosen)
        assert run(services, name, request, with_index).keyword_backend == "sql"


def search(client: Client, **body: object) -> dict:
    response = client.post("/v1/search", json={"collection": "kb", "mode": "keyword", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_index_never_serves_a_deleted_forbidden_or_stale_chunk(
    client: Client, services: Services
) -> None:
    assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
    ingest_documents(
        client,
        {"id": "owls", "title": "Owls", "text": "Owls hunt mice at night."},
        {"id": "lab", "text": "Owls in the secret lab hunt robots.", "acl": ["alice"]},
        *({"id": f"d{i}", "text": f"Barn owls number {i} nest in barns."} for i in range(30)),
    )
    cache = services.open_keyword_cache()
    with services.engine.connect() as conn:
        collection = collections.get(conn, "kb")
    cache.ensure(collection.id)
    cache.catch_up(collection.id)
    found = search(client, query="owls hunt")
    assert found["keyword_backend"] == "index"
    assert "lab" not in [h["document_id"] for h in found["hits"]]  # forbidden
    assert "lab" in [h["document_id"] for h in search(client, query="owls hunt",
                                                     principals=["alice"])["hits"]]  # fmt: skip
    # A write the index has not applied yet: the statement says it is stale, the SQL leg runs.
    (entry,) = [e for e in cache.entries() if e.collection_id == collection.id]
    applied = entry.applied
    with cache_paused(cache):
        ingest_documents(client, {"id": "late", "text": "Owls hunt late at night, hunt hunt."})
        stale = search(client, query="owls hunt")
        assert stale["keyword_backend"] == "sql"
        assert stale["hits"][0]["document_id"] == "late"
        assert client.delete("/v1/collections/kb/documents/owls").status_code == 204
        assert "owls" not in [h["document_id"] for h in search(client, query="owls hunt")["hits"]]
    # The stale searches asked the index to catch up, in the background.
    deadline = time.monotonic() + 10
    while entry.applied == applied and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry.applied > applied
    services.search_cache.clear()  # the same search was computed (and stored) without it
    fresh = search(client, query="owls hunt")
    assert fresh["keyword_backend"] == "index"
    ids = [h["document_id"] for h in fresh["hits"]]
    assert ids[0] == "late" and "owls" not in ids
    status = client.get("/v1/admin/index/keyword")
    assert status.status_code == 200, status.text
    (row,) = [r for r in status.json() if r["collection"] == "kb"]
    assert (row["status"], row["chunks"]) == ("ready", 32)  # 33 documents, one deleted
    # A filter that leaves the index's candidates short: the SQL leg finds the rest.
    filtered = search(client, query="owls", filter={"id": "d7"}, k=5)
    assert [h["document_id"] for h in filtered["hits"]] == ["d7"]
    # A restriction none of whose candidates passed: the next search with it hands the index
    # the documents it may see (none here: "lab" is not shared with this caller).
    nothing = search(client, query="owls", filter={"id": "lab"})
    assert nothing["hits"] == [] and nothing["keyword_backend"] == "index"
    again = search(client, query="barn owls", filter={"id": "lab"})
    assert again["hits"] == [] and again["keyword_backend"] == "index"
    assert "keyword_index" in again["timings_ms"]
    # The same for a caller who may see it: its chunk alone is scored, and found.
    theirs = search(client, query="barn owls", filter={"id": "lab"}, principals=["alice"])
    assert [h["document_id"] for h in theirs["hits"]] == ["lab"]
    assert (
        search(client, query="barn owls", filter={"id": "lab"}, principals=["alice"])[
            "keyword_backend"
        ]
        == "index"
    )  # another restriction


class cache_paused:
    """Holds every entry's lock: the follower cannot apply changes meanwhile."""

    def __init__(self, cache: KeywordCache) -> None:
        self.entries = cache.entries()

    def __enter__(self) -> None:
        for entry in self.entries:
            entry.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for entry in self.entries:
            entry.lock.release()
