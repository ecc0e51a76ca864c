"""Search latency at scale: synthetic collections of 100k and 1M chunks.

    python benchmarks/scale.py [--sizes 100000,1000000] [--queries 100] [--data-dir DIR]

How the data is made (deterministic, seeded):
- Base: the first `--base` documents of a BEIR corpus (SciFact by default), embedded once with
  the bundled model (vectors kept in the data directory).
- Each synthetic document picks a base document as its topic and has 4 chunks. A chunk's 120
  words are drawn 60% from the topic document's words and 40% from the word distribution of
  the whole corpus (Zipfian, as real text), so lexemes have real document frequencies. Its
  vector is the topic's vector plus Gaussian noise (cosine about 0.8 to the topic), normalised:
  a clustered vector space, as real embeddings are.
- Documents carry `metadata.group` = i mod 100 (one value is a 1%-selective filter) and the ACL
  `team-(i mod 10)`; group 7 belongs to team 7, so "filter + ACL" is also 1% of the chunks.
- Queries are the corpus's real test queries, embedded with the bundled model (that time is
  reported on its own; the searches get the vectors and never embed).

Rows go in with binary COPY while the search indexes are dropped; then the GIN and HNSW
indexes are built (timed), the tables analysed, and tables and indexes loaded into shared
buffers with pg_prewarm (a serving database is warm; the embedded server's shared_buffers is
a quarter of the memory). The collection grows size by size, so
one data directory serves every size and a rerun skips what is already loaded.

For each size it reports, per mode and restriction, the latency p50/p95 of the whole search
call (validation, the SQL statement, building hits), and in the same run: HNSW against an
exact scan (recall@10 and latency), SQL BM25 against `ts_rank_cd` (latency; quality is in
benchmarks/keyword.py), and `EXPLAIN (ANALYZE, BUFFERS)` of one hybrid search.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, text

from app import collections
from app.ann.cache import VectorCache
from app.db import embedded
from app.db.queries import load
from app.eval import metrics
from app.ingest.store import CHUNK_TYPES, SECTION_TYPES
from app.lexical.cache import KeywordCache
from app.search import engine
from app.search.engine import Searcher
from app.search.request import SearchRequest, resolve
from app.service import Services
from app.settings import SearchSettings, load_settings

COLLECTION = "bench-scale"
CHUNKS_PER_DOCUMENT = 4
WORDS_PER_CHUNK = 120
TOPIC_SHARE = 0.6
NOISE = 0.75  # norm of the noise added to the topic vector (cosine ~ 1 / sqrt(1 + NOISE^2))
GROUPS, TEAMS = 100, 10
BATCH_DOCUMENTS = 2_500
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
WORD = re.compile(r"[a-z][a-z0-9-]+")
GIN_INDEX = "CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv)"
RESTRICTIONS: dict[str, dict[str, Any]] = {
    "none": {"principals": [f"team-{t}" for t in range(TEAMS)]},
    "acl 10%": {"principals": ["team-7"]},
    "filter 1%": {
        "principals": [f"team-{t}" for t in range(TEAMS)],
        "filter": {"metadata.group": {"eq": 7}},
    },
    "filter 1% + acl": {"principals": ["team-7"], "filter": {"metadata.group": {"eq": 7}}},
}


@dataclass
class Corpus:
    """What synthetic chunks are drawn from."""

    words: np.ndarray  # vocabulary
    weights: np.ndarray  # corpus frequency of each word, normalised
    topics: list[np.ndarray]  # per base document: indices of its words
    vectors: np.ndarray  # per base document: its embedding


def main() -> None:
    args = _arguments()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    url = args.database_url or embedded.start(args.data_dir)[0]
    settings = load_settings(
        {**os.environ, "DATABASE_URL": url, "HYBRID_DATA_DIR": str(args.data_dir)}
    )
    services = Services.open(settings)
    try:
        corpus = _corpus(services, args)
        queries, query_vectors, embed_ms = _queries(services, args)
        _machine(args, embed_ms)
        for size in args.sizes:
            _grow(services, corpus, size)
            _prewarm(services)
            keywords = None if args.no_keyword_index else _keyword_index(services)
            _measure(services, size, queries[: args.queries], query_vectors, args, keywords)
    finally:
        services.close()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--sizes", default="100000,1000000", help="Chunk counts, ascending")
    parser.add_argument("--queries", type=int, default=100, help="Queries per measurement")
    parser.add_argument("--base", type=int, default=2_000, help="Base documents (topics)")
    parser.add_argument(
        "--baseline-queries", type=int, default=100,
        help="Queries for the slow baselines (exact scan, exhaustive BM25, ts_rank_cd)",
    )  # fmt: skip
    parser.add_argument("--skip-latency", action="store_true", help="Only the comparisons")
    parser.add_argument(
        "--no-keyword-index", action="store_true",
        help="Searches without the in-process keyword index (the SQL keyword leg, as before it)",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=10, help="Hits per search")
    parser.add_argument("--data-dir", type=Path, default=Path("bench-data/scale"))
    parser.add_argument("--database-url", help="Use this server instead of the embedded one")
    parser.add_argument("--out", type=Path, default=Path("bench-data/scale-results.json"))
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def _machine(args: argparse.Namespace, embed_ms: list[float]) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB")
    print(f"queries: {args.queries} from {args.corpus.name}, k={args.k}")
    print(f"query embedding (bundled model, one query per call): {_p(embed_ms)}\n", flush=True)


# --- the synthetic corpus ------------------------------------------------------------------


def _corpus(services: Services, args: argparse.Namespace) -> Corpus:
    rows = [json.loads(line) for line in (args.corpus / "corpus.jsonl").open()]
    texts = [f"{r.get('title', '')} {r['text']}".lower() for r in rows]
    counts = Counter(w for t in texts for w in WORD.findall(t))
    words = np.array(sorted(counts))
    index = {w: i for i, w in enumerate(words)}
    weights = np.array([counts[w] for w in words], dtype=np.float64)
    topics = [np.array([index[w] for w in WORD.findall(t)]) for t in texts[: args.base]]
    cache = args.data_dir / f"base-{args.corpus.name}-{args.base}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        print(f"embedding {args.base} base documents ...", flush=True)
        vectors = services.embedder.embed([t[:2000] for t in texts[: args.base]])
        np.save(cache, vectors)
    return Corpus(words, weights / weights.sum(), topics, np.asarray(vectors, dtype=np.float32))


def _queries(
    services: Services, args: argparse.Namespace
) -> tuple[list[str], list[list[float]], list[float]]:
    queries = [json.loads(line)["text"] for line in (args.corpus / "queries.jsonl").open()]
    queries = queries[: max(args.queries, 1)]
    services.embedder.embed(["warm up"])
    vectors, times = [], []
    for q in queries:
        started = time.perf_counter()
        vectors.append(services.embedder.embed([q])[0].tolist())
        times.append((time.perf_counter() - started) * 1000)
    return queries, vectors, times


def _grow(services: Services, corpus: Corpus, size: int) -> None:
    """Load documents until the collection holds `size` chunks, then (re)build the indexes."""
    with services.engine.begin() as conn:
        collection = _collection(services, conn)
        have = conn.execute(
            text("SELECT count(*) FROM chunks WHERE collection_id = :c"), {"c": collection.id}
        ).scalar_one()
        indexes = _indexes(conn, collection.id)
        built = _indexes_present(conn, indexes)
    if have >= size and built:
        print(f"## {size:,} chunks: already loaded\n", flush=True)
        return
    print(f"## {size:,} chunks: loading {size - have:,} ...", flush=True)
    with services.engine.begin() as conn:
        for name in indexes:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    started = time.perf_counter()
    first = have // CHUNKS_PER_DOCUMENT
    last = size // CHUNKS_PER_DOCUMENT
    for start in range(first, last, BATCH_DOCUMENTS):
        end = min(start + BATCH_DOCUMENTS, last)
        with services.engine.begin() as conn:
            _copy(conn, collection.id, corpus, start, end)
        done = end * CHUNKS_PER_DOCUMENT
        rate = (done - have) / (time.perf_counter() - started)
        print(f"  {done:>9,} chunks  {rate:,.0f} chunks/s", end="\r", flush=True)
    print(f"\n  loaded in {time.perf_counter() - started:.0f} s", flush=True)
    for name, ddl in indexes.items():
        started = time.perf_counter()
        with services.engine.begin() as conn:
            # Index builds are exempt from the service's statement timeout, here too.
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            conn.execute(text("SET LOCAL maintenance_work_mem = '8GB'"))
            conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 1"))
            conn.execute(text(ddl))
        print(f"  {name}: built in {time.perf_counter() - started:.0f} s", flush=True)
    with services.engine.connect() as conn:
        autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.execute(text("SET statement_timeout = 0"))
        autocommit.execute(text("VACUUM ANALYZE documents, chunks, term_stats, corpus_stats"))
    print(flush=True)


def _prewarm(services: Services) -> None:
    """Load the tables and indexes into shared buffers: a serving database is warm."""
    started = time.perf_counter()
    with services.engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        indexes = list(_indexes(conn, _collection(services, conn).id))
        for relation in ("documents", "chunks", *indexes, "documents_pkey", "chunks_pkey",
                         "term_stats"):  # fmt: skip
            conn.execute(text("SELECT pg_prewarm(:r)"), {"r": relation})
    print(f"  prewarmed in {time.perf_counter() - started:.0f} s\n", flush=True)


def _collection(services: Services, conn: Connection) -> collections.Collection:
    return collections.get_or_create(
        conn, COLLECTION, embedding_model=services.embedder.model_id,
        embedding_dim=services.settings.embedding.dimension,
    )  # fmt: skip


def _indexes(conn: Connection, collection_id: int) -> dict[str, str]:
    """The indexes a load drops and builds again: GIN, and the collection's HNSW index."""
    name, ddl = conn.execute(
        text(
            "SELECT vector_index_name(id, vectors_version), vector_index_ddl(id, false, "
            "vector_column, embedding_dim, vectors_version) FROM collections WHERE id = :c"
        ),
        {"c": collection_id},
    ).one()
    return {"chunks_tsv_idx": GIN_INDEX, name: ddl}


