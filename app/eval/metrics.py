"""Ranking metrics as pytrec_eval (and so BEIR) computes them.

`qrels` maps a document id to its graded relevance; a grade above 0 is relevant. nDCG uses
the grade itself as the gain (trec_eval's `ndcg_cut`), with log2(rank + 1) discounts and the
ideal ordering of all judged relevant documents of the query. The citation metrics score an
answer's citations against the same judgments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def ndcg(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    ideal_gains = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    ideal = _dcg(ideal_gains)
    if ideal == 0:
        return 0.0
    return _dcg([max(qrels.get(doc, 0), 0) for doc in ranked[:k]]) / ideal


def recall(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    relevant = {doc for doc, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    for rank, doc in enumerate(ranked[:k], start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def hit(ranked: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    return 1.0 if reciprocal_rank(ranked, qrels, k) > 0 else 0.0


def citation_precision(cited: Sequence[str], qrels: Mapping[str, int]) -> float | None:
    """Of the cited passages (each by its document), the share judged relevant; None when
    nothing is cited."""
    if not cited:
        return None
    return sum(qrels.get(doc, 0) > 0 for doc in cited) / len(cited)


def citation_recall(
    cited: Sequence[str], context: Sequence[str], qrels: Mapping[str, int]
) -> float | None:
    """Of the relevant documents in the context, the share cited; None when the context holds
    none."""
    relevant = {doc for doc in context if qrels.get(doc, 0) > 0}
    if not relevant:
        return None
    return len(relevant.intersection(cited)) / len(relevant)


def _dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
