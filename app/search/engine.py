"""Running a search: validate → embed the query (cached) → (backend `faiss` or `auto`) the
in-process vector cache's candidate ids → the one SQL statement → hits → (in `hybrid+rerank`)
the cross-encoder over the top fused hits.

The statement in `sql/search.sql` does both legs, fusion, filters, ACL and boosts. Before it,
in the same transaction, `prepare` switches to the reader role that row-level security applies
to, sets the caller's principals for that policy and the HNSW parameters, all `SET LOCAL`, and
says whether the vector cache has applied every change this transaction can see.
"""

from __future__ import annotations

import html
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, RowMapping, TextClause, text

from app import collections
from app.ann.cache import VectorCache
from app.ann.candidates import Candidates, PassRates
from app.collections import Collection
from app.db.queries import load
from app.errors import ConfigError, Conflict, Invalid, Unavailable
from app.ingest.embed import Embedder, Embedders
from app.lexical.cache import KeywordCache
from app.lexical.index import KeywordIndex, Scoring
from app.observe.tracing import span
from app.search.filters import CompiledFilter
from app.search.request import NO_PRF, NO_RERANKER, Expansion, Plan, SearchRequest, resolve
from app.search.rerank import Reranking, rerank
from app.search.results import Hit, SearchResult
from app.settings import SearchSettings

# Where sql/search.sql wants the visibility rule, the filter, and a checked document's id.
VISIBLE_MARK = "/* visible */ TRUE"
VISIBLE_DOCUMENT = re.compile(r"/\* visible document \*/ \(([\w.]+)\)")
FILTER_MARK = "/* filter */ TRUE"
DOCUMENT_MARK = "/* document */ NULL"
EMBEDDING_MARK = "/* embedding */ c.embedding"
MARK_START, MARK_END = "\ue000", "\ue001"
HEADLINE_OPTIONS = (
    f"StartSel={MARK_START}, StopSel={MARK_END}, MaxWords=40, MinWords=15, "
    'ShortWord=3, MaxFragments=2, FragmentDelimiter=" … "'
)
SNIPPET_WORDS = 40
# Per-document collapsing reads this many more chunks per leg, as documents have chunks.
PER_DOCUMENT_FETCH = 3
# A selective restricted search hands the keyword index the documents it may see when they
# are at most this many (read as one array; 25,000 ids cost about 5 ms).
VISIBLE_DOCUMENTS = 50_000
# Feedback never adds a lexeme found in more than this share of the collection's chunks.
PRF_MAX_SHARE = 0.1
QUERY_TERMS_MARK = (
    "/* query terms */ (SELECT CAST(NULL AS text) AS lexeme, CAST(NULL AS float8) AS qtf)"
)


class QueryEmbeddings:
    """A bounded LRU of query vectors, so repeated queries skip the model. Queries are
    embedded by `embedder`, or for a collection of another model by its embedder from
    `embedders` (without them, such a collection is searched with a given vector only)."""

    def __init__(
        self, embedder: Embedder, size: int = 1024, embedders: Embedders | None = None
    ) -> None:
        self.embedder = embedder
        self.embedders = embedders
        self.size = size
        self._cache: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, query: str, embedder: Embedder | None = None) -> list[float]:
        embedder = embedder or self.embedder
        key = (embedder.model_id, embedder.dimension, query)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        vector: list[float] = embedder.embed([query])[0].tolist()
        with self._lock:
            self._cache[key] = vector
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return vector


@dataclass(frozen=True)
class Searcher:
    """What a search runs with: the service's search settings, the query embeddings (None: the
    request brings its vector), the cross-encoder (None: `hybrid+rerank` is refused) and the
    in-process vector cache (None: pgvector or an exact scan) and keyword index (None: the
    keyword leg reads the GIN index)."""

    settings: SearchSettings
    embeddings: QueryEmbeddings | None = None
    reranking: Reranking | None = None
    vectors: VectorCache | None = None
    keywords: KeywordCache | None = None


