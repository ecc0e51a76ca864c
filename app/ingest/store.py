"""The store step: one transaction writes a batch of documents, their sections and chunks.

Documents are upserted in one statement; the old chunks of re-ingested documents are deleted
and new sections and chunks go in with binary COPY; the change log records every chunk that
left or arrived. The caller owns the transaction, so a failure anywhere leaves every
document of the batch at its previous version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg import Connection as PgConnection
from sqlalchemy import Connection, RowMapping

from app.collections import VECTOR_COLUMNS, Collection
from app.db.engine import driver_connection
from app.db.queries import query
from app.ingest.model import Chunk, Section, chunk_context

SECTION_COLUMNS = ("collection_id", "document_id", "ordinal", "heading_path", "text")
SECTION_TYPES = ("bigint", "bigint", "integer", "text[]", "text")
CHUNK_COLUMNS = (
    "collection_id", "document_id", "ordinal", "section_ordinal", "heading_path",
    "context", "text", "token_count", "text_config",
)  # fmt: skip
# ... and the vector, into the collection's vector column.
# regconfig travels as its OID: the binary form of both types is the same four bytes.
CHUNK_TYPES = (
    "bigint", "bigint", "integer", "integer", "text[]", "text", "text", "integer", "oid", "vector",
)  # fmt: skip


# What a document stores beside its content (title, headings and text, which `content_hash`
# covers): a change to any of these alone is written without re-chunking or re-embedding.
FIELDS = ("source", "metadata", "acl", "popularity", "published_at")


@dataclass
class PreparedDocument:
    """A document ready to write: fields resolved, chunked and embedded."""

    external_id: str
    title: str
    source: str | None
    content_hash: str
    metadata: dict[str, Any]
    acl: list[str]
    popularity: float
    published_at: datetime | None
    sections: list[Section]
    chunks: list[Chunk]
    embeddings: np.ndarray

    def fields(self) -> dict[str, Any]:
        """The stored fields (`FIELDS`) as they compare with a stored row's."""
        return {name: getattr(self, name) for name in FIELDS}


def stored_fields(row: RowMapping) -> dict[str, Any]:
    """The stored fields (`FIELDS`) of a document row, as `PreparedDocument.fields` gives them."""
    return {name: sorted(row[name]) if name == "acl" else row[name] for name in FIELDS}


def write_documents(
    conn: Connection,
    collection: Collection,
    docs: list[PreparedDocument],
    work_mem: str | None = None,
) -> dict[str, int]:
    """Write the batch inside the caller's transaction; return external id -> document id.
    `work_mem` is the transaction's (the BM25 statistics trigger aggregates in it)."""
    if not docs:
        return {}
    if work_mem is not None:
        conn.execute(query("write.sql", "set_write_memory"), {"memory": work_mem})
    ids = _upsert(conn, collection.id, docs)
    document_ids = list(ids.values())
    params = {"collection_id": collection.id, "document_ids": document_ids}
    conn.execute(query("write.sql", "delete_chunks"), params)
    conn.execute(query("write.sql", "delete_sections"), params)
    pg = driver_connection(conn)
    config_oid = _regconfig_oid(pg, collection.text_config)
    _copy_sections(pg, collection.id, ids, docs)
    _copy_chunks(pg, collection, config_oid, ids, docs)
    conn.execute(query("write.sql", "log_inserted_chunks"), params)
    return ids


def _upsert(conn: Connection, collection_id: int, docs: list[PreparedDocument]) -> dict[str, int]:
    rows = conn.execute(
        query("write.sql", "upsert_documents"),
        {
            "collection_id": collection_id,
            "external_ids": [d.external_id for d in docs],
            "titles": [d.title for d in docs],
            "sources": [d.source for d in docs],
            "content_hashes": [d.content_hash for d in docs],
            "metadata": [json.dumps(d.metadata) for d in docs],
            "acls": [json.dumps(d.acl) for d in docs],
            "popularity": [d.popularity for d in docs],
            "published_at": [d.published_at for d in docs],
            "chunk_counts": [len(d.chunks) for d in docs],
        },
    )
    return {row.external_id: row.id for row in rows}


def _copy_sections(
    pg: PgConnection[Any], collection_id: int, ids: dict[str, int], docs: list[PreparedDocument]
) -> None:
    statement = f"COPY sections ({', '.join(SECTION_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
    with pg.cursor().copy(statement) as copy:
        copy.set_types(SECTION_TYPES)
        for doc in docs:
            document_id = ids[doc.external_id]
            for s in doc.sections:
                copy.write_row(
                    (collection_id, document_id, s.ordinal, list(s.heading_path), s.text)
                )


def _copy_chunks(
    pg: PgConnection[Any],
    collection: Collection,
    config_oid: int,
    ids: dict[str, int],
    docs: list[PreparedDocument],
) -> None:
    """The chunks, their vectors into the column the collection reads."""
    assert collection.vector_column in VECTOR_COLUMNS
    columns = ", ".join((*CHUNK_COLUMNS, collection.vector_column))
    statement = f"COPY chunks ({columns}) FROM STDIN WITH (FORMAT BINARY)"
    collection_id = collection.id
    with pg.cursor().copy(statement) as copy:
        copy.set_types(CHUNK_TYPES)
        for doc in docs:
            document_id = ids[doc.external_id]
            for chunk, vector in zip(doc.chunks, doc.embeddings, strict=True):
                copy.write_row(
                    (
                        collection_id, document_id, chunk.ordinal, chunk.section_ordinal,
                        list(chunk.heading_path), chunk_context(doc.title, chunk.heading_path),
                        chunk.text, chunk.token_count, config_oid, vector,
                    )
                )  # fmt: skip


def _regconfig_oid(pg: PgConnection[Any], text_config: str) -> int:
    row = pg.execute("SELECT CAST(CAST(%s AS regconfig) AS oid)", [text_config]).fetchone()
    assert row is not None
    return int(row[0])
