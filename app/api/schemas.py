"""Request and response bodies of the API, as msgspec Structs (validated on the way in)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Request bodies reject fields they do not know, so typos fail loudly."""


class CollectionCreate(Strict):
    name: str
    description: str = ""
    text_config: str = "english"


class CollectionOut(msgspec.Struct):
    name: str
    description: str
    embedding_model: str
    embedding_dim: int
    text_config: str
    created_at: datetime
    documents: int
    chunks: int


class DocumentIn(Strict):
    text: str
    id: str | None = None
    title: str = ""
    source: str | None = None
    metadata: dict[str, Any] = {}
    acl: list[str] | None = None
    published_at: datetime | None = None
    popularity: float | None = None


class IngestRequest(Strict):
    documents: list[DocumentIn]
    metadata: dict[str, Any] = {}
    acl: list[str] | None = None


class DocumentStatus(msgspec.Struct):
    id: str
    status: str
    chunks: int


class IngestResponse(msgspec.Struct):
    created: int
    updated: int
    metadata_updated: int
    unchanged: int
    chunks: int
    embedded: int
    cached: int
    seconds: float
    documents: list[DocumentStatus]


class ChunkOut(msgspec.Struct):
    id: int
    ordinal: int
    section_ordinal: int
    heading_path: list[str]
    token_count: int
    text: str


class DocumentOut(msgspec.Struct):
    id: str
    title: str
    source: str | None
    version: int
    metadata: dict[str, Any]
    acl: list[str]
    popularity: float
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    deleted_at: datetime | None
    chunks: list[ChunkOut] | None = None


class DocumentPage(msgspec.Struct):
    documents: list[DocumentOut]
    total: int
    deleted: int
    limit: int
    offset: int


class DocumentPatchIn(Strict):
    metadata: dict[str, Any] | None = None
    acl: list[str] | None = None
    popularity: float | None = None
    published_at: datetime | None = None
    source: str | None = None


class PurgeResult(msgspec.Struct):
    purged: int


class Check(msgspec.Struct):
    ok: bool
    detail: str


class Readiness(msgspec.Struct):
    ready: bool
    checks: dict[str, Check]
