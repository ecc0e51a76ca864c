"""The audit log: security-relevant actions, one row each, readable in SQL.

Keys created and revoked, collections created and deleted, purges and document deletes are
written by the transaction that does them, so a rolled-back action leaves no row. Denied
requests are counted rather than listed: one row per key, reason and minute, whose `count`
grows (a flood of bad credentials must not become a flood of rows).

    SELECT a.at, a.action, k.prefix, k.name, a.target, a.detail, a.count
    FROM audit_log a LEFT JOIN api_keys k ON k.id = a.key_id
    ORDER BY a.at DESC;
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from app.access.caller import Caller
from app.db.queries import query

KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
COLLECTION_CREATED = "collection.created"
COLLECTION_DELETED = "collection.deleted"
COLLECTION_REEMBED = "collection.reembed"
PURGE = "purge"
DOCUMENT_DELETED = "document.deleted"
DOCUMENTS_DELETED = "documents.deleted"
REQUEST_DENIED = "request.denied"


def record(
    conn: Connection,
    action: str,
    key: Caller | int | None,
    target: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """One action by `key` (a caller or a key's id; None: the command line) on `target`, in
    `conn`'s transaction."""
    conn.execute(
        query("access.sql", "record_action"),
        {
            "action": action,
            "key_id": key.key_id if isinstance(key, Caller) else key,
            "target": target,
            "detail": json.dumps(dict(detail or {}), default=str),
        },
    )


def record_denied(conn: Connection, prefix: str | None, reason: str) -> None:
    """Count one denied request of the key with `prefix` (None, or a prefix no key has:
    counted without a key) for `reason` (e.g. an `Unauthorized.reason`, `forbidden`,
    `rate-limited`). Best in a short transaction of its own: the row is shared by every
    denial of the key in the minute."""
    conn.execute(query("access.sql", "count_denied"), {"prefix": prefix, "reason": reason})
