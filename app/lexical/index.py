"""One collection's keyword postings in memory, and an exact BM25 top-k over them.

The postings are the chunks' stored tsvectors, read from the table (same lexemes as the SQL
leg: PostgreSQL's own parser and dictionaries made them). Per posting: the chunk's row, the
lexeme's frequency in the chunk (its position count, as the SQL leg counts it) and whether
one of its positions is in the title or headings (weight A). Per row: the chunk id, its
document's id, its BM25 length and whether it is still live.

Scores use the weights and average length the caller passes, read from the same tables the
SQL leg reads (`term_stats`, `corpus_stats`), so that a score here is the score there (tested
chunk by chunk on a real test collection).

An index is immutable once made: `apply` returns a new one (sharing the unchanged arrays),
so a search holding an index and its position never sees a later change. Inserted chunks go to
a delta beside the base postings; `compacted` folds the delta in and drops deleted rows.

The top-k is exact, and on large collections it does not score every matching chunk. Once
`ordered` with a collection's BM25 parameters, each long term knows the heaviest weight among
its postings, and a search whose terms have many postings runs MaxScore over them
(app/lexical/maxscore.py): chunks that cannot reach the k best are skipped, never scored.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from app.lexical.maxscore import scores_of, top_rows

# Past this many rows per posting read, a search adds scores up over every row rather than
# sorting its postings.
DENSE_SHARE = 16
# Terms with more base postings than this have their bound computed once (see `ordered`);
# a search computes the others'.
LONG_TERM = 4_096
# A search whose terms have fewer base postings than this reads them all (no pruning).
PRUNE_FROM = 50_000
# Margin on the bound of unread chunks (floating-point sums in another order).
BOUND_SLACK = 1e-9

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
# A lexeme of a chunk: the lexeme, its frequency, whether it is in the title or headings.
Posting = tuple[str, int, bool]
# A chunk: its id, its document's id, its BM25 length and its lexemes.
Chunk = tuple[int, int, int, Sequence[Posting]]


@dataclass(frozen=True)
class Top:
    """The best chunks, best first: ids, their documents and scores; and whether the list is
    partial, i.e. more chunks match some query term than were returned."""

    ids: Ints
    documents: Ints
    scores: Floats
    partial: bool


@dataclass(frozen=True)
class Postings:
    """Postings in compressed sparse rows by term id: term t's are `rows[offsets[t]:offsets[t
    + 1]]`, with their frequencies and title flags."""

    offsets: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int32]
    tf: npt.NDArray[np.float32]
    title: npt.NDArray[np.bool_]

    @classmethod
    def empty(cls) -> Postings:
        nothing = np.empty(0, np.int64)
        return cls.of(nothing, nothing.astype(np.int32), np.empty(0), nothing.astype(bool), 0)

    @classmethod
    def of(
        cls,
        terms: npt.NDArray[np.int64],
        rows: npt.NDArray[np.int32],
        tf: npt.NDArray[np.floating],
        title: npt.NDArray[np.bool_],
        vocabulary: int,
    ) -> Postings:
        order = np.argsort(terms, kind="stable")
        counts = np.bincount(terms, minlength=vocabulary) if len(terms) else np.zeros(vocabulary)
        offsets = np.zeros(vocabulary + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            offsets,
            rows[order].astype(np.int32),
            tf[order].astype(np.float32),
            title[order].astype(bool),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def terms(self) -> npt.NDArray[np.int64]:
        """Each posting's term id."""
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))

    def of_term(self, term: int) -> slice:
        if term + 1 >= len(self.offsets):
            return slice(0, 0)
        return slice(int(self.offsets[term]), int(self.offsets[term + 1]))


@dataclass(frozen=True)
class Impacts:
    """Per long term, its heaviest base posting's BM25 weight (idf aside) under the
    parameters the index was ordered with: a bound on what the term adds to a score."""

    k1: float
    b: float
    title_weight: float
    avgdl: float
    most: dict[int, float]

    def serves(self, scoring: Scoring) -> bool:
        return (self.k1, self.b, self.title_weight) == (
            scoring.k1,
            scoring.b,
            scoring.title_weight,
        )

    def slack(self, avgdl: float) -> float:
        """How much more a posting may weigh at the search's average length than at the one
        it was ordered with. A weight `tf (k1+1) / (tf + k1 (1-b) + k1 b len/avgdl)` grows with
        avgdl, at most in its ratio; so a bound at the ordering's avgdl times max(1, ratio) is a
        bound at the search's."""
        return max(1.0, avgdl / self.avgdl) * (1 + BOUND_SLACK)

    @property
    def nbytes(self) -> int:
        return 16 * len(self.most)


@dataclass(frozen=True)
class Scoring:
    """BM25's parameters for one search (the statement's `k1`, `b`, `title_weight`), the
    collection's average chunk length, and the query's terms with their weights (idf times
    query term frequency)."""

    lexemes: Sequence[str]
    weights: Sequence[float]
    avgdl: float
    k1: float = 1.2
    b: float = 0.75
    title_weight: float = 1.0


@dataclass(frozen=True)
class KeywordIndex:
    """See the module docstring."""

    vocabulary: dict[str, int]
    chunk_ids: Ints
    document_ids: Ints
    lengths: Floats
    live: npt.NDArray[np.bool_]
    base: Postings
    delta: Postings = field(default_factory=Postings.empty)
    row_of: dict[int, int] = field(default_factory=dict)
    # Rows in the base postings; rows past them are in the delta.
    base_rows: int = 0
    impacts: Impacts | None = None
    # Documents with a live chunk when the index was built or compacted (an estimate after).
    document_count: int = 0

    @classmethod
    def build(cls, chunks: Iterable[Chunk]) -> KeywordIndex:
        """From (chunk id, document id, length, [(lexeme, frequency, in title)]) per chunk."""
        builder = _Builder({})
        for chunk in chunks:
            builder.add(*chunk)
        vocabulary, ids, documents, lengths, postings = builder.result()
        return cls(
            vocabulary,
            ids,
            documents,
            lengths,
            np.ones(len(ids), dtype=bool),
            postings,
            row_of={int(c): r for r, c in enumerate(ids)},
            base_rows=len(ids),
            document_count=len(np.unique(documents)),
        )

    @property
    def size(self) -> int:
        """Live chunks."""
        return int(self.live.sum())

    @property
    def rows(self) -> int:
        return len(self.chunk_ids)

    @property
    def postings(self) -> int:
        return len(self.base) + len(self.delta)

    @property
    def delta_rows(self) -> int:
        return self.rows - self.base_rows

    @property
    def dead(self) -> int:
        return self.rows - self.size

    @property
    def nbytes(self) -> int:
        arrays = (self.chunk_ids, self.document_ids, self.lengths, self.live)
        parts = [p for s in (self.base, self.delta) for p in (s.offsets, s.rows, s.tf, s.title)]
        ordered = self.impacts.nbytes if self.impacts is not None else 0
        return sum(a.nbytes for a in (*arrays, *parts)) + ordered

    def ordered(self, k1: float, b: float, title_weight: float) -> KeywordIndex:
        """The same index with each long term's bound (its heaviest posting's weight) under
        these BM25 parameters, for MaxScore (searches with other parameters score every
        match)."""
        live = self.lengths[: self.base_rows][self.live[: self.base_rows]]
        avgdl = float(live.mean()) if len(live) else 1.0
        most: dict[int, float] = {}
        for term in np.flatnonzero(np.diff(self.base.offsets) > LONG_TERM).tolist():
            most[term] = self._heaviest(term, k1, b, title_weight, avgdl)
        impacts = Impacts(k1, b, title_weight, avgdl, most)
        return dataclasses.replace(self, impacts=impacts)

    def apply(self, inserted: Iterable[Chunk], deleted: Iterable[int]) -> KeywordIndex:
        """A new index with these chunks deleted (unknown ids are ignored), then these
        inserted (an id already here is replaced)."""
        live = self.live.copy()
        row_of = dict(self.row_of)
        for chunk_id in deleted:
            row = row_of.pop(chunk_id, None)
            if row is not None:
                live[row] = False
        # The vocabulary only grows, and an index never reads term ids past its own postings:
        # the new index adds to the same dictionary.
        builder = _Builder(self.vocabulary, first_row=self.rows)
        for chunk in inserted:
            if (row := row_of.pop(chunk[0], None)) is not None:
                live[row] = False
            builder.add(*chunk)
        vocabulary, ids, documents, lengths, added = builder.result()
        if not len(ids):
            return dataclasses.replace(self, live=live, row_of=row_of)
        for offset, chunk_id in enumerate(ids):
            row_of[int(chunk_id)] = self.rows + offset
        delta = _merge(self.delta, added, len(vocabulary))
        return KeywordIndex(
            vocabulary,
            np.concatenate([self.chunk_ids, ids]),
            np.concatenate([self.document_ids, documents]),
            np.concatenate([self.lengths, lengths]),
            np.concatenate([live, np.ones(len(ids), dtype=bool)]),
            self.base,
            delta,
            row_of,
            self.base_rows,
            self.impacts,
            self.document_count,
        )

    def compacted(self) -> KeywordIndex:
        """The same chunks with the delta folded into the base and deleted rows dropped."""
        keep = np.flatnonzero(self.live)
        new_row = np.full(self.rows, -1, dtype=np.int64)
        new_row[keep] = np.arange(len(keep))
        parts = [(p.terms(), p.rows, p.tf, p.title) for p in (self.base, self.delta)]
        terms, rows, tf, title = (np.concatenate([p[i] for p in parts]) for i in range(4))
        alive = self.live[rows]
        base = Postings.of(
            terms[alive], new_row[rows[alive]].astype(np.int32), tf[alive], title[alive],
            len(self.vocabulary),
        )  # fmt: skip
        ids = self.chunk_ids[keep]
        compacted = KeywordIndex(
            self.vocabulary,
            ids,
            self.document_ids[keep],
            self.lengths[keep],
            np.ones(len(keep), dtype=bool),
            base,
            row_of={int(c): r for r, c in enumerate(ids)},
            base_rows=len(ids),
            document_count=len(np.unique(self.document_ids[keep])),
        )
        if self.impacts is None:
            return compacted
        impacts = self.impacts
        return compacted.ordered(impacts.k1, impacts.b, impacts.title_weight)

    def top(self, scoring: Scoring, k: int, documents: Ints | None = None) -> Top:
        """The `k` live chunks with the highest BM25 scores (and any tied with the last of
        them), best first (ties by chunk id); with `documents`, only chunks of those documents.

        Restricted to documents that hold fewer chunks than the query's terms have postings,
        the index scores those chunks alone (looking each up in every term's postings);
        otherwise it reads the postings and skips the chunks of other documents."""
        terms = [
            (term, weight)
            for lexeme, weight in zip(scoring.lexemes, scoring.weights, strict=True)
            if (term := self.vocabulary.get(lexeme)) is not None and weight > 0
        ]
        live = self.live
        postings = sum(_length(self.base, term) for term, _ in terms)
        if documents is not None:
            live = live & np.isin(self.document_ids, documents)
            chosen = np.flatnonzero(live[: self.base_rows])
            if len(chosen) * max(len(terms), 1) <= postings:
                return self._chosen(scoring, terms, chosen, live, k)
        impacts = self.impacts
        if (
            impacts is not None
            and impacts.serves(scoring)
            and any(term in impacts.most for term, _ in terms)
            and postings >= PRUNE_FROM
        ):
            return self._pruned(scoring, terms, impacts, k, live)
        rows, scores = self._scored(scoring, terms, (self.base, self.delta))
        return self._best(rows, scores, k, 0.0, live)

    def _chosen(
        self,
        scoring: Scoring,
        terms: Sequence[tuple[int, float]],
        chosen: Ints,
        live: npt.NDArray[np.bool_],
        k: int,
    ) -> Top:
        """`top` over these base rows (and the delta's live rows), each scored by looking it
        up in the terms' postings."""
        parts = [self.base.of_term(term) for term, _ in terms]
        scores = scores_of(
            chosen, self.base.rows, self.base.tf, self.base.title,
            np.array([part.start for part in parts], dtype=np.int64),
            np.array([part.stop for part in parts], dtype=np.int64),
            np.array([weight for _, weight in terms], dtype=np.float64),
            self.lengths, scoring.k1, scoring.b, scoring.title_weight, scoring.avgdl,
        )  # fmt: skip
        matched = scores > 0
        delta_rows, delta_scores = self._scored(scoring, terms, (self.delta,))
        rows = np.concatenate([chosen[matched], delta_rows])
        return self._best(rows, np.concatenate([scores[matched], delta_scores]), k, 0.0, live)

    def _scored(
        self,
        scoring: Scoring,
        terms: Sequence[tuple[int, float]],
        sets: Sequence[Postings],
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Every chunk with a posting of these terms in these postings, and its score (summed
        over those postings)."""
        rows_parts: list[npt.NDArray[np.int32]] = []
        score_parts: list[Floats] = []
        for term, weight in terms:
            for postings in sets:
                part = postings.of_term(term)
                if part.stop == part.start:
                    continue
                matched = postings.rows[part]
                rows_parts.append(matched)
                score_parts.append(
                    weight * _weights(postings.tf[part], postings.title[part],
                                      self.lengths[matched], scoring.k1, scoring.b,
                                      scoring.title_weight, scoring.avgdl)
                )  # fmt: skip
        if not rows_parts:
            return np.empty(0, np.int32), np.empty(0)
        rows: npt.NDArray[Any] = np.concatenate(rows_parts)
        scores: npt.NDArray[Any] = np.concatenate(score_parts)
        if len(rows_parts) > 1 and len(rows) * DENSE_SHARE >= self.rows:
            # Many postings: add them up over every row (a linear pass), keep the matches.
            dense = np.bincount(rows, weights=scores, minlength=self.rows)
            rows = np.flatnonzero(dense).astype(np.int32)
            scores = dense[rows]
        elif len(rows_parts) > 1:
            rows, where = np.unique(rows, return_inverse=True)
            scores = np.bincount(where, weights=scores, minlength=len(rows))
        return rows, scores

    def _pruned(
        self,
        scoring: Scoring,
        terms: Sequence[tuple[int, float]],
        impacts: Impacts,
        k: int,
        live: npt.NDArray[np.bool_],
    ) -> Top:
        """`top` by MaxScore over the base postings (app/lexical/maxscore.py), with the
        delta's chunks (which have no base postings) scored in full beside it."""
        slack = impacts.slack(scoring.avgdl)
        bounded = sorted(
            (weight * slack * self._bound(term, impacts), term, weight) for term, weight in terms
        )
        parts = [self.base.of_term(term) for _, term, _ in bounded]
        rows, scores, left_out = top_rows(
            self.base.rows, self.base.tf, self.base.title,
            np.array([part.start for part in parts], dtype=np.int64),
            np.array([part.stop for part in parts], dtype=np.int64),
            np.array([weight for _, _, weight in bounded]),
            np.array([bound for bound, _, _ in bounded]),
            self.lengths, live, k,
            scoring.k1, scoring.b, scoring.title_weight, scoring.avgdl,
        )  # fmt: skip
        delta_rows, delta_scores = self._scored(scoring, terms, (self.delta,))
        rows = np.concatenate([rows, delta_rows])
        scores = np.concatenate([scores, delta_scores])
        return self._best(rows, scores, k, float(left_out), live)

    def _bound(self, term: int, impacts: Impacts) -> float:
        """The term's heaviest posting weight under the ordering's parameters: kept for long
        terms, computed for the others."""
        if term in impacts.most:
            return impacts.most[term]
        return self._heaviest(term, impacts.k1, impacts.b, impacts.title_weight, impacts.avgdl)

    def _heaviest(self, term: int, k1: float, b: float, title_weight: float, avgdl: float) -> float:
        """The heaviest BM25 weight (idf aside) among the term's base postings."""
        part = self.base.of_term(term)
        if part.stop == part.start:
            return 0.0
        matched = self.base.rows[part]
        weights = _weights(self.base.tf[part], self.base.title[part], self.lengths[matched],
                           k1, b, title_weight, avgdl)  # fmt: skip
        return float(weights.max())

    def _best(
        self,
        rows: npt.NDArray[Any],
        scores: npt.NDArray[Any],
        k: int,
        partial_beyond: float,
        live: npt.NDArray[np.bool_],
    ) -> Top:
        """The best `k` of these rows that are `live` (and ties with the last); partial when
        more rows matched, or when chunks not read may match (`partial_beyond` > 0)."""
        alive = live[rows]
        rows, scores = rows[alive], scores[alive]
        partial = len(rows) > k or partial_beyond > 0
        if len(rows) > k:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            kept = scores >= kth * (1 - 1e-12)
            rows, scores = rows[kept], scores[kept]
        ids = self.chunk_ids[rows]
        order = np.lexsort((ids, -scores))
        return Top(ids[order], self.document_ids[rows][order], scores[order], partial)


def _weights(
    tf: npt.NDArray[Any],
    title: npt.NDArray[np.bool_],
    lengths: Floats,
    k1: float,
    b: float,
    title_weight: float,
    avgdl: float,
) -> Floats:
    """BM25's term weight of postings, idf aside (the SQL leg's formula)."""
    counts = tf.astype(np.float64)
    if title_weight != 1:
        counts = counts + (title_weight - 1) * title
    norm = k1 * (1 - b + b * lengths / avgdl)
    result: Floats = counts * (k1 + 1) / (counts + norm)
    return result


def _length(postings: Postings, term: int) -> int:
    part = postings.of_term(term)
    return int(part.stop - part.start)


class _Builder:
    """Postings of chunks added one at a time, into compact flat arrays (a million chunks have
    some sixty million postings: Python lists of them would take gigabytes), then sorted once."""

    def __init__(self, vocabulary: dict[str, int], first_row: int = 0) -> None:
        self.vocabulary = vocabulary
        self.first_row = first_row
        self.ids = array("q")
        self.documents = array("q")
        self.lengths = array("d")
        self.terms = array("i")
        self.rows = array("i")
        self.tf = array("H")
        self.title = array("B")

    def add(self, chunk_id: int, document_id: int, length: int, lexemes: Sequence[Posting]) -> None:
        row = self.first_row + len(self.ids)
        self.ids.append(chunk_id)
        self.documents.append(document_id)
        self.lengths.append(length)
        vocabulary = self.vocabulary
        for lexeme, tf, title in lexemes:
            term = vocabulary.get(lexeme)
            if term is None:
                term = vocabulary[lexeme] = len(vocabulary)
            self.terms.append(term)
            self.rows.append(row)
            # A tsvector keeps at most 256 positions per lexeme.
            self.tf.append(min(tf, 65_535))
            self.title.append(title)

    def result(self) -> tuple[dict[str, int], Ints, Ints, Floats, Postings]:
        postings = Postings.of(
            np.frombuffer(self.terms, dtype=np.int32).astype(np.int64),
            np.frombuffer(self.rows, dtype=np.int32),
            np.frombuffer(self.tf, dtype=np.uint16),
            np.frombuffer(self.title, dtype=np.uint8).astype(bool),
            len(self.vocabulary),
        )
        return (
            self.vocabulary,
            np.frombuffer(self.ids, dtype=np.int64).copy(),
            np.frombuffer(self.documents, dtype=np.int64).copy(),
            np.frombuffer(self.lengths, dtype=np.float64).copy(),
            postings,
        )


def _merge(old: Postings, new: Postings, vocabulary: int) -> Postings:
    """Two sets of postings as one (the delta grows by what was inserted)."""
    terms = np.concatenate([old.terms(), new.terms()])
    return Postings.of(
        terms,
        np.concatenate([old.rows, new.rows]),
        np.concatenate([old.tf, new.tf]),
        np.concatenate([old.title, new.title]),
        vocabulary,
    )
