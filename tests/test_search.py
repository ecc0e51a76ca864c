"""The read path against the real database and model: BM25 against a pure-Python reference,
corpus statistics under every kind of write, query parsing, the vector leg with selective
filters, fusion against a reference RRF, ACL with row-level security, boosts, pagination."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from app import collections, documents
from app.collections import COLLECTION_DEFAULTS
from app.db.queries import load
from app.errors import Invalid, NotFound
from app.ingest.model import SourceDocument
from app.ingest.pipeline import Ingestor
from app.search.engine import Searcher, VectorSource, search, statement, statement_parameters
from app.search.filters import CompiledFilter, compile_filter
from app.search.request import (
    Boosts,
    PopularityBoost,
    RecencyBoost,
    SearchRequest,
    Weights,
    resolve,
)
from app.search.results import SearchResult
from app.service import Services
from app.settings import SearchSettings
from tests.test_ingest import doc, rows, scalar

CORPUS = [
    doc("cats", "Cats are small domestic felines. A cat sleeps most of the day.", title="Cats"),
    doc("dogs", "Dogs are loyal. A dog likes long walks and a dog barks at cats.", title="Dogs"),
    doc(
        "birds", "Birds fly south in winter. Some birds, like penguins, cannot fly.", title="Birds"
    ),
    doc("fish", "Fish live in water and breathe through gills.", title="Fish"),
    doc("pets", "Common pets: cats, dogs, fish and birds. Cats and dogs need care.", title="Pets"),
]


def run(services: Services, collection: str = "kb", **fields: Any) -> SearchResult:
    with services.engine.begin() as conn:
        return search(
            conn,
            collection,
            SearchRequest(**fields),
            Searcher(settings=services.settings.search, embeddings=services.embeddings),
        )


def ids(result: SearchResult) -> list[str]:
    return [h.document_id for h in result.hits]


@pytest.fixture
def corpus(services: Services) -> Services:
    services.ingestor.ingest("kb", CORPUS, create=True)
    return services


# --- BM25 ---------------------------------------------------------------------------------------


def reference_bm25(
    services: Services, query: str, k1: float, b: float, title_weight: float = 1.5
) -> dict[int, float]:
    """BM25 in Python over the lexemes PostgreSQL stored, with query term frequency; a lexeme
    that is also in the title or headings (weight A) gets `title_weight` - 1 more in its term
    frequency, the length counts every occurrence once."""
    tf: dict[int, dict[str, float]] = {}
    lengths: dict[int, int] = Counter()
    for chunk_id, lexeme, positions, weights in rows(
        services, "SELECT c.id, u.lexeme, u.positions, u.weights FROM chunks c, unnest(c.tsv) u"
    ):
        count, in_title = len(positions) or 1, "A" in weights
        tf.setdefault(chunk_id, {})[lexeme] = count + (title_weight - 1) * in_title
        lengths[chunk_id] += count
    query_tf = dict(
        rows(
            services,
            "SELECT lexeme, coalesce(array_length(positions, 1), 1) "
            "FROM unnest(to_tsvector('english_unaccent', :q))",
            q=query,
        )
    )
    n = len(tf)
    avgdl = sum(lengths.values()) / n
    df = Counter(lexeme for v in tf.values() for lexeme in v)
    scores = {}
    for chunk, terms in tf.items():
        score = 0.0
        for lexeme, qtf in query_tf.items():
            if lexeme in terms:
                idf = math.log(1 + (n - df[lexeme] + 0.5) / (df[lexeme] + 0.5))
                t = terms[lexeme]
                score += qtf * idf * t * (k1 + 1) / (t + k1 * (1 - b + b * lengths[chunk] / avgdl))
        if score > 0:
            scores[chunk] = score
    return scores


# The first definition of the BM25 length (migration 0002): a vector's positions, and one for
# a lexeme without any.
POSITIONS_OF = "(SELECT coalesce(sum(coalesce(array_length(positions, 1), 1)), 0) FROM unnest({}))"


@pytest.mark.parametrize(
    "vector",
    [
        "",
        "a",
        "a b c",
        "a:1 b:2,3,4 c:5A,6B,7C",
        "'x,y':1,2 'a,,b' c:3 'it''s':4,5 'back\\\\slash,':6",
        "',':1,2,3 ',,' 'a:1,2':4",
    ],
)
def test_token_count_is_the_number_of_positions(services: Services, vector: str) -> None:
    """The BM25 length counts a vector's positions, and one for a lexeme without any, even
    when lexemes hold commas (the count reads the text form)."""
    [(counted, expected)] = rows(
        services,
        "SELECT tsvector_token_count(CAST(:v AS tsvector)), "
        + POSITIONS_OF.format("CAST(:v AS tsvector)"),
        v=vector,
    )
    assert counted == expected


def test_stored_lengths_count_the_positions_of_parsed_text(services: Services) -> None:
    texts = {
        "p1": "Numbers 1,000 and 3.14, e-mail foo@example.com, URL https://a.example/x,y",
        "p2": "Self-driving co-operation: the the the cats' café, Straße; 'quoted' \\ text",
    }
    services.ingestor.ingest(
        "kb", [doc(k, v, title="A title, with commas") for k, v in texts.items()], create=True
    )
    mismatched = rows(
        services,
        "SELECT c.id FROM chunks c WHERE c.length IS DISTINCT FROM " + POSITIONS_OF.format("c.tsv"),
    )
    assert rows(services, "SELECT count(*) FROM chunks") == [(2,)]
    assert mismatched == []


@pytest.mark.parametrize("query", ["cats", "dog dogs walking", "cats and dogs fly", "penguin fly"])
def test_sql_bm25_agrees_with_the_python_reference(corpus: Services, query: str) -> None:
    result = run(corpus, query=query, mode="keyword", explain=True, k=10)
    expected = reference_bm25(corpus, query, k1=1.2, b=0.75)
    got = {h.chunk_id: h.explain["keyword"]["bm25"] for h in result.hits if h.explain}
    assert got.keys() == expected.keys()
    for chunk, score in expected.items():
        assert got[chunk] == pytest.approx(score, abs=1e-6)
    assert [h.chunk_id for h in result.hits] == sorted(expected, key=lambda c: (-expected[c], c))


def test_bm25_parameters_come_from_the_collection(corpus: Services) -> None:
    with corpus.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE collections SET settings = "
                """'{"bm25_k1": 2.0, "bm25_b": 0.3, "bm25_title_weight": 3.5}'"""
            )
        )
    result = run(corpus, query="cats dogs", mode="keyword", explain=True)
    expected = reference_bm25(corpus, "cats dogs", k1=2.0, b=0.3, title_weight=3.5)
    for h in result.hits:
        assert h.explain is not None
        assert h.explain["keyword"]["bm25"] == pytest.approx(expected[h.chunk_id], abs=1e-6)


def run_with_budget(
    services: Services, budget: int, exact_threshold: int = 0, **fields: Any
) -> SearchResult:
    settings = replace(
        services.settings.search, keyword_budget=budget, exact_threshold=exact_threshold
    )
    with services.engine.begin() as conn:
        return search(conn, "kb", SearchRequest(**fields), Searcher(settings=settings))


def test_keyword_budget_takes_candidates_from_the_rarest_lexemes(corpus: Services) -> None:
    # "fli" is in one chunk, "cat" in three: within a budget of one chunk, only the chunk with
    # "fly" is a candidate; it is still scored with every query lexeme.
    narrow = run_with_budget(corpus, 1, query="cats fly", mode="keyword", explain=True)
    expected = reference_bm25(corpus, "cats fly", k1=1.2, b=0.75)
    assert ids(narrow) == ["birds"]
    hit = narrow.hits[0]
    assert hit.explain is not None
    assert hit.explain["keyword"]["bm25"] == pytest.approx(expected[hit.chunk_id], abs=1e-6)
    wide = run_with_budget(corpus, 4, query="cats fly", mode="keyword")
    assert set(ids(wide)) == {"cats", "dogs", "pets", "birds"}


def test_a_search_that_sees_few_chunks_scores_every_match(corpus: Services) -> None:
    # At most `exact_threshold` visible chunks: no budget, every chunk with a query lexeme.
    few = run_with_budget(corpus, 1, exact_threshold=100, query="cats fly", mode="keyword")
    assert set(ids(few)) == {"cats", "dogs", "pets", "birds"}
    filtered = run_with_budget(
        corpus, 1, exact_threshold=100, query="cats fly", mode="keyword",
        filter={"id": {"in": ["cats", "dogs"]}},
    )  # fmt: skip
    assert set(ids(filtered)) == {"cats", "dogs"}


def test_keyword_budget_falls_back_to_both_rarest_lexemes(services: Services) -> None:
    docs = (
        [doc(f"both{i}", "Alpha and beta.") for i in range(5)]
        + [doc(f"alpha{i}", "Alpha and gamma.") for i in range(3)]
        + [doc(f"beta{i}", "Beta and delta.") for i in range(3)]
    )
    services.ingestor.ingest("kb", docs, create=True)
    # Each lexeme is in 8 chunks, more than four budgets of one: chunks with both are scored.
    narrow = run_with_budget(services, 1, query="alpha beta", mode="keyword", k=20)
    assert sorted(ids(narrow)) == [f"both{i}" for i in range(5)]
    wide = run_with_budget(services, 16, query="alpha beta", mode="keyword", k=20)
    assert len(wide.hits) == 11
    assert ids(wide)[:5] == ids(narrow)


def recomputed_stats(services: Services) -> tuple[list[Any], list[Any]]:
    corpus = rows(
        services,
        "SELECT collection_id, count(*), sum(length) FROM chunks GROUP BY 1 ORDER BY 1",
    )
    terms = rows(
        services,
        "SELECT c.collection_id, l, count(*) FROM chunks c, unnest(tsvector_to_array(c.tsv)) l "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    return corpus, terms


def stored_stats(services: Services) -> tuple[list[Any], list[Any]]:
    corpus = rows(
        services,
        "SELECT collection_id, chunks, total_length FROM corpus_stats WHERE chunks > 0 ORDER BY 1",
    )
    terms = rows(
        services,
        "SELECT collection_id, lexeme, chunks FROM term_stats WHERE chunks > 0 ORDER BY 1, 2",
    )
    return corpus, terms


def test_corpus_statistics_follow_every_write(corpus: Services) -> None:
    assert stored_stats(corpus) == recomputed_stats(corpus)
    corpus.ingestor.ingest("kb", [doc("cats", "Cats purr. Kittens play with yarn.", title="Cats")])
    corpus.ingestor.ingest("other", [doc("x", "Unrelated zebra text.")], create=True)
    assert stored_stats(corpus) == recomputed_stats(corpus)
    with corpus.engine.begin() as conn:
        cid = conn.execute(text("SELECT id FROM collections WHERE name = 'kb'")).scalar_one()
        documents.soft_delete(conn, cid, "dogs")
        documents.purge(conn, cid, "fish")
    assert stored_stats(corpus) == recomputed_stats(corpus)
    with corpus.engine.begin() as conn:
        documents.purge_deleted(conn, cid)
        conn.execute(text("DELETE FROM collections WHERE name = 'other'"))
    assert stored_stats(corpus) == recomputed_stats(corpus)
    assert scalar(corpus, "SELECT count(*) FROM term_stats WHERE chunks < 0") == 0


# --- query text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "cats & | ! dogs",
        "'cats' \"dogs\" (birds",
        "cat:* <-> dog:A",
        "\\ ' '' \\' cats",
        "the and of",
        "кошки и собаки",
        "猫と犬",
        "café naïve",
        "x" * 3000,
    ],
)
def test_query_text_never_breaks_the_keyword_leg(corpus: Services, query: str) -> None:
    result = run(corpus, query=query, mode="keyword")
    assert isinstance(result.hits, list)


def test_stop_word_only_query_finds_nothing_by_keyword_but_answers_in_hybrid(
    corpus: Services,
) -> None:
    assert run(corpus, query="the and of", mode="keyword").hits == []
    assert len(run(corpus, query="the and of", mode="hybrid", k=3).hits) == 3


def test_a_five_thousand_word_query_is_bounded_and_answered(corpus: Services) -> None:
    words = [f"word{i}" for i in range(4990)] + ["cats", "dogs", "fish", "birds", "fly"] * 2
    result = run(corpus, query=" ".join(words), mode="hybrid", k=3)
    assert len(result.hits) == 3


def test_accents_are_folded(corpus: Services) -> None:
    corpus.ingestor.ingest("kb", [doc("cafe", "A small café serves crème brûlée.")])
    assert ids(run(corpus, query="cafe creme brulee", mode="keyword")) == ["cafe"]


# --- vector leg ---------------------------------------------------------------------------------


class RandomEmbedder:
    """Seeded unit vectors: the vector leg under test needs many chunks, not meaning."""

    model_id = "test/random"
    dimension = 384
    runtime = "test"

    def embed(self, texts: Any) -> np.ndarray:
        seeds = [abs(hash(t)) % 2**32 for t in texts]
        vectors = np.stack([np.random.default_rng(s).normal(size=384) for s in seeds])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def many(services: Services) -> Services:
    """2,000 one-chunk documents; 1% are in group `rare`, 1% only readable by `team-x`."""
    docs = [
        SourceDocument(
            external_id=f"d{i}",
            title="",
            blocks=doc("", f"Document number {i}.").blocks,
            metadata={"group": "rare" if i % 100 == 7 else "common"},
            acl=["team-x"] if i % 100 == 3 else None,
        )
        for i in range(2000)
    ]
    ingestor = Ingestor(services.engine, services.settings, RandomEmbedder(), services.tokenizer)
    ingestor.ingest("many", docs, create=True)
    return services


def query_vector(seed: int = 1) -> list[float]:
    v = np.random.default_rng(seed).normal(size=384)
    return list(v / np.linalg.norm(v))


@pytest.mark.parametrize("threshold", [0, 100_000])
def test_a_one_percent_filter_still_returns_k_rows(many: Services, threshold: int) -> None:
    """HNSW with iterative scan (threshold 0) and the exact scan (threshold high) alike."""
    settings = replace(many.settings.search, exact_threshold=threshold)
    request = SearchRequest(
        vector=query_vector(), mode="vector", k=10, filter={"metadata.group": "rare"}
    )
    with many.engine.begin() as conn:
        result = search(conn, "many", request, Searcher(settings=settings))
    assert len(result.hits) == 10
    assert all(h.metadata["group"] == "rare" for h in result.hits)


def test_a_metadata_filter_finds_documents_by_index_and_checks_one_exactly() -> None:
    compiled = compile_filter({"metadata.group": "rare", "or": [{"title": "a"}, {"title": "b"}]})
    # Scans of the documents find them through the metadata index; a document already found
    # is checked by the condition alone, not by listing every document with the value again.
    assert "documents_containing" in compiled.sql
    assert "documents_containing" not in compiled.check_sql
    assert "d.title" in compiled.check_sql and compiled.check_sql.count(":f_") == 3
    assert set(compiled.params) == {"f_0", "f_1", "f_2", "f_3"}
    # A numeric key also indexes arrays, which containment of a nested object would miss.
    positional = compile_filter({"metadata.tags.0": "x"})
    assert "documents_containing" not in positional.sql
    assert positional.sql == positional.check_sql


def test_a_numeric_metadata_key_matches_an_array_element_in_every_leg(corpus: Services) -> None:
    with corpus.engine.begin() as conn:
        conn.execute(text("""UPDATE documents SET metadata = '{"tags": ["pets", "home"]}'
                             WHERE external_id = 'cats'"""))  # fmt: skip
    for threshold in (0, 100_000):  # the budget path (per-row checks) and the direct read
        found = run_with_budget(corpus, 2500, exact_threshold=threshold, query="cats",
                                mode="keyword", filter={"metadata.tags.0": "pets"})  # fmt: skip
        assert ids(found) == ["cats"]


@pytest.mark.parametrize("threshold", [0, 100_000])
def test_a_metadata_filter_ranks_the_same_in_each_leg(many: Services, threshold: int) -> None:
    """The keyword leg checks each candidate's document; the visible set is read once."""
    settings = replace(many.settings.search, exact_threshold=threshold)
    request = SearchRequest(query="document number", mode="hybrid", vector=query_vector(4),
                            k=10, filter={"metadata.group": "rare"}, explain=True)  # fmt: skip
    with many.engine.begin() as conn:
        result = search(conn, "many", request, Searcher(settings=settings))
    assert len(result.hits) == 10
    assert all(h.metadata["group"] == "rare" for h in result.hits)
    assert all(h.explain and h.explain["keyword"] for h in result.hits)


