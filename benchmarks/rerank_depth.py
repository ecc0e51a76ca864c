"""How deep the reranker should read: recall of the fused hybrid hits at depth N.

    PYTHONPATH=. python benchmarks/rerank_depth.py ../shared/data/adi ../shared/data/cisi
        [--depths 10,20,30,50,100]

The cross-encoder only reorders the top N fused chunks (`rerank_depth`), so the judged
relevant documents among them bound what it can bring into the first page: whatever lies
below N stays there. For each BEIR folder, the corpus goes through the normal write path
(`hybrid eval`'s ingest) into a throwaway embedded PostgreSQL, and every judged query runs
through the normal `hybrid` search with k = the largest depth, chunks as the reranker sees
them (no `per_document`). Reported per depth: recall@N (relevant documents among the top N
chunks over all relevant documents, mean over queries), and the share of the recall at the
largest depth that N already reaches. No model timing is involved: load does not change
these figures. Prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from app.db import embedded
from app.eval import metrics, runner
from app.search.engine import QueryEmbeddings, Searcher, search
from app.search.request import SearchRequest
from app.service import Services
from app.settings import load_settings


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-bench-depth-"))
    url = embedded.start(scratch)[0]
    environ = {**os.environ, "DATABASE_URL": url, "HYBRID_DATA_DIR": str(scratch)}
    services = Services.open(load_settings(environ))
    try:
        header = " | ".join(f"R@{d}" for d in args.depths)
        print(f"| set | queries | {header} |\n|---|---|" + "---|" * len(args.depths))
        for folder in args.folders:
            recalls, queries = _recalls(services, folder, args.depths)
            top = recalls[-1] or 1.0
            cells = " | ".join(f"{r:.3f} ({r / top:.0%})" for r in recalls)
            print(f"| {folder.name} | {queries} | {cells} |")
    finally:
        services.close()
        embedded.stop(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="BEIR folders")
    parser.add_argument(
        "--depths", type=lambda s: [int(x) for x in s.split(",")], default="10,20,30,50,100"
    )
    return parser.parse_args()


def _recalls(services: Services, folder: Path, depths: list[int]) -> tuple[list[float], int]:
    dataset = runner.read_dataset(folder)
    collection = runner.collection_name(dataset.name)
    runner.ingest(services, dataset, collection, progress=False)
    embeddings = QueryEmbeddings(services.embedder)
    totals = [0.0] * len(depths)
    for query_id, text in dataset.queries.items():
        chunks = _chunk_documents(services, collection, text, max(depths), embeddings)
        for i, depth in enumerate(depths):
            ranked = list(dict.fromkeys(chunks[:depth]))
            totals[i] += metrics.recall(ranked, dataset.qrels[query_id], depth)
    count = len(dataset.queries)
    return [total / count for total in totals], count


def _chunk_documents(
    services: Services, collection: str, text: str, k: int, embeddings: QueryEmbeddings
) -> list[str]:
    """The document of each of the top k fused chunks, in fused order."""
    request = SearchRequest(query=text, mode="hybrid", k=k, highlight=False)
    with services.engine.begin() as conn:
        result = search(
            conn,
            collection,
            request,
            Searcher(settings=services.settings.search, embeddings=embeddings),
        )
    return [hit.document_id for hit in result.hits]


if __name__ == "__main__":
    main()
