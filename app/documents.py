"""Stored documents: list, show, change metadata/ACL without re-embedding, delete and purge.

Soft delete hides a document at once (its chunks leave every index through the change log)
and keeps the rows until purge; a hard purge removes them. Reads see what their `Visibility`
allows: the documents whose ACL names one of the reader's principals and that match its
mandatory filter; anything else does not exist for them (404, and absent from lists and
counts).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, TextClause, text

from app.access.caller import MAX_PRINCIPAL_CHARS
from app.db.engine import unbounded
from app.db.queries import load, query
from app.errors import Invalid, NotFound

# Limits of what is stored in indexed columns (a B-tree entry holds at most about 2.7 kB; a
# character takes up to 4 bytes).
MAX_ID_CHARS = 512
MAX_ACL_ENTRIES = 1000

MAX_PAGE = 1000
VISIBLE_MARK = "/* visible */ TRUE"


@dataclass(frozen=True)
class Visibility:
    """The documents a reader may see: those whose ACL shares one of `principals` (None:
    every document) and that match `predicate`, a compiled filter over `d` (whitelisted SQL
    from `app.search.filters`) with its bind `params`."""

    principals: list[str] | None = None
    predicate: str = "TRUE"
    params: dict[str, Any] = field(default_factory=dict)

    def statement(self, name: str) -> TextClause:
        source = load("documents.sql")[name].text
        return text(source.replace(VISIBLE_MARK, f"({self.predicate})"))

    def bind(self, **params: Any) -> dict[str, Any]:
        return {**self.params, **params, "principals": self.principals}


EVERYTHING = Visibility()


@dataclass(frozen=True)
class DocumentPatch:
    """A partial update. `metadata` is an RFC 7386 merge patch (null removes a key)."""

    metadata: dict[str, Any] | None = None
    acl: list[str] | None = None
    popularity: float | None = None
    published_at: datetime | None = None
    source: str | None = None


def list_page(
    conn: Connection,
    collection_id: int,
    *,
    limit: int,
    offset: int,
    include_deleted: bool,
    visibility: Visibility = EVERYTHING,
    title: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A page of documents and the counts (live, deleted); `title`: only documents whose
    title contains it (case-insensitive)."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit: expected 1 to {MAX_PAGE}, got {limit}", field="limit")
    if offset < 0:
        raise Invalid(f"offset: expected 0 or more, got {offset}", field="offset")
    if title is not None and ("\x00" in title or len(title) > 500):
        raise Invalid("title: expected at most 500 characters, no NUL", field="title")
    # The text as typed: LIKE's wildcards and escape character match themselves.
    pattern = None if not title else re.sub(r"([\\%_])", r"\\\1", title)
    rows = conn.execute(
        visibility.statement("list_documents"),
        visibility.bind(
            collection_id=collection_id,
            limit=limit,
            offset=offset,
            include_deleted=include_deleted,
            title=pattern,
        ),
    ).mappings()
    counts = (
        conn.execute(
            visibility.statement("count_documents"),
            visibility.bind(collection_id=collection_id, title=pattern),
        )
        .mappings()
        .one()
    )
    return [dict(r) for r in rows], dict(counts)


def get(
    conn: Connection,
    collection_id: int,
    external_id: str,
    *,
    include_deleted: bool = True,
    visibility: Visibility = EVERYTHING,
) -> dict[str, Any]:
    """The document, if `visibility` shows it; a soft-deleted one only with
    `include_deleted`."""
    row = _row(conn, collection_id, external_id, visibility=visibility)
    if row["deleted_at"] is not None and not include_deleted:
        raise NotFound(f"document {external_id!r} is deleted", field="external_id")
    return dict(row)


def metadata_keys(
    conn: Connection, collection_id: int, visibility: Visibility = EVERYTHING
) -> list[str]:
    """The top-level metadata keys of the reader's most recent documents (a sample)."""
    rows = conn.execute(
        visibility.statement("metadata_keys"), visibility.bind(collection_id=collection_id)
    ).scalars()
    return list(rows)


def chunks_of(conn: Connection, collection_id: int, document_id: int) -> list[dict[str, Any]]:
    return _of_document(conn, "document_chunks", collection_id, document_id)


def sections_of(conn: Connection, collection_id: int, document_id: int) -> list[dict[str, Any]]:
    """The document's sections in order: heading path, size, chunks and first chunk's id."""
    return _of_document(conn, "document_sections", collection_id, document_id)


def _of_document(
    conn: Connection, name: str, collection_id: int, document_id: int
) -> list[dict[str, Any]]:
    rows = conn.execute(
        query("documents.sql", name), {"collection_id": collection_id, "document_id": document_id}
    ).mappings()
    return [dict(r) for r in rows]