def test_hnsw_and_exact_scan_agree_on_a_small_filtered_set(many: Services) -> None:
    found = []
    for threshold in (0, 100_000):
        settings = replace(many.settings.search, exact_threshold=threshold)
        # A wide search: random 384-dimensional vectors are nearly equidistant, the hardest
        # case for a graph, and 20 of the 2,000 pass the ACL.
        request = SearchRequest(
            vector=query_vector(2), mode="vector", k=5, principals=["team-x"], ef_search=400
        )
        with many.engine.begin() as conn:
            found.append(ids(search(conn, "many", request, Searcher(settings=settings))))
    # HNSW is approximate: its graph (levels drawn at random) may leave a vector unreachable.
    assert len(found[0]) == 5 and len(set(found[0]) & set(found[1])) >= 4


def test_query_vector_is_checked(corpus: Services) -> None:
    with pytest.raises(Invalid, match="expected 384 dimensions, got 3") as wrong:
        run(corpus, vector=[0.1, 0.2, 0.3], mode="vector")
    assert wrong.value.field == "vector"
    with pytest.raises(Invalid, match="finite") as nan:
        run(corpus, vector=[math.nan] * 384, mode="vector")
    assert nan.value.field == "vector[0]"


# --- fusion -------------------------------------------------------------------------------------


