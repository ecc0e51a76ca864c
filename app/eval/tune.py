"""`hybrid tune`: a collection's fusion and feedback defaults chosen on its own judged queries.

Every candidate (weighted RRF over `rrf_k` and the keyword weight; weighted sums of
normalised leg scores, `minmax` and `zscore`, over the keyword weight; pseudo-relevance
feedback on the default fusion; the default fusion with the keyword weight following the
rarity of the query's words more, less or not at all) searches every judged query once, in
hybrid mode with one hit per document, as `hybrid eval` does. So does the collection as it is now.

Choosing on the same queries that score the choice flatters it, so the gain is estimated by
cross-validation: the queries are split into folds, and each fold is scored with the candidate
that did best on the other folds. Those held-out scores, query by query, are compared with the
collection's current defaults on the same queries; the new defaults are stored only when the
held-out gain is positive in at least 95% of bootstrap resamples of the queries. Otherwise the
collection keeps its defaults and the report says why. Fewer than `min_queries` judged queries
are refused: the folds would be too small to tell a better setting from luck.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app import collections
from app.errors import Invalid
from app.eval.runner import read_judgments, score_query
from app.search.engine import search
from app.search.request import Prf, SearchRequest, Weights
from app.service import Services

RRF_K = (5.0, 10.0, 20.0, 60.0)
RRF_KEYWORD_WEIGHTS = (0.5, 0.75, 1.0, 1.5)
SCORE_KEYWORD_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)
RARITY_WEIGHTS = (0.0, 1.0, 2.0)
PRF_DOCUMENTS = (3, 10)
PRF_WEIGHTS = ((0.2, 0.0), (0.0, 0.1), (0.2, 0.1))
METRICS = ("ndcg@10", "recall@100", "mrr@10")
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
CURRENT = "current"


@dataclass(frozen=True)
class Candidate:
    """Search defaults to try, as the collection would store them."""

    name: str
    settings: dict[str, Any]

    def request(self, query: str) -> SearchRequest:
        s = self.settings
        if not s:
            return SearchRequest(
                query=query, mode="hybrid", k=100, per_document=True, highlight=False
            )
        return SearchRequest(
            query=query,
            mode="hybrid",
            k=100,
            per_document=True,
            highlight=False,
            weights=Weights(s["keyword_weight"], s["vector_weight"], s["rarity_weight"]),
            rrf_k=s["rrf_k"],
            fusion=s["fusion"],
            prf=Prf(s["prf_documents"], s["prf_terms"], s["prf_keyword"], s["prf_vector"]),
        )


@dataclass
class TuneReport:
    collection: str
    queries: int
    folds: int
    current: dict[str, Any]
    chosen: Candidate
    # Per metric: the current defaults, the tuned ones on held-out folds, and on all queries.
    metrics: dict[str, dict[str, float]]
    gain: float
    confidence: float
    fold_choices: list[str]
    stored: bool
    reason: str
    legs: dict[str, float] = field(default_factory=dict)


def candidates() -> list[Candidate]:
    """The grid `hybrid tune` searches."""
    found = []
    for k in RRF_K:
        for weight in RRF_KEYWORD_WEIGHTS:
            found.append(_candidate(f"rrf k={k:g} kw={weight:g}", "rrf", k, weight, 1.0))
    for fusion in ("minmax", "zscore"):
        for weight in SCORE_KEYWORD_WEIGHTS:
            found.append(_candidate(f"{fusion} kw={weight:g}", fusion, 10.0, weight, 1 - weight))
    for rarity in RARITY_WEIGHTS:
        found.append(_candidate(f"rrf k=10 kw=1 rarity={rarity:g}", "rrf", 10, 1, 1, rarity=rarity))
    for documents in PRF_DOCUMENTS:
        for expansion, step in PRF_WEIGHTS:
            name = f"rrf k=10 kw=1 + prf {documents} docs, rm3 {expansion:g}, rocchio {step:g}"
            found.append(_candidate(name, "rrf", 10.0, 1.0, 1.0, (documents, expansion, step)))
    return found


def _candidate(
    name: str,
    fusion: str,
    rrf_k: float,
    keyword: float,
    vector: float,
    prf: tuple[int, float, float] = (0, 0.0, 0.0),
    rarity: float = 0.5,
) -> Candidate:
    documents, expansion, step = prf
    return Candidate(
        name,
        {
            "fusion": fusion,
            "rrf_k": rrf_k,
            "keyword_weight": keyword,
            "vector_weight": vector,
            "rarity_weight": rarity,
            "prf_documents": documents,
            "prf_terms": 10,
            "prf_keyword": expansion,
            "prf_vector": step,
        },
    )


def tune(
    services: Services,
    collection: str,
    folder: Path,
    *,
    folds: int = 5,
    min_queries: int = 20,
    store: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> TuneReport:
    """Score every candidate on the folder's judged queries, cross-validate the choice, and
    store it as the collection's defaults when it beats the current ones (unless `store` is
    False)."""
    queries, qrels = read_judgments(folder)
    if folds < 2:
        raise Invalid(f"folds: expected at least 2, got {folds}", field="folds")
    if len(queries) < max(min_queries, folds):
        raise Invalid(
            f"{folder}: {len(queries)} judged queries, too few to tell one setting from another "
            f"(at least {max(min_queries, folds)}; see --min-queries)",
            field="qrels",
        )
    with services.engine.connect() as conn:
        current = collections.get(conn, collection).settings
    ids = sorted(queries)
    grid = [Candidate(CURRENT, {}), *candidates()]
    legs = {mode: _mean(_scores(services, collection, queries, qrels, ids, mode)) for mode in
            ("keyword", "vector")}  # fmt: skip
    per_query: dict[str, dict[str, list[float]]] = {}
    bar = tqdm(grid, desc="candidates", unit="setting", disable=not progress)
    for candidate in bar:
        per_query[candidate.name] = _metrics(services, collection, candidate, queries, qrels, ids)
    held_out, choices = _cross_validate(per_query, len(ids), folds, seed)
    base = per_query[CURRENT]["ndcg@10"]
    gain = statistics.fmean(held_out["ndcg@10"]) - statistics.fmean(base)
    confidence = _bootstrap([t - b for t, b in zip(held_out["ndcg@10"], base, strict=True)], seed)
    best = max(grid[1:], key=lambda c: statistics.fmean(per_query[c.name]["ndcg@10"]))
    metrics = {
        name: {
            "current": _mean(per_query[CURRENT][name]),
            "tuned (held out)": _mean(held_out[name]),
            "tuned (all queries)": _mean(per_query[best.name][name]),
        }
        for name in METRICS
    }
    stored, reason = False, ""
    if gain <= 0:
        reason = f"on held-out queries the tuned defaults score {gain:+.4f} nDCG@10: no gain"
    elif confidence < CONFIDENCE:
        reason = (
            f"the held-out gain ({gain:+.4f} nDCG@10) is positive in only {confidence:.0%} of "
            f"resamples (needs {CONFIDENCE:.0%}): more judged queries would tell"
        )
    elif not store:
        reason = "not stored (--dry-run)"
    else:
        with services.transaction() as conn:
            collections.update_settings(conn, collection, best.settings)
        stored = True
        reason = f"held-out gain {gain:+.4f} nDCG@10, positive in {confidence:.0%} of resamples"
    return TuneReport(
        collection=collection,
        queries=len(ids),
        folds=folds,
        current=current,
        chosen=best,
        metrics=metrics,
        gain=gain,
        confidence=confidence,
        fold_choices=choices,
        stored=stored,
        reason=reason,
        legs=legs,
    )


def _metrics(
    services: Services,
    collection: str,
    candidate: Candidate,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    ids: list[str],
) -> dict[str, list[float]]:
    """Each metric of each query (in `ids` order) with this candidate's settings."""
    found: dict[str, list[float]] = {name: [] for name in METRICS}
    for ranked, query_id in zip(_rankings(services, collection, candidate.request, queries, ids),
                                ids, strict=True):  # fmt: skip
        scores = score_query(ranked, qrels[query_id])
        for name in METRICS:
            found[name].append(scores[name])
    return found


