"""Search: `POST /v1/search` with the full request, `GET /v1/search` for quick tries."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get, post
from litestar.params import Parameter

from app.access.caller import SEARCH, Caller
from app.api.auth import scoped
from app.api.logged import Recording, describe_request, describe_search, new_entry
from app.api.schemas import ExplainOut, HitOut, RerankOut, Retrieval, SearchIn, SearchOut
from app.search.cache import cached_search
from app.search.request import SearchRequest
from app.search.results import SearchResult
from app.service import Services

SEARCH_POST = (
    "Hybrid (optionally reranked), keyword or vector search with filters, ACL principals, "
    "boosts and explain."
)


# Named explicitly: the handler is wrapped for the thread pool before Litestar reads its name.
@post(
    "/v1/search",
    sync_to_thread=True,
    status_code=200,
    tags=["search"],
    opt={"scope": SEARCH},
    operation_id="V1SearchSearchPost",
    summary="SearchPost",
    description=SEARCH_POST,
)
def search_post(data: SearchIn, services: Services, caller: Caller) -> SearchOut:
    """Hybrid (optionally reranked), keyword or vector search with filters, ACL principals,
    boosts and explain."""
    return run(services, caller, data.collection, to_request(data))


@get("/v1/search", sync_to_thread=True, tags=["search"], opt={"scope": SEARCH})
def search_get(
    services: Services,
    caller: Caller,
    collection: str,
    q: Annotated[str, Parameter(description="Query text")],
    mode: str | None = None,
    k: int = 10,
    offset: int = 0,
    principal: Annotated[list[str] | None, Parameter(description="Repeatable")] = None,
    explain: bool = False,
    rerank_depth: int | None = None,
    vector_backend: str | None = None,
) -> SearchOut:
    """The same search from a URL: `?collection=docs&q=reset+password&k=5`."""
    request = SearchRequest(
        query=q,
        mode=mode,
        k=k,
        offset=offset,
        principals=principal,
        explain=explain,
        rerank_depth=rerank_depth,
        vector_backend=vector_backend,
    )
    return run(services, caller, collection, request)


def to_request(data: Retrieval) -> SearchRequest:
    """The engine's request, read field by field from the body (its shape is the body's)."""
    return msgspec.convert(data, SearchRequest, from_attributes=True)


def run(services: Services, caller: Caller, collection: str, asked: SearchRequest) -> SearchOut:
    """The search as `caller` may make it, logged however it ends."""
    entry = new_entry("search", caller, collection, asked.query)
    with Recording(services.query_log, entry):
        request = scoped(caller, collection, asked)
        describe_request(entry, request)
        with services.transaction() as conn:
            outcome = cached_search(
                conn, collection, request, services.searcher(), services.search_cache
            )
        describe_search(entry, outcome.result, outcome.origin)
        return to_out(outcome.result, cache=outcome.origin, search_id=str(entry.id))


def to_out(result: SearchResult, *, cache: str = "computed", search_id: str = "") -> SearchOut:
    hits = [
        HitOut(
            chunk_id=h.chunk_id,
            document_id=h.document_id,
            title=h.title,
            source=h.source,
            metadata=h.metadata,
            heading_path=h.heading_path,
            text=h.text,
            highlight=h.highlight,
            score=h.score,
            rerank_score=h.rerank_score,
            explain=msgspec.convert(h.explain, ExplainOut) if h.explain else None,
        )
        for h in result.hits
    ]
    timings = {"embed": round(result.embed_ms, 3), "sql": round(result.sql_ms, 3)}
    if result.faiss_ms:
        timings["faiss"] = round(result.faiss_ms, 3)
    if result.keyword_index_ms:
        timings["keyword_index"] = round(result.keyword_index_ms, 3)
    report = result.rerank
    if report:
        timings["rerank"] = round(report.ms, 3)
    return SearchOut(
        search_id=search_id,
        collection=result.collection,
        mode=result.mode,
        hits=hits,
        timings_ms=timings,
        reranked=result.reranked,
        rerank=RerankOut(
            model=report.model, depth=report.depth, scored=report.scored, complete=report.complete
        )
        if report
        else None,
        cache=cache,
        vector_backend=result.vector_backend,
        vector_cache_fresh=result.fresh,
        keyword_backend=result.keyword_backend,
        uncut=result.uncut,
    )
