"""Keyword ranking on the real test collections: SQL BM25 (per candidate budget) against
`ts_rank_cd`, quality and latency in the same run.

    python benchmarks/keyword.py [../shared/data/scifact ...] [--budgets 1000,2000,5000,0]

Each BEIR folder is ingested through the normal write path into its `eval-<name>` collection
(reused when unchanged, as `hybrid eval` does). Every query then runs through the keyword mode
of the normal search path with `HYBRID_SEARCH_KEYWORD_BUDGET` set to each budget (0: no
budget, every chunk with any query lexeme is scored), and through one statement that ranks
the same OR query with `ts_rank_cd`. Both return each document's best chunk, top 100.
Reported: nDCG@10, Recall@100 and the latency p50/p95 of the whole call.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import text

from app import collections
from app.eval import metrics
from app.eval.runner import collection_name, ingest, read_dataset, score_query
from app.search import engine
from app.search.engine import Searcher
from app.search.request import SearchRequest
from app.service import Services
from app.settings import load_settings

DEFAULT_SETS = ("scifact", "nfcorpus-pre", "cisi", "adi")
UNBOUNDED = 10**12

TS_RANK_CD = """
WITH q AS (
    SELECT CAST(string_agg('''' || replace(replace(lexeme, '\\', '\\\\'), '''', '''''') || '''',
                           ' | ') AS tsquery) AS tsq
    FROM unnest(to_tsvector(CAST(:config AS regconfig), :query))
)
SELECT d.external_id, max(ts_rank_cd(c.tsv, q.tsq)) AS score
FROM chunks c
JOIN documents d ON d.collection_id = c.collection_id AND d.id = c.document_id
CROSS JOIN q
WHERE c.collection_id = :collection_id AND c.tsv @@ q.tsq
  AND d.deleted_at IS NULL AND d.acl && CAST(:principals AS text[])
GROUP BY d.external_id
ORDER BY score DESC, d.external_id
LIMIT 100
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--budgets", default="1000,2000,5000,10000,0")
    args = parser.parse_args()
    folders = args.folders or [Path("../shared/data") / name for name in DEFAULT_SETS]
    budgets = [int(b) for b in args.budgets.split(",")]
    services = Services.open(load_settings(dict(os.environ)))
    try:
        print("| set | ranking | nDCG@10 | R@100 | p50 ms | p95 ms |\n|---|---|---|---|---|---|")
        for folder in folders:
            _one_set(services, folder, budgets)
    finally:
        services.close()


def _one_set(services: Services, folder: Path, budgets: list[int]) -> None:
    dataset = read_dataset(folder)
    name = collection_name(dataset.name)
    ingest(services, dataset, name, progress=False)
    with services.engine.begin() as conn:
        collection = collections.get(conn, name)
    for budget in budgets:
        settings = replace(services.settings.search, keyword_budget=budget or UNBOUNDED)
        scores: list[dict[str, float]] = []
        times: list[float] = []
        for _ in range(2):  # the first pass warms the caches
            scores, times = [], []
            for query_id, query in dataset.queries.items():
                request = SearchRequest(query=query, mode="keyword", k=100, per_document=True,
                                        highlight=False)  # fmt: skip
                started = time.perf_counter()
                with services.engine.begin() as conn:
                    result = engine.search(conn, name, request, Searcher(settings=settings))
                times.append((time.perf_counter() - started) * 1000)
                ranked = [hit.document_id for hit in result.hits]
                scores.append(score_query(ranked, dataset.qrels[query_id]))
        label = f"BM25, budget {budget:,}" if budget else "BM25, no budget"
        _row(dataset.name, label, scores, times)
    scores, times = [], []
    for query_id, query in dataset.queries.items():
        started = time.perf_counter()
        with services.engine.begin() as conn:
            conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            rows = conn.execute(
                text(TS_RANK_CD),
                {"config": collection.text_config, "query": query,
                 "collection_id": collection.id, "principals": ["*"]},
            ).all()  # fmt: skip
        times.append((time.perf_counter() - started) * 1000)
        scores.append(score_query([row.external_id for row in rows], dataset.qrels[query_id]))
    _row(dataset.name, "ts_rank_cd", scores, times)


def _row(name: str, label: str, scores: list[dict[str, float]], times: list[float]) -> None:
    ndcg = sum(s["ndcg@10"] for s in scores) / len(scores)
    recall = sum(s["recall@100"] for s in scores) / len(scores)
    print(
        f"| {name} | {label} | {ndcg:.4f} | {recall:.4f} | {metrics.percentile(times, 50):.1f} "
        f"| {metrics.percentile(times, 95):.1f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