def rarity(services: Services, query: str) -> float:
    """The mean idf of the query's lexemes over ln(chunks), from the stored statistics."""
    n = scalar(services, "SELECT chunks FROM corpus_stats")
    found = rows(
        services,
        "SELECT t.chunks FROM unnest(to_tsvector('english_unaccent', :q)) v "
        "JOIN term_stats t ON t.lexeme = v.lexeme WHERE t.chunks > 0",
        q=query,
    )
    idfs = [math.log(1 + (n - r.chunks + 0.5) / (r.chunks + 0.5)) for r in found]
    return sum(idfs) / len(idfs) / math.log(n)


def test_fusion_is_weighted_rrf_of_the_two_legs(corpus: Services) -> None:
    """The keyword leg's weight follows the rarity of the query's words (by the collection's
    default `rarity_weight`, 0.5)."""
    query = "cats and dogs"
    keyword = [h.chunk_id for h in run(corpus, query=query, mode="keyword", k=50).hits]
    vector = [h.chunk_id for h in run(corpus, query=query, mode="vector", k=50).hits]
    adapt = math.exp(COLLECTION_DEFAULTS["rarity_weight"] * (rarity(corpus, query) - 0.6))
    assert adapt != pytest.approx(1.0)
    weights, k = {"keyword": 0.7 * adapt, "vector": 1.3}, COLLECTION_DEFAULTS["rrf_k"]
    expected: Counter[int] = Counter()
    for leg, ranked in (("keyword", keyword), ("vector", vector)):
        for rank, chunk in enumerate(ranked, start=1):
            expected[chunk] += weights[leg] / (k + rank)
    hybrid = run(
        corpus, query=query, k=50, weights=Weights(keyword=0.7, vector=1.3), explain=True
    ).hits
    assert {h.chunk_id: h.score for h in hybrid} == pytest.approx(dict(expected), abs=1e-12)
    assert [h.chunk_id for h in hybrid] == sorted(expected, key=lambda c: (-expected[c], c))


