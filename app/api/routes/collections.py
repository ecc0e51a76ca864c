"""Collections: create, list, show, delete."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from sqlalchemy import Connection

from app import collections
from app.api.schemas import CollectionCreate, CollectionOut
from app.collections import Collection
from app.service import Services


def to_out(c: Collection) -> CollectionOut:
    return CollectionOut(
        name=c.name,
        description=c.description,
        embedding_model=c.embedding_model,
        embedding_dim=c.embedding_dim,
        text_config=c.text_config,
        settings=c.settings,
        created_at=c.created_at,
        documents=c.documents,
        chunks=c.chunks,
    )


class CollectionController(Controller):
    path = "/v1/collections"
    tags = ["collections"]

    @get("/", sync_to_thread=True)
    def list_collections(self, conn: Connection) -> list[CollectionOut]:
        """Every collection with its live document and chunk counts."""
        return [to_out(c) for c in collections.list_all(conn)]

    @post("/", sync_to_thread=True)
    def create_collection(
        self, data: CollectionCreate, conn: Connection, services: Services
    ) -> CollectionOut:
        """Create a collection bound to the service's embedding model."""
        created = collections.create(
            conn,
            data.name,
            embedding_model=services.embedder.model_id,
            embedding_dim=services.embedder.dimension,
            text_config=data.text_config,
            description=data.description,
            settings=data.settings,
        )
        return to_out(created)

    @get("/{name:str}", sync_to_thread=True)
    def get_collection(self, name: str, conn: Connection) -> CollectionOut:
        """One collection with its counts."""
        return to_out(collections.get_with_counts(conn, name))

    @delete("/{name:str}", sync_to_thread=True)
    def delete_collection(self, name: str, conn: Connection) -> None:
        """Delete a collection and everything in it."""
        collections.delete(conn, name)
