"""Search latency and quality beside LanceDB, on the same chunks and the same vectors, in one run.

    pip install -e '.[bench]'    # LanceDB, a benchmark-only dependency (the service never uses it)
    python benchmarks/peers.py [../shared/data/scifact ../shared/data/cisi] [--rounds 5]

Each BEIR folder is ingested through the normal write path into its `eval-<name>` collection
(reused when unchanged, as `hybrid eval` does). Its chunks are then copied, with the vectors
this engine stored for them, into a LanceDB table in a temporary folder, with LanceDB's own
full-text index over the title and the chunk text (what this engine's keyword leg reads).

Every query vector is computed once, before timing, and given to both engines: the figures are
engine time for k = 10, warm (a first pass over the queries is not timed). This engine runs
`app.search.engine.search` in its own transaction, with the in-process vector cache, one hit per
document, no highlights, the result cache not involved. LanceDB runs its hybrid query
(`query_type="hybrid"`, reciprocal rank fusion, its default) and its full-text and vector
queries alone; its hits are chunks, mapped to their documents. Each round times every query in
each mode once, engines interleaved per query; p50 and p95 are over all rounds' calls, and the
ratio is this engine's over LanceDB's. nDCG@10 by pytrec_eval's definition (app.eval.metrics).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlalchemy import text

from app import collections
from app.eval import metrics
from app.eval.runner import collection_name, ingest, read_dataset, score_query
from app.search import engine
from app.search.request import SearchRequest
from app.service import Services
from app.settings import load_settings

DEFAULT_SETS = ("scifact", "cisi")
K = 10
MODES = (("keyword", "fts"), ("vector", "vector"), ("hybrid", "hybrid"))

CHUNKS = """
SELECT c.id, d.external_id, coalesce(d.title, '') AS title, c.text,
       CAST(CASE k.vector_column WHEN 'embedding' THEN c.embedding ELSE c.embedding_alt END
            AS real[]) AS vector
FROM chunks c
JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id
JOIN collections k ON k.id = c.collection_id
WHERE c.collection_id = :collection_id AND d.deleted_at IS NULL
ORDER BY c.id
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folders = args.folders or [Path("../shared/data") / name for name in DEFAULT_SETS]
    services = Services.open(load_settings(dict(os.environ)))
    cache = services.start_vector_cache()
    keywords = services.start_keyword_cache()
    rows: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="lancedb-") as folder:
            for dataset_folder in folders:
                rows += _one_set(services, Path(folder), dataset_folder, args.rounds)
    finally:
        cache.stop(save=False)
        keywords.stop()
        services.close()
    print(
        "\n| set | mode | this engine p50 / p95 ms | LanceDB p50 / p95 ms | ratio p50 / p95 "
        "| nDCG@10 this / LanceDB |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


def _one_set(services: Services, folder: Path, dataset_folder: Path, rounds: int) -> list[str]:
    import lancedb  # benchmark-only

    dataset = read_dataset(dataset_folder)
    name = collection_name(dataset.name)
    ingest(services, dataset, name, progress=False)
    with services.engine.begin() as conn:
        collection = collections.get(conn, name)
        chunks = conn.execute(text(CHUNKS), {"collection_id": collection.id}).mappings().all()
    services.vector_cache.rebuild(collection.id, wait=True)  # type: ignore[union-attr]
    services.open_keyword_cache().ensure(collection.id)

    table = lancedb.connect(folder / dataset.name).create_table(
        "chunks",
        pa.table(
            {
                "id": [r["id"] for r in chunks],
                "document": [r["external_id"] for r in chunks],
                "text": [f"{r['title']}\n{r['text']}" for r in chunks],
                "vector": pa.array(
                    [r["vector"] for r in chunks], pa.list_(pa.float32(), len(chunks[0]["vector"]))
                ),
            }
        ),
    )
    table.create_fts_index("text")
    print(f"{dataset.name}: {len(chunks):,} chunks in both engines", flush=True)

    searcher = services.searcher(rerank=False)
    queries = list(dataset.queries.items())
    vectors = {qid: searcher.embeddings(q) for qid, q in queries}  # type: ignore[misc]

    def ours(mode: str) -> Callable[[str, str], list[str]]:
        def run(qid: str, query: str) -> list[str]:
            request = SearchRequest(
                query=query, mode=mode, k=K, per_document=True, highlight=False,
                vector=vectors[qid] if mode != "keyword" else None,
            )  # fmt: skip
            with services.engine.begin() as conn:
                result = engine.search(conn, name, request, searcher)
            return [hit.document_id for hit in result.hits]

        return run

    def theirs(query_type: str) -> Callable[[str, str], list[str]]:
        def run(qid: str, query: str) -> list[str]:
            if query_type == "fts":
                found = table.search(query, query_type="fts")
            elif query_type == "vector":
                found = table.search(vectors[qid], query_type="vector")
            else:
                found = table.search(query_type="hybrid").vector(vectors[qid]).text(query)
            hits = found.limit(K).select(["document"]).to_list()
            return list(dict.fromkeys(h["document"] for h in hits))

        return run

    out = []
    for mode, query_type in MODES:
        engines = {"this": ours(mode), "lancedb": theirs(query_type)}
        times: dict[str, list[float]] = {e: [] for e in engines}
        ranked: dict[str, dict[str, list[str]]] = {e: {} for e in engines}
        for round_ in range(rounds + 1):
            for qid, query in queries:
                for label, run in engines.items():
                    started = time.perf_counter()
                    ranked[label][qid] = run(qid, query)
                    if round_:  # the first pass warms both
                        times[label].append((time.perf_counter() - started) * 1000)
        figures = {e: _figures(times[e], ranked[e], dataset) for e in engines}
        (p50, p95, ndcg), (lp50, lp95, lndcg) = figures["this"], figures["lancedb"]
        row = (
            f"| {dataset.name} | {mode} | {p50:.1f} / {p95:.1f} | {lp50:.1f} / {lp95:.1f} "
            f"| {p50 / lp50:.2f} / {p95 / lp95:.2f} | {ndcg:.4f} / {lndcg:.4f} |"
        )
        print(row, flush=True)
        out.append(row)
    return out


def _figures(times: list[float], ranked: dict[str, list[str]], dataset: Any) -> tuple[float, ...]:
    ndcg = statistics.fmean(
        score_query(ranked[qid], dataset.qrels[qid])["ndcg@10"] for qid in ranked
    )
    return metrics.percentile(times, 50), metrics.percentile(times, 95), ndcg


if __name__ == "__main__":
    main()