def normalised(scores: dict[int, float], method: str) -> dict[int, float]:
    """A leg's scores on its own scale, as `fusion` puts them (higher is better)."""
    values = list(scores.values())
    if method == "minmax":
        low, high = min(values), max(values)
        return {c: (v - low) / (high - low) if high > low else 1.0 for c, v in scores.items()}
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {c: (v - mean) / spread if spread else 0.0 for c, v in scores.items()}


@pytest.mark.parametrize("method", ["minmax", "zscore"])
def test_score_fusion_weighs_each_legs_normalised_scores(corpus: Services, method: str) -> None:
    query = "cats and dogs"
    keyword = run(corpus, query=query, mode="keyword", k=50, explain=True).hits
    vector = run(corpus, query=query, mode="vector", k=50, explain=True).hits
    legs = {
        # BM25 as it is; a distance the other way round.
        "keyword": normalised({h.chunk_id: h.explain["keyword"]["bm25"] for h in keyword
                               if h.explain}, method),
        "vector": normalised({h.chunk_id: -h.explain["vector"]["distance"] for h in vector
                              if h.explain}, method),
    }  # fmt: skip
    weights = {"keyword": 0.3, "vector": 0.7}
    expected: Counter[int] = Counter()
    for leg, scores in legs.items():
        for chunk in {*legs["keyword"], *legs["vector"]}:
            # A hit the leg did not return counts as its last.
            expected[chunk] += weights[leg] * scores.get(chunk, min(scores.values()))
    assert len(legs["keyword"]) < len(legs["vector"])  # some hits come from one leg only
    hybrid = run(
        corpus, query=query, k=50, weights=Weights(**weights, rarity=0.0), fusion=method,
        explain=True,
    ).hits  # fmt: skip
    assert {h.chunk_id: h.score for h in hybrid} == pytest.approx(dict(expected), abs=1e-9)
    assert [h.chunk_id for h in hybrid] == sorted(expected, key=lambda c: (-expected[c], c))