def search(
    conn: Connection, collection_name: str, request: SearchRequest, searcher: Searcher
) -> SearchResult:
    """Run one search inside the caller's transaction (which it leaves in the reader role)."""
    settings, reranking = searcher.settings, searcher.reranking
    collection = collections.get(conn, collection_name)
    plan = resolve(
        request, collection.settings, settings, reranking.policy if reranking else NO_RERANKER
    )
    if plan.prf.active:
        return _with_prf(conn, collection, plan, searcher)
    return _search(conn, collection, plan, searcher)


def _search(
    conn: Connection, collection: Collection, plan: Plan, searcher: Searcher
) -> SearchResult:
    """One pass of the search: embed, the vector cache, the keyword index, the statement, the
    cross-encoder."""
    settings, embeddings = searcher.settings, searcher.embeddings
    reranking, vectors = searcher.reranking, searcher.vectors
    started = time.perf_counter()
    with span("search.embed"):
        vector = _query_vector(plan, collection, embeddings)
    embedded = time.perf_counter()
    with span("search.faiss"):
        source = _vector_source(plan, collection, vector, vectors, settings)
    sourced = time.perf_counter()
    keywords = _keyword_index(plan, collection, searcher.keywords)
    with span("search.sql", mode=plan.mode):
        executed = _execute(
            conn, collection, plan, vector, source, (searcher.keywords, keywords), settings
        )
    rows, source, fresh = executed.rows, executed.source, executed.fresh
    if source.candidates is not None and source.restriction is not None and vectors:
        _observe(vectors, source, rows)
    done = time.perf_counter()
    hits, report = [_hit(row, plan) for row in rows], None
    uncut = len(hits) if plan.cut else None
    if plan.cut:
        hits = hits[: plan.cut.kept([h.score for h in hits])]
    if plan.rerank_depth and reranking and reranking.reranker:
        with span("search.rerank", depth=plan.rerank_depth):
            hits, report = rerank(reranking.reranker, plan, hits)
    return SearchResult(
        collection=collection.name,
        mode=plan.mode,
        hits=hits,
        embed_ms=(embedded - started) * 1000,
        sql_ms=(done - sourced) * 1000,
        faiss_ms=(sourced - embedded) * 1000 if source.candidates is not None else 0.0,
        rerank=report,
        vector_backend=source.backend,
        fresh=fresh,
        keyword_backend=_keyword_backend(plan, rows, executed.keywords),
        keyword_index_ms=executed.keyword_ms,
        uncut=uncut,
    )


def _with_prf(
    conn: Connection, collection: Collection, plan: Plan, searcher: Searcher
) -> SearchResult:
    """Pseudo-relevance feedback: a first pass (no rerank, no highlights) takes its best
    `prf.documents` hits as relevant; the keyword leg's query is expanded with their most
    probable lexemes (RM3, in `prf` of sql/search.sql) and the query vector moves toward
    their mean vector (Rocchio: q + β·mean, normalised); the second pass is the search asked
    for, with both. A first pass without hits is the answer (nothing matched)."""
    prf = plan.prf
    first = replace(
        plan, k=prf.documents, offset=0, rerank_depth=0, explain=False, highlight=False,
        prf=NO_PRF, cut=None,
    )  # fmt: skip
    found = _search(conn, collection, first, searcher)
    if not found.hits:
        return found
    started = time.perf_counter()
    with span("search.prf", documents=prf.documents):
        learnt = _learn(conn, collection, plan, [h.chunk_id for h in found.hits])
    learnt_ms = (time.perf_counter() - started) * 1000
    vector = plan.vector
    if plan.uses_vector and prf.vector > 0 and learnt["centroid"] is not None:
        query = np.asarray(_query_vector(plan, collection, searcher.embeddings), dtype=np.float64)
        moved = query + prf.vector * np.asarray(learnt["centroid"], dtype=np.float64)
        vector = (moved / (np.linalg.norm(moved) or 1.0)).tolist()
    expansion = None
    if plan.uses_keyword and prf.terms > 0 and prf.keyword > 0 and learnt["lexemes"]:
        expansion = Expansion(tuple(learnt["lexemes"]), tuple(map(float, learnt["qtf"])))
    result = _search(conn, collection, replace(plan, vector=vector, expansion=expansion), searcher)
    return replace(
        result,
        embed_ms=result.embed_ms + found.embed_ms,
        sql_ms=result.sql_ms + found.sql_ms + learnt_ms,
        faiss_ms=result.faiss_ms + found.faiss_ms,
    )


