"""Collections: create, list, show, delete and re-embed (the last three with the `admin`
scope).

A caller sees the collections of its allow-list, and their counts only with `admin`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from sqlalchemy import Connection

from app import collections
from app.access import audit
from app.access.caller import ADMIN, SEARCH, Caller, may_use_collection
from app.api.routes.jobs import accepted, idempotency_key
from app.api.schemas import CollectionCreate, CollectionOut, JobOut, ReembedIn
from app.collections import Collection
from app.jobs.submit import submit_reembed
from app.service import Services


def to_out(c: Collection, caller: Caller) -> CollectionOut:
    out = msgspec.convert(c, CollectionOut, from_attributes=True)
    if ADMIN not in caller.scopes:
        out.documents = out.chunks = None
    return out


class CollectionController(Controller):
    path = "/v1/collections"
    tags = ["collections"]

    @get("/", sync_to_thread=True, opt={"scope": SEARCH})
    def list_collections(self, services: Services, caller: Caller) -> list[CollectionOut]:
        """Every collection the caller may use, with live document and chunk counts for
        admins."""
        with services.transaction() as conn:
            found = collections.list_all(conn)
        return [to_out(c, caller) for c in found if may_use_collection(caller, c.name)]

    @post("/", sync_to_thread=True, opt={"scope": ADMIN})
    def create_collection(
        self, data: CollectionCreate, services: Services, caller: Caller
    ) -> CollectionOut:
        """Create a collection bound to the service's embedding model."""
        embedder = services.embedder
        with services.transaction() as conn:
            created = collections.create(
                conn,
                data.name,
                embedding_model=embedder.model_id,
                embedding_dim=embedder.dimension,
                text_config=data.text_config,
                description=data.description,
                settings=data.settings,
            )
            audit.record(conn, audit.COLLECTION_CREATED, caller, created.name)
        return to_out(created, caller)

    @get("/{name:str}", sync_to_thread=True, opt={"scope": SEARCH})
    def get_collection(self, name: str, services: Services, caller: Caller) -> CollectionOut:
        """One collection (with its counts for admins)."""
        with services.transaction() as conn:
            return to_out(collections.get_with_counts(conn, name), caller)

    @delete("/{name:str}", sync_to_thread=True, opt={"scope": ADMIN})
    def delete_collection(self, name: str, services: Services, caller: Caller) -> None:
        """Delete a collection and everything in it."""

        def remove(conn: Connection) -> None:
            collections.delete(conn, name)
            audit.record(conn, audit.COLLECTION_DELETED, caller, name)

        services.write(remove)

    @post("/{name:str}/reembed", sync_to_thread=True, opt={"scope": ADMIN}, status_code=202)
    def reembed_collection(
        self,
        name: str,
        data: ReembedIn,
        services: Services,
        caller: Caller,
        request: Request[Any, Any, Any],
    ) -> Response[JobOut]:
        """Re-embed the collection with another model (or dimension), as a background job:
        searches go on with the current vectors until the new ones are all written and
        indexed, then switch at once. 202 with the job; 409 while another re-embedding of the
        collection is queued or running, or when it has that model already."""
        job = submit_reembed(
            services,
            name,
            data.model,
            data.dimension,
            key=caller,
            idempotency_key=idempotency_key(request),
        )
        return accepted(job)
