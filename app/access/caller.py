"""What a request may do: the caller a credential stands for, and the rules every route applies.

A caller acts as its principals, within its scopes, in the collections of its allow-list (all
when it has none), and under its mandatory filter. A request may name fewer principals than
its key holds (narrowing), never others: a name the key does not hold, compared exactly as
stored, is refused with that name. Only a key with the `act-as` scope (a trusted backend that
authenticates its own users) may name any principals. A request's filter is ANDed with the
caller's, so no request can see past it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import Forbidden, Invalid

SEARCH = "search"
INGEST = "ingest"
ADMIN = "admin"
ACT_AS = "act-as"
# search: search, answers, reading documents; ingest: add, update, delete documents;
# admin: collections, keys, index rebuilds, purge, metrics. No scope implies another.
SCOPES = (SEARCH, INGEST, ADMIN, ACT_AS)
# The longest principal name anywhere: in a key, a request, a token or a document's ACL (the
# ACL's GIN index holds each name as an entry).
MAX_PRINCIPAL_CHARS = 256


@dataclass(frozen=True)
class Caller:
    """The key (or the tenant token of a key) a request was made with."""

    key_id: int | None
    prefix: str
    name: str
    principals: tuple[str, ...]
    scopes: frozenset[str]
    # None: every collection.
    collections: tuple[str, ...] | None = None
    filter: dict[str, Any] | None = None
    rate_per_minute: int | None = None
    answer_rate_per_minute: int | None = None
    # The end user a tenant token was minted for (its `sub`), for logs.
    subject: str | None = None

    @property
    def act_as(self) -> bool:
        return ACT_AS in self.scopes

    def describe(self) -> str:
        """How messages name the caller: never a secret."""
        return f"key {self.name!r} ({self.prefix})" if self.key_id is not None else self.name


# The caller of every request while HYBRID_AUTH=off: every scope, every collection, and the
# principals each request names (as before keys existed).
OPEN = Caller(
    key_id=None, prefix="", name="anyone (HYBRID_AUTH=off)", principals=(), scopes=frozenset(SCOPES)
)


def require_scope(caller: Caller, scope: str) -> None:
    if scope not in caller.scopes:
        held = ", ".join(sorted(caller.scopes)) or "none"
        raise Forbidden(f"{caller.describe()} lacks the {scope!r} scope; it has {held}")


def may_use_collection(caller: Caller, name: str) -> bool:
    return caller.collections is None or name in caller.collections


def require_collection(caller: Caller, name: str) -> None:
    if not may_use_collection(caller, name):
        raise Forbidden(
            f"collection: {caller.describe()} may not use collection {name!r}; it may use "
            f"{', '.join(caller.collections or ())}",
            field="collection",
        )


def effective_principals(caller: Caller, requested: list[str] | None) -> list[str] | None:
    """The principals a request acts as: the caller's when it names none (None when the
    caller holds none either), else the ones it names, each of which the caller must hold
    unless it may act as anyone."""
    if requested is None:
        return list(caller.principals) or None
    if not requested:
        raise Invalid(
            "principals: expected at least one principal, got an empty list (leave the field "
            "out to act as all of the key's principals)",
            field="principals",
        )
    if not caller.act_as:
        for principal in requested:
            if principal not in caller.principals:
                raise Forbidden(
                    f"principals: {principal!r} is not one of the principals of "
                    f"{caller.describe()}",
                    field="principals",
                )
    return list(dict.fromkeys(requested))


def combined_filter(caller: Caller, request_filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request's filter ANDed with the caller's mandatory one."""
    return both(caller.filter, request_filter)


def both(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two filters ANDed (an empty or missing one is no condition)."""
    if not first:
        return second or None
    if not second:
        return first
    return {"and": [first, second]}