def _learn(
    conn: Connection, collection: Collection, plan: Plan, chunk_ids: list[int]
) -> RowMapping:
    """The expanded keyword query and the mean vector of `chunk_ids` (sql/search.sql
    `prf`)."""
    return (
        conn.execute(
            _prf_statement(collection.vector_sql("c")),
            {
                "collection_id": collection.id,
                "chunk_ids": array_literal(chunk_ids),
                "text_config": collection.text_config,
                "query_text": plan.query,
                "terms": plan.prf.terms if plan.uses_keyword else 0,
                "expansion": plan.prf.keyword if plan.uses_keyword else 0.0,
                "max_share": PRF_MAX_SHARE,
            },
        )
        .mappings()
        .one()
    )


@lru_cache(maxsize=16)
def _prf_statement(vectors: str) -> TextClause:
    return text(load("search.sql")["prf"].text.replace(EMBEDDING_MARK, vectors))


@dataclass(frozen=True)
class KeywordCandidates:
    """Chunks from the keyword index, best first (ids, documents, BM25 scores), and whether
    more chunks match."""

    ids: list[int]
    documents: list[int]
    scores: list[float]
    partial: bool
    # Scored among the documents the search may see only (no share of them to learn).
    visible_only: bool = False


@dataclass(frozen=True)
class VectorSource:
    """How the vector leg finds its candidates: the backend, and the cache's ids if any."""

    backend: str | None
    candidates: Candidates | None = None
    restriction: Any = None
    needed: int = 0


def _vector_source(
    plan: Plan,
    collection: Collection,
    vector: list[float] | None,
    vectors: VectorCache | None,
    settings: SearchSettings,
) -> VectorSource:
    if not plan.uses_vector or vector is None:
        return VectorSource(None)
    backend = plan.vector_backend
    if backend in ("pgvector", "exact"):
        return VectorSource(backend)
    restriction = _restriction(plan, collection)
    needed = plan.candidates * (PER_DOCUMENT_FETCH if plan.per_document else 1)
    candidates = (
        vectors.candidates(
            collection.id,
            collection.created_at,
            vector,
            needed,
            restriction,
            exact_below=settings.exact_threshold,
            ef_search=plan.requested_ef_search,
            version=collection.vectors_version,
        )
        if vectors is not None
        else None
    )
    if candidates is not None:
        return VectorSource("faiss", candidates, restriction, needed)
    if backend == "faiss":
        state = "this process keeps no vector cache" if vectors is None else "it is loading"
        raise Unavailable(
            f"vector_backend: the FAISS cache of collection {collection.name!r} cannot serve "
            f"({state}); ask for vector_backend auto or pgvector",
            field="vector_backend",
        )
    return VectorSource("pgvector")


def _keyword_index(
    plan: Plan, collection: Collection, keywords: KeywordCache | None
) -> tuple[KeywordIndex, str] | None:
    """The collection's in-process keyword index and its position, when the keyword leg runs
    and one is built."""
    if not plan.uses_keyword or keywords is None:
        return None
    return keywords.current(collection.id, collection.created_at)


def _restriction(plan: Plan, collection: Collection) -> Any:
    """What a restricted search's share of visible candidates depends on (None: open)."""
    if not plan.restricted:
        return None
    return (collection.id, tuple(plan.principals), plan.filter.sql, _canonical(plan.filter.params))


