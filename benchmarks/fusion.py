"""How the two legs are fused, chosen by leave-one-collection-out over the dev sets.

    python benchmarks/fusion.py ../shared/data/scifact ../shared/data/nfcorpus-pre \
        ../shared/data/cisi ../shared/data/adi [--database-url URL] [--out FILE]

Every set is ingested once (into a throwaway embedded PostgreSQL, or the database given, where
unchanged documents are skipped), its queries embedded once, then searched with every fusion
variant: weighted reciprocal rank fusion (`rrf`) over a grid of `rrf_k` and keyword weights,
and weighted sums of the legs' scores normalised per query (`minmax`, `zscore`) over a grid of
keyword weights (the vector leg's weight is one minus it). The keyword and vector legs alone
are scored too, as the floor the hybrid must not fall below.

Leave-one-collection-out: for each set, the variant with the best mean nDCG@10 over the other
sets is picked, and scored on the set left out. So no figure in the last table comes from
parameters chosen on its own set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.search.request import Prf

RRF_K = (5.0, 10.0, 20.0, 30.0, 60.0)
RRF_KEYWORD_WEIGHTS = (0.5, 0.75, 1.0)
SCORE_KEYWORD_WEIGHTS = (0.2, 0.3, 0.4, 0.5, 0.6)
DEFAULT = "rrf k=10 kw=1"
# The default fusion with the keyword weight following the rarity of the query's words more,
# less or not at all (every other variant has the default, 0.5).
RARITY_WEIGHTS = (0.0, 0.25, 1.0, 2.0)
RARITY = "rrf k=10 kw=1 rarity="
DEFAULT_RARITY = DEFAULT  # rarity 0.5
# Pseudo-relevance feedback on the default fusion: first-pass hits, then (RM3 share of the
# keyword query's weight, Rocchio step of the query vector).
FEEDBACK_DOCUMENTS = (3, 10)
FEEDBACK_WEIGHTS = ((0.2, 0.0), (0.5, 0.0), (0.0, 0.1), (0.0, 0.5), (0.2, 0.1))


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str
    fusion: str = "rrf"
    rrf_k: float = 10.0
    keyword: float = 1.0
    vector: float = 1.0
    # How much the keyword weight follows the rarity of the query's words.
    rarity: float = 0.5
    # Pseudo-relevance feedback: (documents, keyword expansion share, vector step).
    feedback: tuple[int, float, float] | None = None


def variants() -> list[Variant]:
    found = [Variant("keyword only", "keyword"), Variant("vector only", "vector")]
    for k in RRF_K:
        for weight in RRF_KEYWORD_WEIGHTS:
            found.append(Variant(f"rrf k={k:g} kw={weight:g}", "hybrid", "rrf", k, weight, 1.0))
    for fusion in ("minmax", "zscore"):
        for weight in SCORE_KEYWORD_WEIGHTS:
            found.append(
                Variant(f"{fusion} kw={weight:g}", "hybrid", fusion, 10.0, weight, 1 - weight)
            )
    for rarity in RARITY_WEIGHTS:
        found.append(Variant(f"{RARITY}{rarity:g}", "hybrid", rarity=rarity))
    for documents in FEEDBACK_DOCUMENTS:
        for expansion, step in FEEDBACK_WEIGHTS:
            found.append(
                Variant(
                    f"rrf k=10 kw=1 + prf {documents} docs, rm3 {expansion:g}, rocchio {step:g}",
                    "hybrid",
                    feedback=(documents, expansion, step),
                )
            )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--database-url")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with open_services(args.database_url) as services:
        scores = {folder.name: _score_set(services, folder) for folder in args.sets}
    report = _report(scores)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


@contextmanager
def open_services(database_url: str | None) -> Iterator[object]:
    from app.service import Services
    from app.settings import load_settings

    data = Path(tempfile.mkdtemp(prefix="hybrid-fusion-bench-"))
    environ = {**os.environ, "HYBRID_DATA_DIR": str(data)}
    if database_url:
        environ["DATABASE_URL"] = database_url
    else:
        environ.pop("DATABASE_URL", None)
    services = Services.open(load_settings(environ))
    try:
        yield services
    finally:
        services.close()
        shutil.rmtree(data, ignore_errors=True)


def _score_set(services: object, folder: Path) -> dict[str, float]:
    """nDCG@10 of every variant on one set."""
    from app import collections
    from app.eval import runner
    from app.search.engine import QueryEmbeddings, Searcher, search
    from app.search.request import SearchRequest, Weights
    from app.service import Services

    assert isinstance(services, Services)
    dataset = runner.read_dataset(folder)
    collection = runner.collection_name(dataset.name)
    print(f"{dataset.name}: ingesting ...", file=sys.stderr, flush=True)
    runner.ingest(services, dataset, collection, progress=False)
    with services.engine.connect() as conn:
        found = collections.get(conn, collection)
    embeddings = QueryEmbeddings(
        services.ingestor.embedder_for(found), size=len(dataset.queries) + 1
    )
    for query in dataset.queries.values():
        embeddings(query)
    searcher = Searcher(services.settings.search, embeddings, None, services.vector_cache)
    result = {}
    for variant in variants():
        total = 0.0
        for query_id, query in dataset.queries.items():
            request = SearchRequest(
                query=query,
                mode=variant.mode,
                k=10,
                per_document=True,
                highlight=False,
                weights=Weights(variant.keyword, variant.vector, variant.rarity),
                rrf_k=variant.rrf_k,
                fusion=variant.fusion,
                prf=_prf(variant),
            )
            with services.engine.begin() as conn:
                hits = search(conn, collection, request, searcher).hits
            ranked = [hit.document_id for hit in hits]
            total += runner.score_query(ranked, dataset.qrels[query_id])["ndcg@10"]
        result[variant.name] = total / len(dataset.queries)
        print(f"{dataset.name}: {variant.name} {result[variant.name]:.4f}", file=sys.stderr)
    return result


def _prf(variant: Variant) -> Prf:
    from app.search.request import Prf

    if variant.feedback is None:
        return Prf(documents=0)
    documents, expansion, step = variant.feedback
    return Prf(documents=documents, terms=10, keyword=expansion, vector=step)


def _report(scores: dict[str, dict[str, float]]) -> str:
    sets = list(scores)
    names = [v.name for v in variants()]
    lines = ["| variant | " + " | ".join(sets) + " | mean |", "|---" * (len(sets) + 2) + "|"]
    for name in names:
        values = [scores[s][name] for s in sets]
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.4f}" for v in values)
            + f" | {sum(values) / len(values):.4f} |"
        )  # fmt: skip
    hybrids = [v.name for v in variants() if v.mode == "hybrid"]
    lines += [
        "",
        "Leave one collection out (the variant is chosen on the other sets):",
        "",
        "| set left out | chosen on the others | nDCG@10 | default (" + DEFAULT + ") "
        "| best single leg | hybrid − best leg |",
        "|---|---|---|---|---|---|",
    ]
    for held in sets:
        others = [s for s in sets if s != held]
        chosen = max(hybrids, key=lambda n: sum(scores[s][n] for s in others))
        best_leg = max(scores[held]["keyword only"], scores[held]["vector only"])
        lines.append(
            f"| {held} | {chosen} | {scores[held][chosen]:.4f} | "
            f"{scores[held][DEFAULT]:.4f} | {best_leg:.4f} | "
            f"{scores[held][chosen] - best_leg:+.4f} |"
        )
    rarities = [DEFAULT_RARITY, *(v.name for v in variants() if v.name.startswith(RARITY))]
    lines += [
        "",
        "The rarity weight alone (default fusion), chosen on the other sets:",
        "",
        "| set left out | chosen on the others | nDCG@10 | rarity 0 (off) | change |",
        "|---|---|---|---|---|",
    ]
    for held in sets:
        others = [s for s in sets if s != held]
        chosen = max(rarities, key=lambda n: sum(scores[s][n] for s in others))
        off = scores[held][f"{RARITY}0"]
        lines.append(
            f"| {held} | {'rarity=0.5 (default)' if chosen == DEFAULT else chosen} | "
            f"{scores[held][chosen]:.4f} | {off:.4f} | "
            f"{scores[held][chosen] - off:+.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
