"""What the query log records of an API search or answer: one `Entry`, filled in as the request
goes (who asked what, what came back, what each stage took) and recorded when it ends, however
it ends: a refused or failed request is logged with its status and error too."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from app.access.caller import Caller
from app.answer.generate import Prepared
from app.errors import HybridError
from app.observe.context import CURRENT, note_search
from app.observe.metrics import METRICS
from app.querylog.log import Entry, QueryLog
from app.search.request import SearchRequest
from app.search.results import SearchResult

# The most of a query the log keeps (longer ones are refused anyway: HYBRID_SEARCH_MAX_QUERY_CHARS
# is checked after the entry is made).
LOGGED_QUERY_CHARS = 2000


class Recording:
    """Records `entry` when the `with` block ends, with its total time and, if the block
    raised, the status and message of the error; unless the block handed the recording off
    (a streamed answer records itself when its stream ends)."""

    def __init__(self, log: QueryLog, entry: Entry) -> None:
        self.log = log
        self.entry = entry
        self.started = time.perf_counter()
        self.handed_off = False
        # The request it belongs to, taken now: a stream may end (or be collected) elsewhere.
        self.request = CURRENT.get()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is not None:
            self.failed(exc)
        if exc is not None or not self.handed_off:
            self.finish()

    def failed(self, exc: BaseException) -> None:
        """The status and the kind of error, with the field it names: not its message, which
        may quote what was asked (a principal's name, a filter value)."""
        if isinstance(exc, HybridError):
            field = f" ({exc.field})" if exc.field else ""
            self.entry.status, self.entry.error = exc.status, f"{exc.title}{field}"[:300]
        else:
            self.entry.status, self.entry.error = 500, "Internal error"

    def finish(self) -> None:
        """Record the entry, count it (metrics) and tell the request's log line about it."""
        entry = self.entry
        entry.total_ms = (time.perf_counter() - self.started) * 1000
        self.log.record(entry)
        stages = {
            "embed": entry.embed_ms,
            "faiss": entry.faiss_ms,
            "sql": entry.sql_ms,
            "rerank": entry.rerank_ms,
            "generation": entry.generation_ms,
            "total": entry.total_ms,
        }
        METRICS.observe_search(
            entry.kind, entry.mode, entry.status, entry.hits, stages, entry.cache,
            entry.vector_backend,
        )  # fmt: skip
        note_search(self.request, str(entry.id), stages)


def new_entry(kind: str, caller: Caller, collection: str, query: str) -> Entry:
    """An entry for a request as given (checked later: the text is cut and cleaned here)."""
    return Entry(
        kind=kind,
        collection=_text(collection, 200),
        query=_text(query, LOGGED_QUERY_CHARS),
        status=200,
        total_ms=0.0,
        key_id=caller.key_id,
        key_prefix=caller.prefix or None,
        subject=caller.subject,
    )


def describe_request(entry: Entry, request: SearchRequest) -> None:
    """The request as the engine runs it (scoped: the caller's principals and filter in)."""
    mode = request.mode
    entry.mode = mode[:40] if isinstance(mode, str) else None  # as asked: checked later
    entry.k, entry.page_offset = _int4(request.k), _int4(request.offset)
    entry.filter = request.filter
    boosts = dataclasses.asdict(request.boosts) if request.boosts else None
    entry.boosts = {name: value for name, value in (boosts or {}).items() if value} or None
    entry.principals = request.principals


def describe_search(entry: Entry, result: SearchResult, cache: str) -> None:
    entry.mode = result.mode
    entry.embed_ms, entry.sql_ms = result.embed_ms, result.sql_ms
    entry.faiss_ms = result.faiss_ms or None
    entry.rerank_ms = result.rerank.ms if result.rerank else None
    entry.hits = len(result.hits)
    entry.chunk_ids = [hit.chunk_id for hit in result.hits]
    entry.document_ids = [hit.document_id for hit in result.hits]
    entry.cache, entry.vector_backend = cache, result.vector_backend


def describe_answer(entry: Entry, prepared: Prepared, done: dict[str, Any]) -> None:
    """The answer's search (its passages, best first) and its generation."""
    describe_passages(entry, prepared)
    describe_generation(entry, prepared, done)


def describe_passages(entry: Entry, prepared: Prepared) -> None:
    """The answer's search: known before the first word is generated."""
    entry.mode = prepared.mode
    timings = prepared.timings_ms
    entry.embed_ms, entry.sql_ms = timings.get("embed"), timings.get("sql")
    entry.rerank_ms = timings.get("rerank")
    entry.cache = prepared.cache
    chunks = [(c, p.document_id) for p in prepared.passages for c in p.chunk_ids]
    entry.hits = len(prepared.passages)
    entry.chunk_ids = [chunk for chunk, _ in chunks]
    entry.document_ids = [document for _, document in chunks]


def describe_generation(entry: Entry, prepared: Prepared, done: dict[str, Any]) -> None:
    entry.generation_ms = done.get("timings_ms", {}).get("generation")
    entry.model = done.get("model")
    entry.extractive = done.get("extractive")
    entry.fallback = done.get("degraded") is not None
    usage = done.get("usage") or {}
    entry.prompt_tokens = usage.get("prompt_tokens")
    entry.completion_tokens = usage.get("completion_tokens")
    cited = set(done.get("cited", []))
    entry.cited_chunk_ids = [c for p in prepared.passages if p.number in cited for c in p.chunk_ids]


def _text(value: str, limit: int) -> str:
    """At most `limit` characters, without NUL (which PostgreSQL text cannot hold)."""
    return value[:limit].replace("\x00", " ")


def _int4(value: Any) -> int | None:
    """An integer as the log's `integer` columns hold it (None when it cannot be one)."""
    return value if isinstance(value, int) and -(2**31) <= value < 2**31 else None
