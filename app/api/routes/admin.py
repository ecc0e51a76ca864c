"""Admin routes of the in-process indexes: the vector cache's status and rebuilds (the CLI's
`hybrid index`), the keyword index's status."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.openapi.datastructures import ResponseSpec

from app import collections
from app.access.caller import ADMIN
from app.ann.cache import VectorCache
from app.errors import Unavailable
from app.service import Services


def _cache(services: Services) -> VectorCache:
    cache = services.vector_cache
    if cache is None or not cache.started:
        raise Unavailable(
            "vector cache: off in this process (HYBRID_FAISS_CACHE=false); searches use pgvector",
            field="vector_cache",
        )
    return cache


class IndexController(Controller):
    path = "/v1/admin/index"
    tags = ["admin"]

    @get("/", sync_to_thread=True, opt={"scope": ADMIN})
    def index_status(self, services: Services) -> list[dict[str, Any]]:
        """Every collection's cache: state, index type, vectors, tombstones, lag behind the
        change log (changes and seconds)."""
        cache = _cache(services)
        cache.refresh_lag()
        return cache.status()

    @get("/keyword", sync_to_thread=True, opt={"scope": ADMIN})
    def keyword_index_status(self, services: Services) -> list[dict[str, Any]]:
        """Every collection's in-process keyword index: state, chunks, terms, postings, memory
        in bytes, chunks deleted or added since it was last compacted, build time, changes
        applied since."""
        cache = services.keyword_cache
        if cache is None or not cache.started:
            raise Unavailable(
                "keyword index: off in this process (HYBRID_KEYWORD_CACHE=false); the keyword "
                "leg reads the GIN index",
                field="keyword_cache",
            )
        return cache.status()

    @post(
        "/{name:str}/rebuild",
        sync_to_thread=True,
        opt={"scope": ADMIN},
        status_code=202,
        responses={
            200: ResponseSpec(
                data_container=dict[str, Any],
                generate_examples=False,
                description="Rebuilt and swapped in (`?wait=true`)",
            )
        },
    )
    def index_rebuild(
        self, name: str, services: Services, wait: bool = False
    ) -> Response[dict[str, Any]]:
        """Build the collection's index again from the table and swap it in when done
        (`?wait=true` answers only then, with 200)."""
        cache = _cache(services)
        with services.transaction() as conn:
            found = collections.get(conn, name)
        cache.rebuild(found.id, wait=wait)
        row = next(r for r in cache.status() if r["collection"] == found.name)
        return Response(row, status_code=200 if wait else 202)
