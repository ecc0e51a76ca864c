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
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# Past this many rows per posting read, a search adds scores up over every row rather than
# sorting its postings.
DENSE_SHARE = 16

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
        return sum(a.nbytes for a in (*arrays, *parts))

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
        return KeywordIndex(
            self.vocabulary,
            ids,
            self.document_ids[keep],
            self.lengths[keep],
            np.ones(len(keep), dtype=bool),
            base,
            row_of={int(c): r for r, c in enumerate(ids)},
            base_rows=len(ids),
        )

    def top(self, scoring: Scoring, k: int) -> Top:
        """The `k` live chunks with the highest BM25 scores (and any tied with the last of
        them), best first (ties by chunk id)."""
        k1, b = scoring.k1, scoring.b
        rows_parts: list[npt.NDArray[np.int32]] = []
        score_parts: list[Floats] = []
        for lexeme, weight in zip(scoring.lexemes, scoring.weights, strict=True):
            term = self.vocabulary.get(lexeme)
            if term is None or weight <= 0:
                continue
            for postings in (self.base, self.delta):
                part = postings.of_term(term)
                if part.stop == part.start:
                    continue
                matched = postings.rows[part]
                tf = postings.tf[part].astype(np.float64)
                if scoring.title_weight != 1:
                    tf = tf + (scoring.title_weight - 1) * postings.title[part]
                norm = k1 * (1 - b + b * self.lengths[matched] / scoring.avgdl)
                rows_parts.append(matched)
                score_parts.append(weight * tf * (k1 + 1) / (tf + norm))
        if not rows_parts:
            return Top(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), False)
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
        alive = self.live[rows]
        rows, scores = rows[alive], scores[alive]
        partial = len(rows) > k
        if partial:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            kept = scores >= kth * (1 - 1e-12)
            rows, scores = rows[kept], scores[kept]
        ids = self.chunk_ids[rows]
        order = np.lexsort((ids, -scores))
        return Top(ids[order], self.document_ids[rows][order], scores[order], partial)


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
