"""The in-process keyword index alone: build time, memory, and exact against pruned top-k.

    python benchmarks/keyword_index.py [--sizes 100000,1000000] [--queries 200] [--k 300]

Synthetic chunks, built through the same code path as the service's (`KeywordIndex.build`
from per-chunk postings, as `sql/lexical.sql` delivers them, then `ordered` with the default
BM25 parameters): each chunk has 40 to 200 tokens drawn from a Zipfian vocabulary of 200,000
terms (exponent 1.1, as word frequencies in text), one in ten of its terms flagged as in the
title. Three query sets, as the scale benchmark's: natural (9 distinct terms drawn from the same
distribution, so most hold a few common terms), rare (3 terms of document frequency rank 5,000
to 100,000) and common pairs (2 of the 100 most frequent terms); and natural queries again
restricted to 10% and to 1% of the documents (as a search with an ACL or a filter hands the
index the documents it may see).

Reported per size: build and ordering seconds, the index's array memory and peak RSS; per
query set, the top-k latency p50/p95 reading every posting (exhaustive) and pruned (the
threshold algorithm over impact-ordered postings, which the service runs), and the pruned
top 10 and top k's overlap with the exhaustive ones (k = 300: the candidates a hybrid search
with one hit per document asks for). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np

from app.lexical.index import Chunk, KeywordIndex, Scoring

VOCABULARY = 200_000
TOKENS = (40, 200)
QUERY_TERMS = 9
K1, B, TITLE_WEIGHT = 1.2, 0.75, 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    weights = 1 / np.arange(1, VOCABULARY + 1) ** 1.1
    weights /= weights.sum()
    builds, rows = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        exhaustive = KeywordIndex.build(_chunks(rng, weights, size))
        built = time.perf_counter() - started
        started = time.perf_counter()
        pruned = exhaustive.ordered(K1, B, TITLE_WEIGHT)
        ordering = time.perf_counter() - started
        exhaustive = dataclasses.replace(pruned, impacts=None)
        df = _df(pruned)
        idf = np.log(1 + (size - df + 0.5) / (df + 0.5))
        avgdl = float(pruned.lengths.mean())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        builds.append(
            f"| {size:,} | {pruned.postings:,} | {built:.1f} | {ordering:.1f} "
            f"| {exhaustive.nbytes / 2**20:,.0f} | {pruned.nbytes / 2**20:,.0f} | {peak:,.0f} |"
        )
        documents = np.unique(pruned.document_ids)
        restrictions = {
            "": None,
            ", 10% of documents": documents[documents % 10 == 7],
            ", 1% of documents": documents[documents % 100 == 7],
        }
        sets = _query_sets(rng, weights, np.argsort(-df))
        for name, draw, allowed in [
            *((name, draw, None) for name, draw in sets.items()),
            *(("natural (9 terms)" + label, sets["natural (9 terms)"], allowed)
              for label, allowed in restrictions.items() if allowed is not None),
        ]:  # fmt: skip
            times: dict[str, list[float]] = {"exhaustive": [], "pruned": []}
            if allowed is not None:
                mask = exhaustive.live & np.isin(exhaustive.document_ids, allowed)
                masked = dataclasses.replace(exhaustive, live=mask)
            top10: list[float] = []
            topk: list[float] = []
            for _ in range(args.queries + 5):
                terms = draw()
                scoring = Scoring([f"t{t}" for t in terms], [float(idf[t]) for t in terms],
                                  avgdl=avgdl, k1=K1, b=B, title_weight=TITLE_WEIGHT)  # fmt: skip
                found = {}
                for label, index in (("exhaustive", exhaustive), ("pruned", pruned)):
                    # Exhaustive and restricted: every posting scored, the other documents'
                    # chunks dropped after (their mask made beforehand, not timed).
                    hidden = index is exhaustive and allowed is not None
                    begun = time.perf_counter()
                    top = (
                        masked.top(scoring, args.k)
                        if hidden
                        else index.top(scoring, args.k, allowed)
                    )
                    times[label].append((time.perf_counter() - begun) * 1000)
                    found[label] = top.ids.tolist()
                for best, n in ((top10, 10), (topk, args.k)):
                    want = set(found["exhaustive"][:n])
                    best.append(len(want & set(found["pruned"][:n])) / max(len(want), 1))
            cut = {label: t[5:] for label, t in times.items()}
            rows.append(
                f"| {size:,} | {name} | {_p(cut['exhaustive'])} | {_p(cut['pruned'])} "
                f"| {min(top10[5:]):.3f} | {min(topk[5:]):.3f} |"
            )
            print(rows[-1], flush=True)
        del exhaustive, pruned
    print(
        "\n| chunks | postings | build s | ordering s | index MiB | ordered MiB | peak RSS MiB |"
        "\n|---|---|---|---|---|---|---|"
    )
    print("\n".join(builds))
    print(
        f"\n| chunks | queries | exhaustive p50 / p95 ms | pruned p50 / p95 ms "
        f"| overlap@10 (min) | overlap@{args.k} (min) |\n|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


def _query_sets(
    rng: np.random.Generator, weights: np.ndarray, by_rank: np.ndarray
) -> dict[str, Callable[[], np.ndarray]]:
    """Draws of each query set's terms (`by_rank`: the terms by decreasing frequency)."""
    return {
        "natural (9 terms)": lambda: rng.choice(
            VOCABULARY, size=QUERY_TERMS, replace=False, p=weights
        ),
        "rare (3 terms)": lambda: by_rank[rng.choice(np.arange(5_000, 100_000), 3, False)],
        "common pairs": lambda: by_rank[rng.choice(100, 2, replace=False)],
    }


def _p(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} / {np.percentile(times, 95):.2f}"


def _chunks(rng: np.random.Generator, weights: np.ndarray, size: int) -> Iterator[Chunk]:
    batch = 10_000
    for start in range(0, size, batch):
        n = min(batch, size - start)
        tokens = rng.choice(VOCABULARY, size=(n, TOKENS[1]), p=weights)
        titles = rng.random((n, TOKENS[1])) < 0.1
        lengths = rng.integers(TOKENS[0], TOKENS[1] + 1, size=n)
        for row in range(n):
            drawn = tokens[row][: lengths[row]]
            terms, counts = np.unique(drawn, return_counts=True)
            flagged = set(np.unique(drawn[titles[row][: lengths[row]]]).tolist())
            pairs = zip(terms.tolist(), counts.tolist(), strict=True)
            postings = [(f"t{t}", c, t in flagged) for t, c in pairs]
            chunk_id = start + row + 1
            yield chunk_id, chunk_id // 4, int(lengths[row]), postings


def _df(index: KeywordIndex) -> np.ndarray:
    """Each term's chunk count, by term id in the synthetic vocabulary's order."""
    counts = np.diff(index.base.offsets)
    df = np.zeros(VOCABULARY)
    for lexeme, term in index.vocabulary.items():
        df[int(lexeme[1:])] = counts[term]
    return df


if __name__ == "__main__":
    main()
