"""Feedback on logged searches and answers: clicks and ratings of hits, thumbs for answers.

Feedback names a search by the `search_id` its response carried, and is checked against what
that search returned: an unknown search (or one made with another key) is 404, a hit it did not
return or thumbs for a plain search 422. Comments are redacted as queries are.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from app.db.queries import query
from app.errors import Invalid, NotFound, Unprocessable
from app.querylog.log import Logged, QueryLog

HIT_KINDS = ("click", "helpful", "not_helpful")
ANSWER_KINDS = ("thumbs_up", "thumbs_down")
KINDS = HIT_KINDS + ANSWER_KINDS


@dataclass(frozen=True)
class Feedback:
    search_id: str
    kind: str
    chunk_id: int | None = None
    document_id: str | None = None
    position: int | None = None
    comment: str | None = None


def record(
    conn: Connection,
    log: QueryLog,
    feedback: Feedback,
    key_id: int | None,
    *,
    admin: bool,
    subject: str | None = None,
) -> dict[str, Any]:
    """Check `feedback` against its search and store it; the stored row's id and time. Only
    the key that searched (and with a tenant token, the same end user `subject`) or an admin
    may give it."""
    logged = find(conn, log, _search_id(feedback.search_id))
    theirs = logged is not None and (
        admin or (logged.key_id == key_id and logged.subject_hash == log.subject_hash(subject))
    )
    if logged is None or not theirs:
        detail = "" if log.enabled else " (the query log is off: HYBRID_QUERY_LOG=off)"
        raise NotFound(
            f"search_id: no logged search {feedback.search_id}{detail}", field="search_id"
        )
    _check(feedback, logged)
    comment = feedback.comment
    if comment is not None and log.settings.mode == "redacted":
        comment = log.redact(comment)
    row = conn.execute(
        query("query_log.sql", "record_feedback"),
        {
            "search_id": logged.id,
            "searched_at": logged.logged_at,
            "collection": logged.collection,
            "kind": feedback.kind,
            "chunk_id": feedback.chunk_id,
            "document_id": feedback.document_id,
            "position": feedback.position,
            "comment": comment,
            "key_id": key_id,
        },
    ).one()
    return {"id": row.id, "created_at": row.created_at}


def find(conn: Connection, log: QueryLog, search_id: uuid.UUID) -> Logged | None:
    """The search as this process recorded it lately, or as the log holds it."""
    recent = log.recent(search_id)
    if recent is not None:
        return recent
    row = conn.execute(query("query_log.sql", "find_search"), {"id": search_id}).first()
    if row is None:
        return None
    return Logged(
        row.id, row.logged_at, row.kind, row.collection, row.key_id, row.page_offset,
        tuple(row.chunk_ids), tuple(row.document_ids), row.status, row.subject_hash,
    )  # fmt: skip


def _search_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Invalid(f"search_id: expected a UUID, got {text[:80]!r}", field="search_id") from None


def _check(feedback: Feedback, logged: Logged) -> None:
    if feedback.kind not in KINDS:
        raise Invalid(
            f"kind: expected one of {', '.join(KINDS)}, got {feedback.kind!r}", field="kind"
        )
    names_hit = feedback.chunk_id is not None or feedback.document_id is not None
    if feedback.kind in ANSWER_KINDS:
        if logged.kind != "answer":
            raise Unprocessable(
                f"kind: {feedback.kind} is for answers; this was a search", field="kind"
            )
        if names_hit:
            raise Invalid(f"kind: {feedback.kind} rates the answer, not a hit", field="kind")
        return
    if not names_hit:
        raise Invalid(
            f"chunk_id: {feedback.kind} names a chunk_id or a document_id", field="chunk_id"
        )
    if feedback.chunk_id is not None and feedback.chunk_id not in logged.chunk_ids:
        raise Unprocessable(
            f"chunk_id: {feedback.chunk_id} was not returned by search {logged.id}",
            field="chunk_id",
        )
    if feedback.document_id is not None and feedback.document_id not in logged.document_ids:
        raise Unprocessable(
            f"document_id: {feedback.document_id!r} was not returned by search {logged.id}",
            field="document_id",
        )