def test_a_collection_names_its_fusion_and_a_request_overrides_it(corpus: Services) -> None:
    query = "cats and dogs"
    model = corpus.embedder
    with corpus.engine.begin() as conn:
        for name, fusion in (("kb_minmax", "minmax"), ("kb_borda", "borda")):
            try:
                collections.create(
                    conn, name, embedding_model=model.model_id,
                    embedding_dim=model.dimension, settings={"fusion": fusion},
                )  # fmt: skip
            except Invalid as refused:
                assert (fusion, refused.field) == ("borda", "settings.fusion")
    corpus.ingestor.ingest("kb_minmax", CORPUS)
    rrf = run(corpus, query=query, k=20, explain=True).hits
    minmax = run(corpus, "kb_minmax", query=query, k=20).hits
    as_asked = run(corpus, query=query, k=20, fusion="minmax").hits
    assert [(h.document_id, h.score) for h in minmax] == [
        (h.document_id, h.score) for h in as_asked
    ]
    assert max(h.score for h in minmax) <= 2.0  # weights 1 and 1, each leg within [0, 1]
    assert [h.score for h in minmax] != [h.score for h in rrf]
    again = run(corpus, "kb_minmax", query=query, k=20, fusion="rrf").hits
    assert [(h.document_id, h.score) for h in again] == [(h.document_id, h.score) for h in rrf]