def _scores(
    services: Services,
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    ids: list[str],
    mode: str,
) -> list[float]:
    """nDCG@10 of one leg alone, per query."""

    def request(query: str) -> SearchRequest:
        return SearchRequest(query=query, mode=mode, k=10, per_document=True, highlight=False)

    rankings = _rankings(services, collection, request, queries, ids)
    return [score_query(r, qrels[q])["ndcg@10"] for r, q in zip(rankings, ids, strict=True)]


def _rankings(
    services: Services,
    collection: str,
    request: Callable[[str], SearchRequest],
    queries: dict[str, str],
    ids: list[str],
) -> Iterator[list[str]]:
    searcher = services.searcher()
    for query_id in ids:
        with services.transaction() as conn:
            hits = search(conn, collection, request(queries[query_id]), searcher).hits
        yield [hit.document_id for hit in hits]


def _cross_validate(
    per_query: dict[str, dict[str, list[float]]], count: int, folds: int, seed: int
) -> tuple[dict[str, list[float]], list[str]]:
    """Each query's metrics under the candidate chosen on the folds it is not in, and each
    fold's choice."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    fold_of = {query: i % folds for i, query in enumerate(order)}
    names = [name for name in per_query if name != CURRENT]
    held: dict[str, list[float]] = {name: [0.0] * count for name in METRICS}
    choices = []
    for fold in range(folds):
        training = [q for q in range(count) if fold_of[q] != fold]
        chosen = max(names, key=lambda n: sum(per_query[n]["ndcg@10"][q] for q in training))
        choices.append(chosen)
        for query in range(count):
            if fold_of[query] == fold:
                for name in METRICS:
                    held[name][query] = per_query[chosen][name][query]
    return held, choices


def _bootstrap(differences: list[float], seed: int) -> float:
    """The share of resamples (of the queries, with replacement) whose mean difference is
    positive."""
    rng = random.Random(seed)
    n = len(differences)
    positive = sum(
        statistics.fmean(differences[rng.randrange(n)] for _ in range(n)) > 0
        for _ in range(BOOTSTRAP_SAMPLES)
    )
    return positive / BOOTSTRAP_SAMPLES


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
