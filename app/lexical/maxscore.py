"""Exact BM25 top-k without scoring every matching chunk: MaxScore, compiled.

MaxScore (Turtle and Flood, 1995; the algorithm of Lucene's disjunctions) walks the query
terms' postings in row order, one chunk at a time. Each term has an upper bound, its weight
times the heaviest BM25 weight among its postings. With the terms in increasing order of bound,
the k-th best score found so far (θ) splits them: the first terms, whose bounds add up to less
than θ, cannot bring a chunk into the top k by themselves ("non-essential"). So only the other
terms' postings are walked; a chunk met there is looked up in the non-essential terms (by a
galloping search forward, as the walk only moves forward), heaviest first, and only as long
as what it has plus what it could still gain reaches θ. As θ rises, more terms become
non-essential and whole stretches of long postings are skipped.

Every chunk that could reach the final k-th score is scored exactly, so the result equals
scoring every chunk: it returns every chunk scoring at least θ (times 1 - 1e-12, the ties
rule of `KeywordIndex.top`); the caller keeps the best k.

The loop is compiled with numba (no Python object is touched inside it, and it releases the
GIL, so searches in other threads go on meanwhile).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

# A chunk within this relative margin below θ still counts as tied with it.
TIED = 1e-12


@njit(cache=True, nogil=True)
def _weight(
    tf: float, title: bool, length: float, k1: float, b: float, tw: float, avgdl: float
) -> float:
    count = tf + (tw - 1.0) * title
    return count * (k1 + 1.0) / (count + k1 * (1.0 - b + b * length / avgdl))


@njit(cache=True, nogil=True)
def _seek(rows: npt.NDArray[np.int32], at: int, end: int, row: int) -> int:
    """The first position in rows[at:end] (sorted) holding `row` or more: galloping, then
    binary search."""
    if at >= end or rows[at] >= row:
        return at
    step = 1
    low = at
    high = at + 1
    while high < end and rows[high] < row:
        low = high
        step *= 2
        high = at + step
    if high > end:
        high = end
    # rows[low] < row; rows[high] >= row or high == end
    low += 1
    while low < high:
        middle = (low + high) // 2
        if rows[middle] < row:
            low = middle + 1
        else:
            high = middle
    return low


@njit(cache=True, nogil=True)
def _heap_push(heap: npt.NDArray[np.float64], size: int, value: float) -> None:
    """Push onto a min-heap of `size` entries (the caller counts)."""
    i = size
    heap[i] = value
    while i > 0:
        parent = (i - 1) // 2
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent


@njit(cache=True, nogil=True)
def _heap_replace_top(heap: npt.NDArray[np.float64], size: int, value: float) -> None:
    heap[0] = value
    i = 0
    while True:
        left = 2 * i + 1
        right = left + 1
        smallest = i
        if left < size and heap[left] < heap[smallest]:
            smallest = left
        if right < size and heap[right] < heap[smallest]:
            smallest = right
        if smallest == i:
            break
        heap[smallest], heap[i] = heap[i], heap[smallest]
        i = smallest


@njit(cache=True, nogil=True)
def _keep_reaching(
    rows: npt.NDArray[np.int32], scores: npt.NDArray[np.float64], found: int, theta: float
) -> int:
    """Move the first `found` rows scoring θ or more (ties included) to the front; how many."""
    kept = 0
    for f in range(found):
        if scores[f] >= theta * (1.0 - TIED):
            rows[kept] = rows[f]
            scores[kept] = scores[f]
            kept += 1
    return kept


@njit(cache=True, nogil=True)
def top_rows(
    rows: npt.NDArray[np.int32],
    tf: npt.NDArray[np.float32],
    title: npt.NDArray[np.bool_],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    bounds: npt.NDArray[np.float64],
    lengths: npt.NDArray[np.float64],
    live: npt.NDArray[np.bool_],
    k: int,
    k1: float,
    b: float,
    tw: float,
    avgdl: float,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], bool]:
    """The rows whose score may be among the k best (every row of the top k, and ties), their
    exact scores, and whether rows matching a term were left out. Terms come in increasing
    order of `bounds` (weight times heaviest posting weight, with margin): term i's postings are
    rows[starts[i]:ends[i]], in row order."""
    terms = len(starts)
    # below[j]: what a chunk matching only terms 0..j-1 can score at most.
    below = np.zeros(terms + 1)
    for j in range(terms):
        below[j + 1] = below[j] + bounds[j]
    at = starts.copy()
    heap = np.empty(k)
    heaped = 0
    theta = 0.0
    found_rows = np.empty(max(4 * k, 1024), dtype=np.int32)
    found_scores = np.empty(max(4 * k, 1024))
    found = 0
    essential = 0  # terms[essential:] are walked
    left_out = False
    scored = 0
    while True:
        while essential < terms and below[essential + 1] < theta * (1.0 - TIED):
            essential += 1
        if essential == terms:
            break
        row = np.iinfo(np.int32).max
        for i in range(essential, terms):
            if at[i] < ends[i] and rows[at[i]] < row:
                row = rows[at[i]]
        if row == np.iinfo(np.int32).max:
            break
        score = 0.0
        length = lengths[row]
        for i in range(essential, terms):
            if at[i] < ends[i] and rows[at[i]] == row:
                p = at[i]
                score += weights[i] * _weight(tf[p], title[p], length, k1, b, tw, avgdl)
                at[i] = p + 1
        if not live[row]:
            continue
        scored += 1
        for j in range(essential - 1, -1, -1):
            if score + below[j + 1] < theta * (1.0 - TIED):
                left_out = True
                break
            p = _seek(rows, at[j], ends[j], row)
            at[j] = p
            if p < ends[j] and rows[p] == row:
                score += weights[j] * _weight(tf[p], title[p], length, k1, b, tw, avgdl)
                at[j] = p + 1
        if score < theta * (1.0 - TIED):
            left_out = True
            continue
        if heaped < k:
            _heap_push(heap, heaped, score)
            heaped += 1
            if heaped == k:
                theta = heap[0]
        elif score > heap[0]:
            _heap_replace_top(heap, k, score)
            theta = heap[0]
        if found == len(found_rows):
            kept = _keep_reaching(found_rows, found_scores, found, theta)
            if kept > found // 2:
                grown_rows = np.empty(2 * len(found_rows), dtype=np.int32)
                grown_scores = np.empty(2 * len(found_rows))
                grown_rows[:kept] = found_rows[:kept]
                grown_scores[:kept] = found_scores[:kept]
                found_rows, found_scores = grown_rows, grown_scores
            found = kept
        found_rows[found] = row
        found_scores[found] = score
        found += 1
    for i in range(terms):
        if at[i] < ends[i]:
            left_out = True
    kept = _keep_reaching(found_rows, found_scores, found, theta)
    return found_rows[:kept].copy(), found_scores[:kept].copy(), left_out or scored > k


@njit(cache=True, nogil=True)
def scores_of(
    chosen: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int32],
    tf: npt.NDArray[np.float32],
    title: npt.NDArray[np.bool_],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float64],
    lengths: npt.NDArray[np.float64],
    k1: float,
    b: float,
    tw: float,
    avgdl: float,
) -> npt.NDArray[np.float64]:
    """The scores of the `chosen` rows (in increasing order): each term's postings are walked
    forward from one chosen row to the next by galloping search, so a few thousand rows cost a
    few thousand short searches per term, whatever the terms' postings."""
    scores = np.zeros(len(chosen))
    for i in range(len(starts)):
        at = starts[i]
        end = ends[i]
        for c in range(len(chosen)):
            row = chosen[c]
            at = _seek(rows, at, end, row)
            if at == end:
                break
            if rows[at] == row:
                scores[c] += weights[i] * _weight(tf[at], title[at], lengths[row], k1, b, tw, avgdl)
    return scores


def warm() -> None:
    """Compile (or load the compiled) loop now, not in the first search that needs it."""
    nothing = np.zeros(1, dtype=np.int64)
    top_rows(
        np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.float32), np.zeros(1, dtype=np.bool_),
        nothing, nothing + 1, np.ones(1), np.ones(1), np.ones(1), np.ones(1, dtype=np.bool_),
        1, 1.2, 0.75, 1.0, 1.0,
    )  # fmt: skip
    scores_of(
        np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.float32),
        np.zeros(1, dtype=np.bool_), nothing, nothing + 1, np.ones(1), np.ones(1),
        1.2, 0.75, 1.0, 1.0,
    )  # fmt: skip