def test_per_document_keeps_one_hit_per_document(corpus: Services) -> None:
    long_doc = doc("long", "\n\n".join(f"Cats paragraph {i}. " + "cat " * 150 for i in range(4)))
    corpus.ingestor.ingest("kb", [long_doc])
    chunks = ids(run(corpus, query="cats", mode="hybrid", k=10))
    assert chunks.count("long") > 1
    per_document = ids(run(corpus, query="cats", mode="hybrid", k=10, per_document=True))
    assert len(per_document) == len(set(per_document))
    assert "long" in per_document


# --- ACL and row-level security -----------------------------------------------------------------


@pytest.fixture
def secured(services: Services) -> Services:
    services.ingestor.ingest(
        "kb",
        [
            doc("public", "Quarterly revenue report for everyone."),
            doc("finance", "Quarterly revenue report, confidential.", acl=["group:finance"]),
            doc("alice", "Quarterly revenue notes of Alice.", acl=["user:alice"]),
        ],
        create=True,
    )
    return services


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
def test_principals_see_only_their_documents(secured: Services, mode: str) -> None:
    def visible(principals: list[str] | None) -> set[str]:
        return set(ids(run(secured, query="quarterly revenue", mode=mode, principals=principals)))

    assert visible(None) == {"public"}
    assert visible(["user:bob"]) == {"public"}
    assert visible(["user:alice"]) == {"public", "alice"}
    assert visible(["user:alice", "group:finance"]) == {"public", "alice", "finance"}