def _indexes_present(conn: Connection, indexes: dict[str, str]) -> bool:
    found = conn.execute(
        text("SELECT count(*) FROM pg_indexes WHERE indexname = ANY(:names)"),
        {"names": list(indexes)},
    ).scalar_one()
    return bool(found == len(indexes))


def _copy(conn: Connection, collection_id: int, corpus: Corpus, start: int, end: int) -> None:
    """Documents [start, end) with their sections and chunks, ids given explicitly."""
    rng = np.random.default_rng(start)
    n = end - start
    topic_ids = rng.integers(len(corpus.topics), size=n)
    pg = conn.connection.driver_connection
    assert pg is not None
    config_oid = pg.execute("SELECT CAST(CAST('english_unaccent' AS regconfig) AS oid)").fetchone()[
        0
    ]
    with pg.cursor().copy(
        "COPY documents (collection_id, id, external_id, title, content_hash, metadata, acl,"
        " popularity, chunk_count, published_at) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(
            ["bigint", "bigint", "text", "text", "text", "jsonb", "text[]", "float8", "integer",
             "timestamptz"]
        )  # fmt: skip
        for i in range(start, end):
            published = EPOCH - timedelta(days=i % 3650)
            copy.write_row(
                (collection_id, i + 1, f"doc-{i}", f"document {i}", f"hash-{i}",
                 Jsonb({"group": i % GROUPS}), [f"team-{i % TEAMS}"],
                 float(i % 1000), CHUNKS_PER_DOCUMENT, published)
            )  # fmt: skip
    with pg.cursor().copy(
        "COPY sections (collection_id, document_id, ordinal, heading_path, text)"
        " FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(SECTION_TYPES)
        for i in range(start, end):
            copy.write_row((collection_id, i + 1, 0, [], ""))
    chunks = n * CHUNKS_PER_DOCUMENT
    topic_words = np.concatenate(
        [rng.choice(corpus.topics[t], size=(CHUNKS_PER_DOCUMENT, WORDS_PER_CHUNK))
         for t in topic_ids]
    )  # fmt: skip
    global_words = rng.choice(len(corpus.words), size=(chunks, WORDS_PER_CHUNK), p=corpus.weights)
    words = np.where(rng.random((chunks, WORDS_PER_CHUNK)) < TOPIC_SHARE, topic_words, global_words)
    noise = rng.normal(
        0, NOISE / np.sqrt(corpus.vectors.shape[1]), (chunks, corpus.vectors.shape[1])
    )
    vectors = corpus.vectors[np.repeat(topic_ids, CHUNKS_PER_DOCUMENT)] + noise.astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with pg.cursor().copy(
        "COPY chunks (collection_id, id, document_id, ordinal, section_ordinal, heading_path,"
        " context, text, token_count, text_config, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["bigint", "bigint", *CHUNK_TYPES[1:]])
        for j in range(chunks):
            i = start + j // CHUNKS_PER_DOCUMENT
            copy.write_row(
                (collection_id, i * CHUNKS_PER_DOCUMENT + j % CHUNKS_PER_DOCUMENT + 1, i + 1,
                 j % CHUNKS_PER_DOCUMENT, 0, [], f"document {i}",
                 " ".join(corpus.words[words[j]]), WORDS_PER_CHUNK, config_oid, vectors[j])
            )  # fmt: skip
    conn.execute(
        text(
            "SELECT setval(pg_get_serial_sequence('documents', 'id'), :d),"
            " setval(pg_get_serial_sequence('chunks', 'id'), :c)"
        ),
        {"d": end, "c": end * CHUNKS_PER_DOCUMENT},
    )


# --- measurements ---------------------------------------------------------------------------


def _keyword_index(services: Services) -> KeywordCache:
    """The collection's keyword index, built as `hybrid serve` builds it (timed)."""
    keywords = services.open_keyword_cache()
    with services.engine.begin() as conn:
        collection = _collection(services, conn)
    started = time.perf_counter()
    entry = keywords.ensure(collection.id)
    assert entry is not None and entry.current is not None
    print(f"Keyword index built in {time.perf_counter() - started:.1f} s: {entry.detail}\n")
    return keywords


def _measure(
    services: Services,
    size: int,
    queries: list[str],
    vectors: list[list[float]],
    args: argparse.Namespace,
    keywords: KeywordCache | None,
) -> dict[str, Any]:
    settings = services.settings.search
    exact = replace(settings, exact_threshold=10**9)
    hnsw = replace(settings, exact_threshold=0)
    results: dict[str, Any] = {"size": size, "latency": {}}
    if not args.skip_latency:
        _latency(services, settings, size, queries, vectors, args, results, keywords)
    few = queries[: args.baseline_queries]

    print(
        f"### {size:,} chunks: HNSW against an exact scan (vector mode, chunks, k={args.k}, "
        f"{len(few)} queries)\n"
    )
    print("| restriction | recall@10 | HNSW p50 | HNSW p95 | exact p50 | exact p95 |")
    print("|---|---|---|---|---|---|")
    for name in ("none", "acl 10%"):
        restriction = RESTRICTIONS[name]
        t_ann, _, _, ann = _run(services, hnsw, few, vectors, args.k, mode="vector",
                                ids=True, **restriction)  # fmt: skip
        t_exact, _, _, truth = _run(services, exact, few, vectors, args.k, mode="vector",
                                    ids=True, **restriction)  # fmt: skip
        recall = statistics.mean(
            len(set(a) & set(t)) / max(len(t), 1) for a, t in zip(ann, truth, strict=True)
        )
        results[f"hnsw / {name}"] = {"recall@10": recall, "hnsw": _summary(t_ann),
                                     "exact": _summary(t_exact)}  # fmt: skip
        print(f"| {name} | {recall:.3f} | {_ms(t_ann, 50)} | {_ms(t_ann, 95)} "
              f"| {_ms(t_exact, 50)} | {_ms(t_exact, 95)} |", flush=True)  # fmt: skip

    budget = services.settings.search.keyword_budget
    ranking = _keyword_rankings(services, few, args.k, keywords)
    results["keyword ranking"] = {
        name: {**_summary(times), "overlap@10": overlap}
        for name, (times, overlap) in ranking.items()
    }
    print(
        f"\n### {size:,} chunks: keyword ranking "
        f"(keyword mode, whole call, ms, {len(few)} queries)\n"
    )
    print("Overlap@10: the share of the top 10 of exhaustive BM25 (every chunk with any query")
    print("lexeme scored) that each ranking also returns.\n")
    print("| ranking | p50 | p95 | overlap@10 with exhaustive BM25 |\n|---|---|---|---|")
    for name, (times, overlap) in ranking.items():
        label = name.replace("budget", f"budget {budget:,}")
        print(f"| {label} | {_ms(times, 50)} | {_ms(times, 95)} | {overlap:.3f} |")
    print(flush=True)

    plan = _explain(services, queries[0], vectors[0], args.k)
    path = args.out.parent / f"explain-{size}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan)
    print(f"EXPLAIN (ANALYZE, BUFFERS) of one hybrid search: {path}\n", flush=True)
    _save(args.out, results)
    return results


def _latency(
    services: Services,
    settings: SearchSettings,
    size: int,
    queries: list[str],
    vectors: list[list[float]],
    args: argparse.Namespace,
    results: dict[str, Any],
    keywords: KeywordCache | None,
) -> None:
    index = "with" if keywords is not None else "without"
    print(f"### {size:,} chunks: search latency (ms, whole search call, embedding excluded, "
          f"{index} the keyword index)\n")  # fmt: skip
    print("| mode | restriction | p50 | p95 | SQL p50 | hits/query |\n|---|---|---|---|---|---|")
    for mode in ("keyword", "vector", "hybrid"):
        for name, restriction in RESTRICTIONS.items():
            times, sql, hits = _run(services, settings, queries, vectors, args.k, mode=mode,
                                    keywords=keywords, **restriction)  # fmt: skip
            results["latency"][f"{mode} / {name}"] = _summary(times)
            print(f"| {mode} | {name} | {_ms(times, 50)} | {_ms(times, 95)} | {_ms(sql, 50)} "
                  f"| {statistics.mean(hits):.1f} |", flush=True)  # fmt: skip
    times, sql, _ = _run(services, settings, queries, vectors, args.k, mode="hybrid",
                         highlight=True, keywords=keywords, **RESTRICTIONS["none"])  # fmt: skip
    results["latency"]["hybrid / none / highlights"] = _summary(times)
    print(f"| hybrid, with highlights | none | {_ms(times, 50)} | {_ms(times, 95)} "
          f"| {_ms(sql, 50)} | |\n", flush=True)  # fmt: skip


def _run(
    services: Services,
    settings: SearchSettings,
    queries: list[str],
    vectors: list[list[float]],
    k: int,
    *,
    ids: bool = False,
    cache: VectorCache | None = None,
    keywords: KeywordCache | None = None,
    **request: Any,
) -> Any:
    """Time `engine.search()` over the queries (after five warm-up queries), with the vector
    cache and keyword index when given: milliseconds, SQL milliseconds, hits, and with `ids`
    the chunk ids."""
    request.setdefault("highlight", False)
    times, sql, hits, found = [], [], [], []
    for warm_up in (True, False):
        for query, vector in zip(queries[:5] if warm_up else queries, vectors, strict=False):
            started = time.perf_counter()
            with services.engine.begin() as conn:
                asked = SearchRequest(query=query, vector=vector, k=k, **request)
                searcher = Searcher(settings, vectors=cache, keywords=keywords)
                result = engine.search(conn, COLLECTION, asked, searcher)
            if not warm_up:
                times.append((time.perf_counter() - started) * 1000)
                sql.append(result.sql_ms)
                hits.append(len(result.hits))
                found.append([h.chunk_id for h in result.hits])
    return (times, sql, hits, found) if ids else (times, sql, hits)


def _keyword_rankings(
    services: Services, queries: list[str], k: int, keywords: KeywordCache | None
) -> dict[str, tuple[list[float], float]]:
    """BM25 within the budget, exhaustive BM25, the keyword index's (when given), and
    `ts_rank_cd` over the same OR query."""
    settings = services.settings.search
    exhaustive = replace(settings, keyword_budget=10**12)
    principals = RESTRICTIONS["none"]["principals"]
    with services.engine.begin() as conn:
        collection = collections.get(conn, COLLECTION)
    times: dict[str, list[float]] = {"BM25, budget": [], "BM25, exhaustive": [], "ts_rank_cd": []}
    if keywords is not None:
        times["BM25, keyword index"] = []
    found: dict[str, list[list[int]]] = {name: [] for name in times}
    for warm_up in (True, False):
        for query in queries[:5] if warm_up else queries:
            for name in times:
                started = time.perf_counter()
                with services.engine.begin() as conn:
                    if name == "ts_rank_cd":
                        conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
                        rows = conn.execute(
                            text(TS_RANK_CD),
                            {"c": collection.id, "q": query, "k": k, "p": principals},
                        ).all()
                        hits = [row.id for row in rows]
                    else:
                        request = SearchRequest(query=query, mode="keyword", k=k,
                                                principals=principals, highlight=False)  # fmt: skip
                        chosen = exhaustive if name == "BM25, exhaustive" else settings
                        index = keywords if name == "BM25, keyword index" else None
                        searcher = Searcher(chosen, keywords=index)
                        result = engine.search(conn, COLLECTION, request, searcher)
                        if index is not None:
                            assert result.keyword_backend == "index", "the index was not used"
                        hits = [h.chunk_id for h in result.hits]
                if not warm_up:
                    times[name].append((time.perf_counter() - started) * 1000)
                    found[name].append(hits)
    truth = found["BM25, exhaustive"]
    return {
        name: (
            times[name],
            statistics.mean(
                len(set(a) & set(t)) / max(len(t), 1)
                for a, t in zip(found[name], truth, strict=True)
            ),
        )
        for name in times
    }


# The same OR query as the keyword leg (every query lexeme, quoted), ranked by ts_rank_cd.
TS_RANK_CD = """
SELECT c.id, ts_rank_cd(c.tsv, q.tsq) AS score
FROM chunks c
JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id
CROSS JOIN (SELECT CAST(string_agg('''' || replace(lexeme, '''', '''''') || '''', ' | ')
                        AS tsquery) AS tsq
            FROM unnest(to_tsvector('english_unaccent', :q))) AS q
WHERE c.collection_id = :c AND c.tsv @@ q.tsq
  AND d.deleted_at IS NULL AND d.acl && CAST(:p AS text[])
ORDER BY score DESC, c.id
LIMIT :k
"""


def _explain(services: Services, query: str, vector: list[float], k: int) -> str:
    with services.engine.begin() as conn:
        collection = collections.get(conn, COLLECTION)
        plan = resolve(SearchRequest(query=query, vector=vector, k=k, highlight=False,
                                     principals=RESTRICTIONS["none"]["principals"]),
                       collection.settings, services.settings.search)  # fmt: skip
        conn.execute(
            load("search.sql")["prepare"],
            {"principals": plan.principals, "ef_search": str(plan.ef_search),
             "max_scan_tuples": str(services.settings.search.max_scan_tuples),
             "collection_id": collection.id, "cache_position": None,
             "keyword_position": None, "generic_plan_below": 0, "text_config": "english",
             "query_text": "", "max_terms": 1},
        )  # fmt: skip
        statement = engine.statement(plan.filter, collection)
        source = engine.VectorSource("pgvector")
        params = engine.statement_parameters(
            collection, plan, vector, source, services.settings.search
        )
        explain = text("EXPLAIN (ANALYZE, BUFFERS) " + statement.text)
        return "\n".join(row[0] for row in conn.execute(explain, params))


def _summary(times: list[float]) -> dict[str, float]:
    return {"p50": metrics.percentile(times, 50), "p95": metrics.percentile(times, 95)}


def _ms(times: list[float], q: float) -> str:
    return f"{metrics.percentile(times, q):.1f}"


def _save(path: Path, results: dict[str, Any]) -> None:
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[str(results["size"])] = results
    path.write_text(json.dumps(saved, indent=2))


def _p(times: list[float]) -> str:
    return f"p50 {_ms(times, 50)} ms, p95 {_ms(times, 95)} ms"


if __name__ == "__main__":
    main()
