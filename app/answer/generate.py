"""A grounded answer: search → numbered context → chat model (or extractive) → citations.

`prepare` does the database part inside the caller's transaction: the search (through the
result cache, with the caller's filters, principals and boosts) and the parent sections of its
hits, read under the same role and row-level security. `events` then produces what a client
sees, in order: the sources, the answer as text deltas, and a final event with the citations,
usage and timings. Nothing in the context comes from outside the caller's own search.

Without a configured model the answer is extractive: the openings of the best passages, cited.
When models are configured but none can answer (each failed, or its circuit breaker is open),
the answer is extractive too, and `degraded` in the final event says why: the caller still
gets the passages that answer the question, flagged, instead of an error. A model that fails
after its first piece of text ends the answer with an error (the text already sent cannot be
taken back).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from sqlalchemy import Connection

from app.answer import prompt
from app.answer.context import Passage, assemble, read_sections
from app.answer.providers import ChatModels, Chunk, NoModelAnswered
from app.errors import Invalid
from app.ingest.chunk import Tokenizer
from app.observe.metrics import METRICS
from app.observe.tracing import detached_span
from app.search.cache import SearchCache, cached_search
from app.search.engine import Searcher
from app.search.request import Cut, SearchRequest
from app.search.results import RerankReport
from app.settings import AnswerSettings

log = structlog.get_logger(__name__)

NO_MODEL = (
    "No answer model is configured (HYBRID_ANSWER_MODELS), so this answer is extractive: "
    "the most relevant passages, quoted."
)
MODELS_DOWN = (
    "The answer models cannot answer right now, so this answer is extractive: "
    "the most relevant passages, quoted."
)
NO_SOURCES = "No passages you may see match the question, so there is nothing to answer from."
EXTRACT_PASSAGES = 3
EXTRACT_WORDS = 60
MAX_CONTEXT_TOKENS = 100_000


@dataclass
class Prepared:
    """The question with its numbered context, ready for generation."""

    collection: str
    mode: str
    question: str
    passages: list[Passage]
    timings_ms: dict[str, float]
    cache: str
    rerank: RerankReport | None = None

    @property
    def reranked(self) -> bool:
        """Whether the cross-encoder ordered at least one hit of the search."""
        return self.rerank is not None and self.rerank.scored > 0


@dataclass
class Event:
    """One step of an answer as the client sees it: sources, delta, done (or error)."""

    kind: str
    data: dict[str, Any]


@dataclass
class Answer:
    """The whole answer, as the non-streaming form returns it."""

    prepared: Prepared
    text: str
    done: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Readers:
    """What `prepare` reads with: the searcher, the answer settings, the result cache and a
    tokenizer."""

    searcher: Searcher
    answer: AnswerSettings
    cache: SearchCache
    tokenizer: Tokenizer


def prepare(
    conn: Connection,
    collection: str,
    request: SearchRequest,
    readers: Readers,
    *,
    context_tokens: int | None = None,
) -> Prepared:
    """Search and assemble the numbered context, in the caller's transaction."""
    budget = _budget(context_tokens, readers.answer.context_tokens)
    request = replace(request, offset=0, explain=False, highlight=False)
    if request.cut is None and (readers.answer.cut_relative or readers.answer.cut_gap):
        cut = Cut(relative=readers.answer.cut_relative or None, gap=readers.answer.cut_gap or None)
        request = replace(request, cut=cut)
    outcome = cached_search(conn, collection, request, readers.searcher, readers.cache)
    started = time.perf_counter()
    result = outcome.result
    sections = read_sections(conn, result, request.principals)
    passages = assemble(
        result.hits,
        sections,
        readers.tokenizer,
        budget=budget,
        parent_tokens=readers.answer.parent_tokens,
    )
    timings = {"embed": result.embed_ms, "sql": result.sql_ms}
    if result.rerank:
        timings["rerank"] = result.rerank.ms
    timings["context"] = (time.perf_counter() - started) * 1000
    return Prepared(
        result.collection,
        result.mode,
        request.query,
        passages,
        timings,
        outcome.origin,
        result.rerank,
    )