@pytest.mark.parametrize(
    "trick",
    [
        {"or": [{"id": "finance"}, {"not": {"id": "finance"}}]},
        {"not": {"id": "nothing"}},
        {"or": [{"metadata.x": {"exists": False}}, {"title": {"contains": ""}}]},
    ],
)
def test_no_filter_widens_the_acl(secured: Services, trick: dict[str, Any]) -> None:
    found = ids(run(secured, query="quarterly revenue", principals=["user:bob"], filter=trick))
    assert set(found) == {"public"}


def test_row_level_security_blocks_a_query_that_forgets_the_acl(secured: Services) -> None:
    with secured.engine.connect() as conn:
        kb = collections.get(conn, "kb")
    forgetful = statement(CompiledFilter(), kb).text.replace(
        "d.acl && CAST(:principals AS text[])", "TRUE"
    )
    assert "acl &&" not in forgetful
    with secured.engine.begin() as conn:
        run_params = _search_params(conn, principals=["user:bob", "*"])
        conn.execute(
            load("search.sql")["prepare"],
            {
                "principals": ["user:bob", "*"],
                "ef_search": "40",
                "max_scan_tuples": "1000",
                "collection_id": run_params["collection_id"],
                "cache_position": None,
                "keyword_position": None,
                "generic_plan_below": 0,
                "text_config": "english",
                "query_text": "",
                "max_terms": 1,
            },
        )
        found = {r["document_id"] for r in conn.execute(text(forgetful), run_params).mappings()}
        visible = conn.execute(text("SELECT count(*) FROM documents")).scalar()
    assert found == {"public"}
    assert visible == 1


def test_reader_role_without_principals_sees_nothing(secured: Services) -> None:
    with secured.engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE hybrid_reader"))
        assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 0


def _search_params(conn: Any, principals: list[str]) -> dict[str, Any]:
    request = SearchRequest(query="quarterly revenue", mode="keyword", principals=principals)
    plan = resolve(request, {}, SearchSettings())
    kb = collections.get(conn, "kb")
    return statement_parameters(kb, plan, None, VectorSource(None), SearchSettings())


def test_deleted_documents_never_appear(corpus: Services) -> None:
    with corpus.engine.begin() as conn:
        cid = conn.execute(text("SELECT id FROM collections")).scalar_one()
        documents.soft_delete(conn, cid, "cats")
    for mode in ("keyword", "vector", "hybrid"):
        assert "cats" not in ids(run(corpus, query="cats", mode=mode, k=10))


# --- boosts -------------------------------------------------------------------------------------


