"""The context of an answer: the best hits as numbered passages within a token budget.

The parent sections are read after the search in its transaction, with the same ACL
predicate as the search (and row-level security when the search ran), so a section can only
come from a document the caller may see.

A hit whose parent section is small enough is replaced by the whole section, which gives the
model the surrounding sentences; hits from one section, or whose text a passage of their
document already holds, share that passage's number instead of repeating it, and a hit whose
text a passage of another document holds (a copy) is left out. Tokens are counted with the
embedding model's tokenizer: an estimate for the chat model, which has its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from app import collections
from app.db.queries import query
from app.ingest.chunk import Tokenizer
from app.search.request import PUBLIC
from app.search.results import Hit, SearchResult

MIN_PASSAGE_TOKENS = 16


@dataclass(frozen=True)
class Section:
    """The parent section of one hit."""

    ordinal: int
    heading_path: list[str]
    text: str
    tokens: int


@dataclass
class Passage:
    """One numbered piece of the context, covering one or more hits."""

    number: int
    document_id: str
    title: str
    source: str | None
    heading_path: list[str]
    text: str
    tokens: int
    score: float
    chunk_ids: list[int] = field(default_factory=list)
    section: bool = False

    @property
    def label(self) -> str:
        """The title, then the headings (a first heading equal to the title is not repeated)."""
        title = self.title or self.document_id
        headings = self.heading_path[1:] if self.heading_path[:1] == [title] else self.heading_path
        return " › ".join([title, *headings])


def read_sections(
    conn: Connection, result: SearchResult, principals: list[str] | None
) -> dict[int, Section]:
    """The parent section of each hit, by chunk id; only of documents the principals may see."""
    if not result.hits:
        return {}
    rows = conn.execute(
        query("answer.sql", "chunk_sections"),
        {
            "collection_id": collections.get(conn, result.collection).id,
            "chunk_ids": [h.chunk_id for h in result.hits],
            "principals": sorted({*(principals or []), PUBLIC}),
        },
    ).mappings()
    return {
        r["chunk_id"]: Section(
            r["section_ordinal"], list(r["heading_path"]), r["text"], int(r["section_tokens"])
        )
        for r in rows
    }


def assemble(
    hits: list[Hit],
    sections: dict[int, Section],
    tokenizer: Tokenizer,
    *,
    budget: int,
    parent_tokens: int,
) -> list[Passage]:
    """Numbered passages from the hits, best first, within `budget` tokens in total."""
    passages: list[Passage] = []
    by_key: dict[tuple[str, str, int], Passage] = {}
    remaining = budget
    for hit in hits:
        section = sections.get(hit.chunk_id)
        keys = [(hit.document_id, "chunk", hit.chunk_id)]
        if section is not None:
            keys.append((hit.document_id, "section", section.ordinal))
        shared = next((by_key[k] for k in keys if k in by_key), None)
        shared = shared or _holding(passages, hit.text)
        if shared is not None:
            # A copy of the text in another document adds nothing; it is left out.
            if shared.document_id == hit.document_id:
                shared.chunk_ids.append(hit.chunk_id)
            continue
        fits = section is not None and section.tokens <= min(parent_tokens, remaining)
        passage = _passage(hit, section if fits else None, tokenizer, remaining)
        if passage is None:
            continue
        passage.number = len(passages) + 1
        passages.append(passage)
        by_key[keys[-1] if fits else keys[0]] = passage
        remaining -= passage.tokens
    return passages


def _holding(passages: list[Passage], text: str) -> Passage | None:
    """A passage that already contains this text (overlapping or duplicate chunks)."""
    needle = " ".join(text.split())
    return next((p for p in passages if needle in " ".join(p.text.split())), None)


def _passage(
    hit: Hit, section: Section | None, tokenizer: Tokenizer, remaining: int
) -> Passage | None:
    text = section.text if section else hit.text
    tokens = section.tokens if section else tokenizer.count(text)
    if tokens > remaining:
        if remaining < MIN_PASSAGE_TOKENS:
            return None
        text, tokens = _cut(text, tokenizer, remaining), remaining
    return Passage(
        number=0,
        document_id=hit.document_id,
        title=hit.title,
        source=hit.source,
        heading_path=section.heading_path if section else hit.heading_path,
        text=text,
        tokens=tokens,
        score=hit.score,
        chunk_ids=[hit.chunk_id],
        section=section is not None,
    )


def _cut(text: str, tokenizer: Tokenizer, tokens: int) -> str:
    """The first `tokens` tokens of `text`, ending on a token boundary."""
    spans = tokenizer.spans(text)
    return text[: spans[tokens - 1][1]] + " …" if len(spans) > tokens else text
