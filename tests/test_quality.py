"""Ranking levers against the real database and model: pseudo-relevance feedback (the RM3
expansion against a Python reference over the stored lexemes, Rocchio against the stored
vectors), the adaptive cut (of searches and of an answer's context), a collection's stored
search defaults, and `hybrid tune` (its refusal, its cross-validation, what it stores)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app import collections
from app.answer import generate
from app.errors import Invalid
from app.eval import runner
from app.eval import tune as tuning
from app.search import engine
from app.search.cache import cached_search
from app.search.engine import Searcher, search
from app.search.request import Cut, Expansion, Plan, Prf, PrfPlan, SearchRequest, resolve
from app.search.results import SearchResult
from app.service import Services
from app.settings import SearchSettings
from tests.test_cli import env, hybrid
from tests.test_ingest import doc, rows
from tests.test_search import CORPUS

__all__ = ["env"]
Client = TestClient[Litestar]

# Twenty notes: with the kb corpus, 25 chunks, so that feedback may add lexemes in at most
# two chunks (a tenth), such as "bird" (in "birds" and "pets").
FURNITURE = [f"item{i}" for i in range(20)]
# More chunks than the kb corpus, so that the lexemes feedback may add (in at most a tenth of
# the chunks) are not every lexeme.
ZOO = [
    *CORPUS,
    *(
        doc(f"note{i}", f"Note {i} about {topic}.", title=f"Note {i}")
        for i, topic in enumerate(FURNITURE)
    ),
]


def run(services: Services, **fields: Any) -> SearchResult:
    """A search without the in-process caches (the statement alone; the keyword index's
    agreement with it under feedback is in tests/test_keyword_index.py)."""
    searcher = Searcher(settings=services.settings.search, embeddings=services.embeddings)
    with services.engine.begin() as conn:
        return search(conn, "kb", SearchRequest(**fields), searcher)


@pytest.fixture
def zoo(services: Services) -> Services:
    services.ingestor.ingest("kb", ZOO, create=True)
    return services


# --- pseudo-relevance feedback --------------------------------------------------------------


def reference_expansion(
    services: Services, query: str, chunk_ids: list[int], terms: int, expansion: float
) -> dict[str, float]:
    """RM3 in Python over the stored tsvectors: each chunk's term frequencies over its length,
    averaged; the `terms` most probable lexemes in at most a tenth of the chunks share
    `expansion` of the query's weight, the query's own lexemes keep the rest."""
    stored = rows(
        services,
        "SELECT c.id, c.length, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf "
        "FROM chunks c, unnest(c.tsv) u WHERE c.id = ANY(:ids)",
        ids=chunk_ids,
    )
    p: dict[str, float] = defaultdict(float)
    for r in stored:
        p[r.lexeme] += r.tf / max(r.length, 1) / len(chunk_ids)
    df = dict(rows(services, "SELECT lexeme, chunks FROM term_stats WHERE chunks > 0"))
    n = sum(1 for _ in rows(services, "SELECT id FROM chunks"))
    allowed = sorted((t for t in p if 0 < df.get(t, 0) <= 0.1 * n), key=lambda t: (-p[t], t))
    chosen = allowed[:terms]
    typed = rows(
        services,
        "SELECT lexeme, coalesce(array_length(positions, 1), 1) AS qtf "
        "FROM unnest(to_tsvector('english_unaccent', :q))",
        q=query,
    )
    q = sum(r.qtf for r in typed)
    weights: dict[str, float] = defaultdict(float)
    for r in typed:
        weights[r.lexeme] += (1 - expansion) * r.qtf
    for t in chosen:
        weights[t] += expansion * q * p[t] / sum(p[c] for c in chosen)
    return {t: w for t, w in weights.items() if w > 0}


def test_rm3_expansion_equals_the_reference(zoo: Services) -> None:
    first = run(zoo, query="penguins fly", mode="keyword", k=3)
    chunk_ids = [h.chunk_id for h in first.hits]
    assert chunk_ids
    with zoo.engine.begin() as conn:
        collection = collections.get(conn, "kb")
        plan = replace(_plan("penguins fly", mode="keyword"), prf=PrfPlan(3, 4, 0.4, 0.0))
        learnt = engine._learn(conn, collection, plan, chunk_ids)
    found = dict(zip(learnt["lexemes"], learnt["qtf"], strict=True))
    expected = reference_expansion(zoo, "penguins fly", chunk_ids, 4, 0.4)
    assert found.keys() == expected.keys()
    for lexeme, weight in expected.items():
        assert found[lexeme] == pytest.approx(weight)
    # The query's own lexemes are kept; four more were added.
    assert {"penguin", "fli"} <= found.keys() and len(found) >= 4


def _plan(query: str, **fields: Any) -> Plan:
    return resolve(SearchRequest(query=query, **fields), {}, SearchSettings())


def test_keyword_feedback_finds_documents_without_the_query_terms(zoo: Services) -> None:
    """The word "penguins" is in one document; its other words (birds, fly, south, winter)
    bring the others about birds."""
    plain = run(zoo, query="penguins", mode="keyword", k=10)
    assert [h.document_id for h in plain.hits] == ["birds"]
    expanded = run(zoo, query="penguins", mode="keyword", k=10, prf=Prf(1, 10, 0.5, 0.0))
    found = [h.document_id for h in expanded.hits]
    assert found[0] == "birds" and "pets" in found


def test_keyword_feedback_scores_are_bm25_of_the_expanded_query(zoo: Services) -> None:
    """The second pass ranks by BM25 with the expanded query's weights: the same statement
    given those lexemes and weights directly scores the same."""
    asked = run(zoo, query="penguins", mode="keyword", k=10, prf=Prf(1, 10, 0.5, 0.0))
    first = run(zoo, query="penguins", mode="keyword", k=1)
    with zoo.engine.begin() as conn:
        collection = collections.get(conn, "kb")
        plan = replace(_plan("penguins", mode="keyword"), prf=PrfPlan(1, 10, 0.5, 0.0))
        learnt = engine._learn(conn, collection, plan, [first.hits[0].chunk_id])
    expansion = Expansion(tuple(learnt["lexemes"]), tuple(learnt["qtf"]))
    direct_plan = replace(_plan("penguins", mode="keyword", k=10), expansion=expansion)
    with zoo.engine.begin() as conn:
        searcher = Searcher(settings=zoo.settings.search, embeddings=zoo.embeddings)
        direct = engine._search(conn, collections.get(conn, "kb"), direct_plan, searcher)
    assert [(h.document_id, round(h.score, 9)) for h in asked.hits] == [
        (h.document_id, round(h.score, 9)) for h in direct.hits
    ]


def test_rocchio_moves_the_query_vector_toward_the_first_hits(zoo: Services) -> None:
    step = 0.8
    first = run(zoo, query="animals that live in water", mode="vector", k=2)
    moved = run(
        zoo, query="animals that live in water", mode="vector", k=5, explain=True,
        prf=Prf(2, 0, 0.0, step),
    )  # fmt: skip
    stored = dict(
        (r.id, np.asarray(json.loads(r.v), dtype=np.float64))
        for r in rows(zoo, "SELECT id, CAST(embedding AS text) AS v FROM chunks")
    )
    query = np.asarray(zoo.embeddings("animals that live in water"), dtype=np.float64)
    centroid = np.mean([stored[h.chunk_id] for h in first.hits], axis=0)
    vector = query + step * centroid
    vector /= np.linalg.norm(vector)
    for hit in moved.hits:
        assert hit.explain is not None
        chunk = stored[hit.chunk_id]
        cosine = 1 - chunk @ vector / np.linalg.norm(chunk)
        assert hit.explain["vector"]["distance"] == pytest.approx(cosine, abs=1e-5)


def test_feedback_off_is_the_plain_search(zoo: Services) -> None:
    plain = run(zoo, query="cats and dogs", k=5)
    for off in (Prf(0), Prf(3, 10, 0.0, 0.0), Prf(3, 0, 0.5, 0.0)):
        again = run(zoo, query="cats and dogs", k=5, prf=off)
        assert [h.chunk_id for h in again.hits] == [h.chunk_id for h in plain.hits]
        assert [h.score for h in again.hits] == [h.score for h in plain.hits]


def test_feedback_reads_only_what_the_caller_may_see(services: Services) -> None:
    """The first pass is the caller's own search: a document it may not see never lends its
    words to the expansion."""
    services.ingestor.ingest(
        "kb",
        [
            doc("open", "Penguins live near the sea.", acl=["*"]),
            doc("secret", "Penguins and the zebra codeword.", acl=["staff"]),
            *(doc(f"n{i}", f"Unrelated note number {i}.") for i in range(20)),
        ],
        create=True,
    )
    seen = run(
        services, query="penguins", mode="keyword", k=10, principals=["public-user"],
        prf=Prf(5, 10, 0.9, 0.0),
    )  # fmt: skip
    assert [h.document_id for h in seen.hits] == ["open"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prf": {"documents": -1}}, "prf.documents"),
        ({"prf": {"documents": 3, "keyword": 1.5}}, "prf.keyword"),
        ({"prf": {"documents": 3, "vector": -0.1}}, "prf.vector"),
        ({"prf": {"documents": 101}}, "prf.documents"),
        ({"cut": {"relative": 2}}, "cut.relative"),
        ({"cut": {"gap": -1}}, "cut.gap"),
        ({"cut": {"min_hits": 0}}, "cut.min_hits"),
        ({"cut": {"relative": 0.5}, "offset": 10}, "cut"),
    ],
)
def test_bad_feedback_and_cut_are_400s_naming_the_field(
    client: Client,
    services: Services,
    body: dict[str, Any],
    field: str,  # type: ignore[type-arg]
) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    response = client.post("/v1/search", json={"collection": "kb", "query": "cats", **body})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


# --- adaptive cut -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cut", "scores", "kept"),
    [
        (Cut(relative=0.5), [1.0, 0.6, 0.5, 0.49, 0.9], 3),
        (Cut(gap=0.3), [1.0, 0.8, 0.6, 0.3, 0.29], 3),
        (Cut(min_score=0.5), [1.0, 0.6, 0.4], 2),
        (Cut(relative=0.9, min_hits=2), [1.0, 0.1, 0.05], 2),
        (Cut(relative=0.9), [], 0),
        (Cut(), [1.0, 0.1], 2),
    ],
)
def test_a_cut_keeps_hits_until_the_scores_drop(cut: Cut, scores: list[float], kept: int) -> None:
    assert cut.kept(scores) == kept


def test_a_cut_search_keeps_the_strong_hits_and_says_how_many_there_were(
    client: Client,
    services: Services,  # type: ignore[type-arg]
) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    body = {"collection": "kb", "query": "cats", "mode": "keyword", "k": 5}
    whole = client.post("/v1/search", json=body).json()
    cut = client.post("/v1/search", json={**body, "cut": {"relative": 0.9}}).json()
    scores = [h["score"] for h in whole["hits"]]
    expected = sum(1 for s in scores if s >= 0.9 * scores[0])
    assert len(cut["hits"]) == expected < len(whole["hits"])
    assert cut["uncut"] == len(whole["hits"]) and whole.get("uncut") is None
    assert [h["chunk_id"] for h in cut["hits"]] == [h["chunk_id"] for h in whole["hits"]][:expected]


def test_an_answer_context_is_cut_by_the_answer_setting(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    readers = services.answer_readers()
    request = SearchRequest(query="cats", mode="keyword", k=5)
    with services.transaction() as conn:
        whole = generate.prepare(conn, "kb", request, readers)
    strict = replace(readers, answer=replace(readers.answer, cut_relative=0.99))
    with services.transaction() as conn:
        cut = generate.prepare(conn, "kb", request, strict)
    assert len(whole.passages) > 1
    assert [p.document_id for p in cut.passages] == [whole.passages[0].document_id]


# --- stored defaults --------------------------------------------------------------------------


def test_stored_defaults_are_checked_and_a_null_removes_one(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    with services.transaction() as conn:
        stored = collections.update_settings(conn, "kb", {"rrf_k": 30, "fusion": "minmax"})
        assert stored["rrf_k"] == 30 and stored["fusion"] == "minmax"
        assert collections.update_settings(conn, "kb", {"rrf_k": None}) == {"fusion": "minmax"}
        with pytest.raises(Invalid, match="prf_keyword"):
            collections.update_settings(conn, "kb", {"prf_keyword": 2})


def test_changed_defaults_retire_cached_results(services: Services) -> None:
    services.ingestor.ingest("kb", CORPUS, create=True)
    request = SearchRequest(query="cats and dogs", k=5)

    def once() -> str:
        with services.transaction() as conn:
            found = cached_search(conn, "kb", request, services.searcher(), services.search_cache)
            return found.origin

    assert once() == "computed" and once() == "cached"
    with services.transaction() as conn:
        collections.update_settings(conn, "kb", {"keyword_weight": 0.1})
    assert once() == "computed"


# --- hybrid tune ------------------------------------------------------------------------------


def test_tune_refuses_too_few_judged_queries(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "cats"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tcats\t1\n")
    found = hybrid(env, "tune", "-c", "kb", "--qrels", str(tmp_path))
    assert found.failed_with("1 judged queries, too few", "--min-queries")


@pytest.fixture
def sampled(services: Services) -> Services:
    dataset = runner.read_dataset(runner.SAMPLE_SET)
    runner.ingest(services, dataset, "tuned", progress=False)
    return services


def test_tune_cross_validates_and_reports_without_storing(sampled: Services) -> None:
    report = tuning.tune(sampled, "tuned", runner.SAMPLE_SET, folds=4, store=False)
    assert report.queries == 28 and len(report.fold_choices) == 4
    assert not report.stored and report.current == {}
    # The current defaults' score is what `hybrid eval` measures in hybrid mode.
    evaluated = runner.evaluate(sampled, runner.SAMPLE_SET, modes=["hybrid"], k=100)
    assert report.metrics["ndcg@10"]["current"] == pytest.approx(evaluated.modes[0].ndcg_10)
    # Chosen on every query, the best candidate scores at least the held-out estimate.
    assert (
        report.metrics["ndcg@10"]["tuned (all queries)"]
        >= report.metrics["ndcg@10"]["tuned (held out)"]
    )
    with sampled.engine.connect() as conn:
        assert collections.get(conn, "tuned").settings == {}


def test_tune_stores_defaults_that_beat_bad_ones_on_held_out_queries(sampled: Services) -> None:
    """With feedback that replaces the query by its first ten hits' words and vectors, the
    held-out gain of any sensible setting is clear, and it is stored."""
    with sampled.transaction() as conn:
        collections.update_settings(
            conn, "tuned",
            {"prf_documents": 10, "prf_terms": 100, "prf_keyword": 1.0, "prf_vector": 10},
        )  # fmt: skip
    report = tuning.tune(sampled, "tuned", runner.SAMPLE_SET, folds=4)
    assert report.gain > 0 and report.confidence >= tuning.CONFIDENCE, report.reason
    assert report.stored
    with sampled.engine.connect() as conn:
        stored = collections.get(conn, "tuned").settings
    assert stored == {**report.chosen.settings}
    after = tuning.tune(sampled, "tuned", runner.SAMPLE_SET, folds=4, store=False)
    assert after.metrics["ndcg@10"]["current"] == pytest.approx(
        report.metrics["ndcg@10"]["tuned (all queries)"]
    )