def test_recency_and_popularity_boosts_are_bounded_multipliers(services: Services) -> None:
    now = datetime.now(UTC)
    services.ingestor.ingest(
        "kb",
        [
            doc("old", "Release notes for the product.", published_at=now - timedelta(days=60)),
            doc("new", "Release notes of the product.", published_at=now - timedelta(days=0)),
            doc("undated", "Release notes, product."),
            doc("famous", "Release notes about the product.", popularity=1e9),
        ],
        create=True,
    )
    result = run(
        services,
        query="release notes product",
        explain=True,
        boosts=Boosts(
            recency=RecencyBoost(half_life_days=30, floor=0.2),
            popularity=PopularityBoost(weight=0.5, max=1.5),
        ),
    )
    boosts = {h.document_id: h.explain for h in result.hits if h.explain}
    assert boosts["new"]["recency_boost"] == pytest.approx(1.0, abs=1e-3)
    assert boosts["old"]["recency_boost"] == pytest.approx(0.2 + 0.8 * 0.25, abs=1e-3)
    assert boosts["undated"]["recency_boost"] == pytest.approx(0.2)
    assert boosts["famous"]["popularity_boost"] == pytest.approx(1.5)
    assert boosts["old"]["popularity_boost"] == pytest.approx(1.0)
    for e in boosts.values():
        expected = e["fused_score"] * e["recency_boost"] * e["popularity_boost"]
        assert e["score"] == pytest.approx(expected)


def test_boosts_are_off_unless_asked(corpus: Services) -> None:
    for h in run(corpus, query="cats", explain=True).hits:
        assert h.explain is not None
        assert h.explain["recency_boost"] == h.explain["popularity_boost"] == 1.0


# --- response -----------------------------------------------------------------------------------


def test_highlights_mark_matching_terms_and_escape_html(services: Services) -> None:
    services.ingestor.ingest(
        "kb", [doc("h", "A <b>cat</b> chases Tom & Jerry; cats love mice.")], create=True
    )
    hit = run(services, query="cats", mode="keyword").hits[0]
    assert "<mark>cats</mark>" in hit.highlight
    assert "Tom &amp; Jerry" in hit.highlight
    assert "<b>" not in hit.highlight


def test_pagination_pages_through_the_same_ranking(corpus: Services) -> None:
    full = ids(run(corpus, query="cats dogs fish birds", k=4))
    first = ids(run(corpus, query="cats dogs fish birds", k=2))
    second = ids(run(corpus, query="cats dogs fish birds", k=2, offset=2))
    assert first + second == full


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "x" * 50_001}, "query"),
        ({"query": "cats", "k": 0}, "k"),
        ({"query": "cats", "k": 101}, "k"),
        ({"query": "cats", "offset": -1}, "offset"),
        ({"query": "cats", "offset": 995, "k": 10}, "offset"),
        ({"query": "cats", "mode": "fuzzy"}, "mode"),
        ({"query": "cats", "filter": {"metadata.x": {"like": 1}}}, "filter.metadata.x.like"),
        ({"query": "cats", "filter": {"colour": "red"}}, "filter.colour"),
        ({"query": "cats", "filter": {"published_at": {"gt": 5}}}, "filter.published_at.gt"),
        ({"query": "cats", "weights": Weights(keyword=-1.0)}, "weights.keyword"),
        ({"query": "cats", "fusion": "borda"}, "fusion"),
        ({"query": "cats", "principals": [""]}, "principals[0]"),
        (
            {"query": "cats", "boosts": Boosts(recency=RecencyBoost(half_life_days=0))},
            "boosts.recency.half_life_days",
        ),
    ],
)
def test_bad_requests_name_the_field(corpus: Services, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as error:
        run(corpus, **fields)
    assert error.value.field == field


def test_deeply_nested_filter_is_refused(corpus: Services) -> None:
    nested: dict[str, Any] = {"id": "cats"}
    for _ in range(10):
        nested = {"not": nested}
    with pytest.raises(Invalid, match="at most 8 levels"):
        run(corpus, query="cats", filter=nested)


def test_unknown_collection_is_not_found(services: Services) -> None:
    with pytest.raises(NotFound) as error:
        run(services, "missing", query="cats")
    assert error.value.field == "collection"


def test_missing_principals_are_refused_when_required(corpus: Services) -> None:
    settings = replace(corpus.settings.search, require_principals=True)
    with corpus.engine.begin() as conn, pytest.raises(Invalid) as error:
        search(conn, "kb", SearchRequest(query="cats"), Searcher(settings=settings))
    assert error.value.field == "principals"