def update(
    conn: Connection, collection_id: int, external_id: str, patch: DocumentPatch
) -> dict[str, Any]:
    """Apply `patch` to a live document; chunks and embeddings stay as they are."""
    row = _row(conn, collection_id, external_id, lock=True)
    if row["deleted_at"] is not None:
        raise NotFound(f"document {external_id!r} is deleted", field="external_id")
    metadata = (
        row["metadata"] if patch.metadata is None else merge_patch(row["metadata"], patch.metadata)
    )
    acl = row["acl"] if patch.acl is None else check_acl(patch.acl)
    popularity = (
        row["popularity"] if patch.popularity is None else check_popularity(patch.popularity)
    )
    conn.execute(
        query("documents.sql", "update_document_fields"),
        {
            "collection_id": collection_id,
            "document_id": row["id"],
            "metadata": json.dumps(metadata),
            "acl": acl,
            "popularity": popularity,
            "published_at": patch.published_at or row["published_at"],
            "source": patch.source if patch.source is not None else row["source"],
        },
    )
    return get(conn, collection_id, external_id)


def soft_delete(conn: Connection, collection_id: int, external_id: str) -> None:
    # Locked: of concurrent deletes of one document, one deletes it and the others find it
    # deleted (unlocked, each saw it live and answered as if it had deleted it).
    row = _row(conn, collection_id, external_id, lock=True)
    if row["deleted_at"] is not None:
        raise NotFound(f"document {external_id!r} is already deleted", field="external_id")
    one = Visibility(predicate="d.external_id = :external_id", params={"external_id": external_id})
    conn.execute(
        one.statement("soft_delete_matching"), one.bind(collection_id=collection_id, limit=None)
    )


def delete_matching(
    conn: Connection,
    collection_id: int,
    matching: Visibility,
    *,
    dry_run: bool,
    limit: int | None = None,
) -> int:
    """Soft delete every live document `matching` shows (its filter; its principals are not
    consulted), or the first `limit` of them; with `dry_run`, only count them. However many
    there are: the statement bound is lifted, lock waits stay bounded."""
    name = "count_matching" if dry_run else "soft_delete_matching"
    with unbounded(conn):
        return int(
            conn.execute(
                matching.statement(name), matching.bind(collection_id=collection_id, limit=limit)
            ).scalar_one()
        )


def purge(conn: Connection, collection_id: int, external_id: str) -> None:
    removed = conn.execute(
        query("documents.sql", "purge_document"),
        {"collection_id": collection_id, "external_id": external_id},
    ).scalar_one()
    if removed == 0:
        raise NotFound(f"no document {external_id!r}", field="external_id")


def purge_deleted(conn: Connection, collection_id: int) -> int:
    """Remove every soft-deleted document of the collection; return how many (however long
    that takes: the statement bound is lifted, lock waits stay bounded)."""
    with unbounded(conn):
        return int(
            conn.execute(
                query("documents.sql", "purge_deleted"), {"collection_id": collection_id}
            ).scalar_one()
        )


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch of one object onto another."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_metadata(raw: str, *, name: str = "metadata") -> dict[str, Any]:
    """A metadata object given as JSON text (a form field or a command-line option)."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{name}: malformed JSON: {exc}", field=name) from exc
    except RecursionError:  # hostile nesting: no metadata or filter is that deep
        raise Invalid(f"{name}: nests too deep", field=name) from None
    if not isinstance(value, dict):
        raise Invalid(f"{name}: expected a JSON object, got {type(value).__name__}", field=name)
    return value


def check_acl(acl: list[str]) -> list[str]:
    if not acl or not all(isinstance(p, str) and p.strip() for p in acl):
        raise Invalid(
            f"acl: expected a non-empty list of non-empty principal names, got {acl!r}",
            field="acl",
        )
    if len(acl) > MAX_ACL_ENTRIES:
        raise Invalid(f"acl: at most {MAX_ACL_ENTRIES} principals, got {len(acl)}", field="acl")
    for principal in acl:
        if len(principal) > MAX_PRINCIPAL_CHARS or "\x00" in principal:
            raise Invalid(
                f"acl: a principal has at most {MAX_PRINCIPAL_CHARS} characters and no NUL, "
                f"got one of {len(principal)} characters",
                field="acl",
            )
    return sorted(set(acl))


def check_external_id(external_id: str) -> str:
    """A document id fits the unique index on (collection, id): at most 512 characters."""
    if not external_id or len(external_id) > MAX_ID_CHARS or "\x00" in external_id:
        raise Invalid(
            f"id: expected 1 to {MAX_ID_CHARS} characters without NUL, got "
            f"{len(external_id)} characters",
            field="id",
        )
    return external_id


def check_popularity(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise Invalid(f"popularity: expected a finite number >= 0, got {value}", field="popularity")
    return float(value)


def _row(
    conn: Connection,
    collection_id: int,
    external_id: str,
    *,
    lock: bool = False,
    visibility: Visibility = EVERYTHING,
) -> RowMapping:
    key = {"collection_id": collection_id, "external_id": external_id}
    found = (
        conn.execute(query("documents.sql", "lock_document"), key)
        if lock
        else conn.execute(visibility.statement("get_document"), visibility.bind(**key))
    )
    row = found.mappings().first()
    if row is None:
        raise NotFound(f"no document {external_id!r}", field="external_id")
    return row