def _keyword_candidates(
    conn: Connection,
    collection: Collection,
    prepared: RowMapping,
    plan: Plan,
    index: KeywordIndex,
    rates: PassRates,
    restriction: Any,
) -> KeywordCandidates | None:
    """The chunks with the highest BM25 scores by the index (with the query's terms and
    statistics `prepare` read), for the statement to check: as many as the leg keeps for an
    open search; for a restricted one, that many over the share of candidates earlier searches
    with the same restriction saw pass, times 1.2. When that would be more than the index hands
    out, the restriction is selective: the index is given the documents the search may see,
    when they are at most `VISIBLE_DOCUMENTS` (by that share of the index's documents, then by
    count), and scores their chunks alone; otherwise the SQL leg runs. When too few candidates
    pass, the statement runs the SQL leg too."""
    needed = plan.candidates * (PER_DOCUMENT_FETCH if plan.per_document else 1)
    asked, documents = needed, None
    if restriction is not None:
        asked = max(needed, math.ceil(needed / rates.rate(restriction) * 1.2))
        if asked > rates.max_candidates:
            # Not asked when the share seen to pass says the documents are too many.
            if rates.rate(restriction) * index.document_count > VISIBLE_DOCUMENTS:
                return None
            documents = _visible_documents(conn, collection, plan)
            if documents is None:
                return None
            asked = needed
    scoring = Scoring(
        lexemes=prepared["keyword_lexemes"],
        weights=prepared["keyword_weights"],
        avgdl=float(prepared["avgdl"] or 1.0),
        k1=plan.k1,
        b=plan.b,
        title_weight=plan.title_weight,
    )
    top = index.top(scoring, asked, documents)
    return KeywordCandidates(
        top.ids.tolist(),
        top.documents.tolist(),
        top.scores.tolist(),
        top.partial,
        visible_only=documents is not None,
    )


def _visible_documents(
    conn: Connection, collection: Collection, plan: Plan
) -> npt.NDArray[np.int64] | None:
    """The ids of the documents the search may see, sorted, or None when there are more than
    `VISIBLE_DOCUMENTS`."""
    params = {
        **plan.filter.params,
        "collection_id": collection.id,
        "principals": plan.principals,
        "max_documents": VISIBLE_DOCUMENTS,
    }
    ids = conn.execute(_visible_ids(plan.filter.sql), params).scalar_one()
    if len(ids) > VISIBLE_DOCUMENTS:
        return None
    return np.sort(np.asarray(ids, dtype=np.int64))


@lru_cache(maxsize=256)
def _visible_ids(filter_sql: str) -> TextClause:
    """sql/search.sql's `visible_ids` with the visibility rule and this filter written out."""
    sql = load("search.sql")
    rule = _expression(sql["visible"]).replace(FILTER_MARK, f"({filter_sql})")
    return text(sql["visible_ids"].text.replace(VISIBLE_MARK, f"({rule})"))


def _observe_keywords(
    rates: PassRates, restriction: Any, indexed: KeywordCandidates, rows: list[Any]
) -> None:
    """Tell the keyword index what share of a restricted search's candidates passed (of those
    read: the leg stops once it has enough)."""
    if not indexed.ids:
        return
    passed = rows[0]["keyword_visible"] if rows else 0
    examined = (rows[0]["keyword_examined"] if rows else None) or len(indexed.ids)
    rates.observe(restriction, examined, passed)


def _observe(vectors: VectorCache, source: VectorSource, rows: list[Any]) -> None:
    """Tell the cache what share of its candidates passed: the leg stops reading them once it
    has enough, so the share is of those read up to the last one kept."""
    assert source.candidates is not None
    if not source.candidates.ids:
        return  # nothing was asked: the statement scanned the few visible chunks exactly
    passed = rows[0]["cached_visible"] if rows else 0
    examined = (rows[0]["cached_examined"] if rows else None) or len(source.candidates.ids)
    if passed < source.needed:
        examined = len(source.candidates.ids)
    vectors.observe(source.restriction, examined, passed)


