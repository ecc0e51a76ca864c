"""The in-process keyword index alone: build time, memory and top-k latency, by size.

    python benchmarks/keyword_index.py [--sizes 100000,1000000] [--queries 200] [--k 300]

Synthetic chunks, built through the same code path as the service's (`KeywordIndex.build`
from per-chunk postings, as `sql/lexical.sql` delivers them): each chunk has 120 tokens drawn
from a Zipfian vocabulary of 200,000 terms (exponent 1.1, as word frequencies in text), one in
ten of its terms flagged as in the title. Queries have 9 distinct terms drawn from the same
distribution (so most hold a few common terms, as natural queries do). Reported per size:
build seconds (and chunks/s), the index's array memory and peak RSS, and the top-k latency
p50/p95 over the queries (k = 300: the candidates a hybrid search with one hit per document
asks for), with how many postings a query reads. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Iterator

import numpy as np

from app.lexical.index import Chunk, KeywordIndex, Scoring

VOCABULARY = 200_000
TOKENS = 120
QUERY_TERMS = 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    weights = 1 / np.arange(1, VOCABULARY + 1) ** 1.1
    weights /= weights.sum()
    print(
        "| chunks | postings | build s | chunks/s | index MiB | peak RSS MiB | top-k p50 ms "
        "| p95 ms | postings read p50 |\n|---|---|---|---|---|---|---|---|---|"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        index = KeywordIndex.build(_chunks(rng, weights, size))
        built = time.perf_counter() - started
        idf = np.log(1 + (size - _df(index) + 0.5) / (_df(index) + 0.5))
        avgdl = float(index.lengths.mean())
        times, read = [], []
        for _ in range(args.queries + 5):
            terms = rng.choice(VOCABULARY, size=QUERY_TERMS, replace=False, p=weights)
            lexemes = [f"t{t}" for t in terms]
            ids = [index.vocabulary.get(lexeme) for lexeme in lexemes]
            scoring = Scoring(lexemes, [float(idf[t]) for t in terms], avgdl=avgdl,
                              title_weight=1.5)  # fmt: skip
            begun = time.perf_counter()
            index.top(scoring, args.k)
            times.append((time.perf_counter() - begun) * 1000)
            parts = [index.base.of_term(i) for i in ids if i is not None]
            read.append(sum(part.stop - part.start for part in parts))
        times, read = times[5:], read[5:]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"| {size:,} | {index.postings:,} | {built:.1f} | {size / built:,.0f} "
            f"| {index.nbytes / 2**20:,.0f} | {peak:,.0f} | {statistics.median(times):.2f} "
            f"| {np.percentile(times, 95):.2f} | {int(statistics.median(read)):,} |",
            flush=True,
        )
        del index


def _chunks(rng: np.random.Generator, weights: np.ndarray, size: int) -> Iterator[Chunk]:
    batch = 10_000
    for start in range(0, size, batch):
        n = min(batch, size - start)
        tokens = rng.choice(VOCABULARY, size=(n, TOKENS), p=weights)
        titles = rng.random((n, TOKENS)) < 0.1
        for row in range(n):
            terms, counts = np.unique(tokens[row], return_counts=True)
            flagged = set(np.unique(tokens[row][titles[row]]).tolist())
            pairs = zip(terms.tolist(), counts.tolist(), strict=True)
            postings = [(f"t{t}", c, t in flagged) for t, c in pairs]
            chunk_id = start + row + 1
            yield chunk_id, chunk_id // 4, TOKENS, postings


def _df(index: KeywordIndex) -> np.ndarray:
    """Each term's chunk count, by term id in the synthetic vocabulary's order."""
    counts = np.diff(index.base.offsets)
    df = np.zeros(VOCABULARY)
    for lexeme, term in index.vocabulary.items():
        df[int(lexeme[1:])] = counts[term]
    return df


if __name__ == "__main__":
    main()