def _budget(asked: int | None, default: int) -> int:
    if asked is None:
        return default
    if (
        isinstance(asked, bool)
        or not isinstance(asked, int)
        or not 64 <= asked <= MAX_CONTEXT_TOKENS
    ):
        raise Invalid(
            f"context_tokens: expected 64 to {MAX_CONTEXT_TOKENS}, got {asked!r}",
            field="context_tokens",
        )
    return asked


def events(prepared: Prepared, chat: ChatModels | None) -> Iterator[Event]:
    """Sources, then the answer's deltas, then `done`; a model failing mid-answer raises
    `UpstreamError` after the deltas it sent."""
    started = time.perf_counter()
    yield Event("sources", sources_data(prepared))
    generated = _generate(prepared, chat)
    model: str | None = None
    usage: dict[str, int] | None = None
    degraded: str | None = None
    first_token_ms: float | None = None
    text: list[str] = []
    for chunk in generated:
        model = chunk.model or model
        usage = chunk.usage or usage
        degraded = chunk.degraded or degraded
        if chunk.text:
            if first_token_ms is None:
                first_token_ms = (time.perf_counter() - started) * 1000
            text.append(chunk.text)
            yield Event("delta", {"text": chunk.text})
    timings = {
        **prepared.timings_ms,
        "first_token": first_token_ms,
        "generation": (time.perf_counter() - started) * 1000,
    }
    yield Event(
        "done",
        {
            "cited": prompt.cited("".join(text), len(prepared.passages)),
            "model": model,
            "extractive": model is None and bool(prepared.passages),
            "degraded": degraded,
            "usage": usage,
            "timings_ms": {k: round(v, 3) for k, v in timings.items() if v is not None},
            "cache": prepared.cache,
        },
    )


def answer(prepared: Prepared, chat: ChatModels | None) -> Answer:
    """The same events, collected."""
    result = Answer(prepared, "")
    parts = []
    for event in events(prepared, chat):
        if event.kind == "delta":
            parts.append(event.data["text"])
        elif event.kind == "done":
            result.done = event.data
    result.text = "".join(parts)
    return result


def _generate(prepared: Prepared, chat: ChatModels | None) -> Iterator[Chunk]:
    if not prepared.passages:
        yield Chunk(text=NO_SOURCES)
    elif chat is None:
        yield Chunk(text=extractive(prepared.passages, NO_MODEL))
    else:
        try:
            with detached_span("answer.generate"):
                yield from chat.stream(prompt.messages(prepared.question, prepared.passages))
        except NoModelAnswered as exc:  # raised before any text: nothing to take back
            log.warning("answer models unavailable, answering extractively", reason=exc.message)
            METRICS.observe_fallback("extractive")
            yield Chunk(text=extractive(prepared.passages, MODELS_DOWN), degraded=exc.message)


def extractive(passages: list[Passage], why: str) -> str:
    """`why`, then the opening of the best passages, each with its citation."""
    quotes = [f"[{p.number}] {_opening(p.text)}" for p in passages[:EXTRACT_PASSAGES]]
    return "\n\n".join([why, *quotes])


def _opening(text: str) -> str:
    words = re.sub(r"\s+", " ", text).strip().split(" ")
    return " ".join(words[:EXTRACT_WORDS]) + (" …" if len(words) > EXTRACT_WORDS else "")


def source_data(p: Passage) -> dict[str, Any]:
    return {
        "number": p.number,
        "document_id": p.document_id,
        "chunk_ids": p.chunk_ids,
        "title": p.title,
        "source": p.source,
        "heading_path": p.heading_path,
        "text": p.text,
        "score": p.score,
        "section": p.section,
    }


def sources_data(prepared: Prepared) -> dict[str, Any]:
    """The data of the `sources` event: the search (mode, whether reranked) and the passages."""
    return {
        "collection": prepared.collection,
        "mode": prepared.mode,
        "question": prepared.question,
        "reranked": prepared.reranked,
        "rerank": _rerank_data(prepared.rerank) if prepared.rerank else None,
        "sources": [source_data(p) for p in prepared.passages],
    }


def _rerank_data(report: RerankReport) -> dict[str, Any]:
    fields = ("model", "depth", "scored", "complete")
    return {name: getattr(report, name) for name in fields}
