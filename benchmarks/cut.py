"""Adaptive depth: what cutting the hit list where its scores drop does to the hits kept.

    python benchmarks/cut.py ../shared/data/scifact ../shared/data/nfcorpus-pre \
        ../shared/data/cisi ../shared/data/adi [--database-url URL] [--k 8] [--out FILE]

Every set is ingested once (as `hybrid eval` does) and each judged query searched in hybrid
mode, one hit per document, `k` hits (8: an answer's context), with each cut. Per set and
cut: the hits kept per query, the share of kept hits that are judged relevant (what an
answer's context would cite from), the share of the relevant hits of the uncut list that the
cut keeps, and nDCG@10 of the list as cut.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fusion import open_services

CUTS: dict[str, dict[str, float]] = {
    "none": {},
    "relative 0.3": {"relative": 0.3},
    "relative 0.5": {"relative": 0.5},
    "relative 0.7": {"relative": 0.7},
    "gap 0.3": {"gap": 0.3},
    "gap 0.5": {"gap": 0.5},
    "relative 0.5 + gap 0.5": {"relative": 0.5, "gap": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--database-url")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with open_services(args.database_url) as services:
        for folder in args.sets:
            rows += _measure(services, folder, args.k)
    lines = [
        f"| set | cut | hits kept (mean) | relevant share of kept | relevant kept of {args.k} "
        "| nDCG@10 |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s} | {c} | {kept:.2f} | {precision:.3f} | {recall:.3f} | {ndcg:.4f} |"
            for s, c, kept, precision, recall, ndcg in rows
        ),
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


def _measure(
    services: object, folder: Path, k: int
) -> list[tuple[str, str, float, float, float, float]]:
    from app.eval import runner
    from app.search.engine import search
    from app.search.request import Cut, SearchRequest
    from app.service import Services

    assert isinstance(services, Services)
    dataset = runner.read_dataset(folder)
    collection = runner.collection_name(dataset.name)
    print(f"{dataset.name}: ingesting ...", file=sys.stderr, flush=True)
    runner.ingest(services, dataset, collection, progress=False)
    searcher = services.searcher()
    found = []
    uncut: dict[str, list[str]] = {}
    for name, bounds in CUTS.items():
        kept, precision, recall, ndcg = [], [], [], []
        for query_id, query in dataset.queries.items():
            request = SearchRequest(
                query=query, mode="hybrid", k=k, per_document=True, highlight=False,
                cut=Cut(relative=bounds.get("relative"), gap=bounds.get("gap")) if bounds else None,
            )  # fmt: skip
            with services.engine.begin() as conn:
                ranked = [h.document_id for h in search(conn, collection, request, searcher).hits]
            judged = dataset.qrels[query_id]
            relevant = [d for d in ranked if judged.get(d, 0) > 0]
            if not bounds:
                uncut[query_id] = relevant
            kept.append(len(ranked))
            if ranked:
                precision.append(len(relevant) / len(ranked))
            if uncut[query_id]:
                recall.append(len(relevant) / len(uncut[query_id]))
            ndcg.append(runner.score_query(ranked, judged)["ndcg@10"])
        row = (
            dataset.name, name, statistics.fmean(kept), statistics.fmean(precision),
            statistics.fmean(recall), statistics.fmean(ndcg),
        )  # fmt: skip
        print(row, file=sys.stderr, flush=True)
        found.append(row)
    return found


if __name__ == "__main__":
    main()