def _canonical(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


def _query_vector(
    plan: Plan, collection: Collection, embeddings: QueryEmbeddings | None
) -> list[float] | None:
    if not plan.uses_vector:
        return None
    if plan.vector is not None:
        return _checked_vector(plan.vector, collection.embedding_dim)
    if embeddings is None:
        raise Invalid("vector: this caller cannot embed queries; give a vector", field="vector")
    embedder = embeddings.embedder
    model = (collection.embedding_model, collection.embedding_dim)
    if model != (embedder.model_id, embedder.dimension):
        if embeddings.embedders is None:
            raise Conflict(
                f"collection {collection.name!r} holds {collection.embedding_model} vectors but "
                f"the service embeds with {embedder.model_id}; "
                "use mode keyword or give a vector",
                field="mode",
            )
        try:
            embedder = embeddings.embedders.get(*model)
        except ConfigError as exc:
            raise Conflict(
                f"collection {collection.name!r} holds {collection.embedding_model} vectors, "
                f"which this service cannot load ({exc.message}); use mode keyword or give a "
                "vector",
                field="mode",
            ) from exc
    return embeddings(plan.query, embedder)


def _checked_vector(vector: list[float], dimension: int) -> list[float]:
    if len(vector) != dimension:
        raise Invalid(f"vector: expected {dimension} dimensions, got {len(vector)}", field="vector")
    for i, x in enumerate(vector):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise Invalid(f"vector[{i}]: expected a finite number, got {x!r}", field=f"vector[{i}]")
    return [float(x) for x in vector]


@dataclass(frozen=True)
class Executed:
    """The statement's rows, the vector source it used and whether that was fresh for the
    transaction, and the keyword index's candidates (None: not used) and their cost."""

    rows: list[Any]
    source: VectorSource
    fresh: bool
    keywords: KeywordCandidates | None
    keyword_ms: float


def _execute(
    conn: Connection,
    collection: Collection,
    plan: Plan,
    vector: list[float] | None,
    source: VectorSource,
    keyword_source: tuple[KeywordCache | None, tuple[KeywordIndex, str] | None],
    settings: SearchSettings,
) -> Executed:
    """Run the statement.

    Backend `auto` uses the vector cache only when it has applied every change this
    transaction can see (so a search always finds what was written before it); `faiss` uses
    it regardless and says whether it was fresh. The keyword index is used only when fresh."""
    cached = source.candidates
    searcher_keywords, keywords = keyword_source
    prepared = prepare(
        conn, collection, plan, settings,
        cached.position if cached else None, keywords[1] if keywords else None,
    )  # fmt: skip
    fresh = prepared["cache_fresh"] is not False
    if not fresh and plan.vector_backend == "auto":
        source, fresh = VectorSource("pgvector"), True
    indexed, started = None, time.perf_counter()
    restriction = _restriction(plan, collection)
    if keywords is not None and not prepared["keyword_fresh"] and searcher_keywords is not None:
        searcher_keywords.behind(collection.id)
    if keywords is not None and prepared["keyword_fresh"] and searcher_keywords is not None:
        with span("search.keyword_index"):
            rates = searcher_keywords.pass_rates
            indexed = _keyword_candidates(
                conn, collection, prepared, plan, keywords[0], rates, restriction
            )
    keyword_ms = (time.perf_counter() - started) * 1000 if indexed else 0.0
    params = statement_parameters(collection, plan, vector, source, settings, indexed)
    rows = list(conn.execute(statement(plan.filter, collection), params).mappings())
    # A restricted search's candidates teach their pass rate, unless they were chosen among
    # the visible documents alone (all pass).
    if indexed and not indexed.visible_only and restriction is not None and searcher_keywords:
        _observe_keywords(searcher_keywords.pass_rates, restriction, indexed, rows)
    return Executed(rows, source, fresh, indexed, keyword_ms)


def _keyword_backend(plan: Plan, rows: list[Any], indexed: KeywordCandidates | None) -> str | None:
    """`index` when the keyword index gave the leg its candidates, `sql` when the statement
    found them itself; None without a keyword leg."""
    if not plan.uses_keyword:
        return None
    if indexed is not None and (not rows or rows[0]["keyword_indexed"]):
        return "index"
    return "sql"


def prepare(
    conn: Connection,
    collection: Collection,
    plan: Plan,
    settings: SearchSettings,
    cache_position: str | None,
    keyword_position: str | None = None,
) -> RowMapping:
    """Set the search's transaction up (reader role and principals, no parallel workers, the
    HNSW search parameters); `cache_fresh` says whether a vector cache at `cache_position`
    has applied every change the transaction can see (None without one), `keyword_fresh` the
    same of a keyword index at `keyword_position`, which is given what it scores with
    (`keyword_lexemes`, `keyword_weights`, `avgdl`)."""
    return (
        conn.execute(
            _prepare_statement(),
            {
                **_query_terms(plan),
                "principals": plan.principals,
                "ef_search": str(plan.ef_search),
                "max_scan_tuples": str(settings.max_scan_tuples),
                "collection_id": collection.id,
                "cache_position": cache_position,
                "keyword_position": keyword_position,
                "generic_plan_below": settings.generic_plan_below,
                "text_config": collection.text_config,
                "query_text": plan.query,
                "max_terms": settings.max_terms,
            },
        )
        .mappings()
        .one()
    )


def statement(compiled: CompiledFilter, collection: Collection) -> TextClause:
    """The search statement with a compiled filter predicate in each leg, reading the
    collection's vectors."""
    return _statement(compiled.sql, compiled.check_sql, collection.vector_sql("c"), collection.id)


@lru_cache(maxsize=1)
def _prepare_statement() -> TextClause:
    """sql/search.sql's `prepare` with the query's terms written in."""
    sql = load("search.sql")
    return text(sql["prepare"].text.replace(QUERY_TERMS_MARK, _expression(sql["query_terms"])))


def _query_terms(plan: Plan) -> dict[str, Any]:
    """The expanded query's lexemes and weights after feedback (None: the query text's)."""
    expansion = plan.expansion
    return {
        "query_lexemes": list(expansion.lexemes) if expansion else None,
        "query_qtf": array_literal(expansion.qtf) if expansion else None,
    }


@lru_cache(maxsize=256)
def _statement(filter_sql: str, check_sql: str, vectors: str, collection_id: int) -> TextClause:
    """sql/search.sql's statement with its one visibility rule written out (with the filter
    in scans of the documents, with the filter's check form where one document is checked),
    the collection's vectors where it reads them, and its id as a constant: a plan made once
    for any values (small collections, see `prepare`) still knows which collection's HNSW
    index (a partial index on that id) it may use."""
    sql = load("search.sql")
    rule = _expression(sql["visible"])
    in_scan = rule.replace(FILTER_MARK, f"({filter_sql})")
    in_check = _expression(sql["visible_document"]).replace(
        VISIBLE_MARK, f"({rule.replace(FILTER_MARK, f'({check_sql})')})"
    )
    source = sql["search"].text.replace(VISIBLE_MARK, f"({in_scan})")
    source = source.replace(QUERY_TERMS_MARK, _expression(sql["query_terms"]))
    source = source.replace(EMBEDDING_MARK, vectors)
    source = VISIBLE_DOCUMENT.sub(lambda found: in_check.replace(DOCUMENT_MARK, found[1]), source)
    source = source.replace(":collection_id", f"CAST({int(collection_id)} AS bigint)")
    # Sent without its comments, half the size: the driver and the server read it every time.
    return text("\n".join(_code_lines(source)))


def _code_lines(sql: str) -> Iterator[str]:
    """The lines of SQL that are not blank or comments, without their indentation (the
    statement has no comments after code on a line, nor strings across lines)."""
    for line in sql.splitlines():
        code = line.strip()
        if code and not code.startswith("--"):
            yield code


def _expression(fragment: TextClause) -> str:
    """A fragment of SQL on one line, without its comments, to write into the statement."""
    lines = (line.strip() for line in fragment.text.splitlines())
    return " ".join(line for line in lines if line and not line.startswith("--"))


def statement_parameters(
    collection: Collection,
    plan: Plan,
    vector: list[float] | None,
    source: VectorSource,
    settings: SearchSettings,
    keywords: KeywordCandidates | None = None,
) -> dict[str, Any]:
    keyword_depth = plan.candidates if plan.uses_keyword else 0
    vector_depth = plan.candidates if plan.uses_vector else 0
    # Per-document collapsing reads more chunks than documents it keeps.
    fetch = PER_DOCUMENT_FETCH if plan.per_document else 1
    recency, popularity = plan.recency, plan.popularity
    limit, offset = plan.fetch
    return {
        **plan.filter.params,
        **_query_terms(plan),
        "collection_id": collection.id,
        "text_config": collection.text_config,
        "query_text": plan.query,
        "max_terms": settings.max_terms,
        "keyword_budget": settings.keyword_budget,
        "k1": plan.k1,
        "b": plan.b,
        "title_weight": plan.title_weight,
        "principals": plan.principals,
        "restricted": plan.restricted,
        "query_vector": None if vector is None else np.asarray(vector, dtype=np.float32),
        "keyword_depth": keyword_depth,
        "vector_depth": vector_depth,
        "keyword_fetch": keyword_depth * fetch,
        "vector_fetch": vector_depth * fetch,
        "exact_threshold": settings.exact_threshold,
        "vector_exact": source.backend == "exact",
        "cached_ids": array_literal(source.candidates.ids) if source.candidates else None,
        "cached_partial": source.candidates.partial if source.candidates else False,
        "keyword_ids": array_literal(keywords.ids) if keywords else None,
        "keyword_documents": array_literal(keywords.documents) if keywords else None,
        "keyword_scores": array_literal(keywords.scores) if keywords else None,
        "keyword_partial": keywords.partial if keywords else False,
        "per_document": plan.per_document,
        "keyword_weight": plan.keyword_weight,
        "vector_weight": plan.vector_weight,
        "rarity_weight": plan.rarity_weight,
        "rrf_k": plan.rrf_k,
        "fusion": plan.fusion,
        "recency_half_life_days": recency.half_life_days if recency else None,
        "recency_floor": recency.floor if recency else 1.0,
        "recency_field": recency.field if recency else "published_at",
        "popularity_weight": popularity.weight if popularity else None,
        "popularity_max": popularity.max if popularity else 1.0,
        "limit": limit,
        "offset": offset,
        "highlight": plan.highlight,
        "headline_options": HEADLINE_OPTIONS,
    }


def array_literal(values: Sequence[int] | Sequence[float]) -> str:
    """A PostgreSQL array literal of numbers, for the statement to cast (`{1,2,3}`): hundreds
    of candidates cost microseconds this way, against a millisecond or more through the
    driver's element-by-element list adaptation. `repr` gives each float exactly."""
    return "{" + ",".join(map(repr, values)) + "}"


def _hit(row: Any, plan: Plan) -> Hit:
    return Hit(
        chunk_id=row["chunk_id"],
        document_id=row["document_id"],
        text=row["text"],
        title=row["title"],
        source=row["source"],
        metadata=row["metadata"],
        heading_path=list(row["heading_path"]),
        score=float(row["score"]),
        highlight=highlight(row["highlight"], row["text"]),
        explain=_explain(row) if plan.explain else None,
    )


def highlight(headline: str | None, text: str) -> str:
    """HTML-safe snippet with matched terms in <mark>; the text's start when nothing matched."""
    if not headline or MARK_START not in headline:
        words = text.split()
        snippet = " ".join(words[:SNIPPET_WORDS]) + (" …" if len(words) > SNIPPET_WORDS else "")
        return html.escape(snippet.replace(MARK_START, "").replace(MARK_END, ""))
    escaped = html.escape(headline)
    return escaped.replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


def _explain(row: Any) -> dict[str, Any]:
    distance = row["vector_distance"]
    return {
        "keyword": None
        if row["keyword_rank"] is None
        else {"rank": row["keyword_rank"], "bm25": row["keyword_score"]},
        "vector": None
        if row["vector_rank"] is None
        else {"rank": row["vector_rank"], "distance": distance, "similarity": 1 - distance},
        "fused_score": row["fused_score"],
        "recency_boost": row["recency_boost"],
        "popularity_boost": row["popularity_boost"],
        "score": row["score"],
    }
