"""API keys: created with a random secret shown once, stored as a digest, listed, revoked.

A secret reads `hs_<prefix>_<random>`: the prefix (12 hex digits) is public and names the key
in lists, logs and the `kid` header of its tenant tokens; the random part is 256 bits from
`secrets`. Only the SHA-256 digest of the secret is stored (a random token of that size has
nothing a slow hash would protect), beside the key its tenant tokens are signed with,
HMAC-SHA256(key=secret, msg="hybrid-tenant-token"). A secret is checked by comparing digests
in constant time, against a dummy digest when no key has its prefix, so that a wrong secret
and an unknown key fail alike; only the holder of the right secret learns that the key was
revoked or has expired.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import Connection, RowMapping

from app.access import audit
from app.access.caller import MAX_PRINCIPAL_CHARS, SCOPES, Caller
from app.db.queries import query
from app.errors import Conflict, Invalid, NotFound, Unauthorized

PREFIX_PATTERN = re.compile(r"[0-9a-f]{12}")
SECRET_PATTERN = re.compile(r"hs_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")
SECRET_START = "hs_"
TOKEN_KEY_LABEL = b"hybrid-tenant-token"
MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 1000
# Compared against when no key has the prefix: the same work as for a wrong secret.
_DUMMY_DIGEST = hashlib.sha256(secrets.token_bytes(32)).digest()


@dataclass(frozen=True)
class Key:
    """A stored key as lists show it: never its secret, digest or signing key."""

    id: int
    name: str
    prefix: str
    principals: tuple[str, ...]
    scopes: tuple[str, ...]
    collections: tuple[str, ...] | None
    filter: dict[str, Any] | None
    rate_per_minute: int | None
    answer_rate_per_minute: int | None
    description: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> Self:
        values = dict(row)
        for name in ("principals", "scopes", "collections"):
            values[name] = None if values[name] is None else tuple(values[name])
        return cls(**values)

    def state(self, now: datetime | None = None) -> str:
        """`active`, `revoked` or `expired`."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"

    def caller(self) -> Caller:
        """What a request made with this key may do."""
        return Caller(
            key_id=self.id,
            prefix=self.prefix,
            name=self.name,
            principals=self.principals,
            scopes=frozenset(self.scopes),
            collections=self.collections,
            filter=self.filter,
            rate_per_minute=self.rate_per_minute,
            answer_rate_per_minute=self.answer_rate_per_minute,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "state": self.state(),
            "principals": list(self.principals),
            "scopes": list(self.scopes),
            "collections": None if self.collections is None else list(self.collections),
            "filter": self.filter,
            "rate_per_minute": self.rate_per_minute,
            "answer_rate_per_minute": self.answer_rate_per_minute,
            "description": self.description,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class StoredKey(Key):
    """A key with what checks its credentials: the secret's digest and the token key."""

    secret_hash: bytes = field(repr=False)
    token_key: bytes = field(repr=False)


@dataclass(frozen=True)
class NewKey:
    """A key just created, with its secret: shown once, never stored."""

    key: Key
    secret: str = field(repr=False)


@dataclass(frozen=True)
class KeySpec:
    """What a new key may do. `collections` None: every collection; `filter` None: none;
    a rate None: no limit."""

    name: str
    scopes: tuple[str, ...]
    principals: tuple[str, ...] = ()
    collections: tuple[str, ...] | None = None
    filter: dict[str, Any] | None = None
    rate_per_minute: int | None = None
    answer_rate_per_minute: int | None = None
    expires_at: datetime | None = None
    description: str = ""


def create(conn: Connection, spec: KeySpec, *, by: Caller | None = None) -> NewKey:
    """Store a new key (audited as created `by` a key, or None: the command line)."""
    checked = check(spec)
    prefix, secret = new_secret()
    row = (
        conn.execute(
            query("access.sql", "create_key"),
            {
                "name": checked.name,
                "prefix": prefix,
                "secret_hash": digest(secret),
                "token_key": signing_key(secret),
                "principals": list(checked.principals),
                "scopes": list(checked.scopes),
                "collections": None if checked.collections is None else list(checked.collections),
                "filter": None if checked.filter is None else json.dumps(checked.filter),
                "rate_per_minute": checked.rate_per_minute,
                "answer_rate_per_minute": checked.answer_rate_per_minute,
                "description": checked.description,
                "expires_at": checked.expires_at,
            },
        )
        .mappings()
        .first()
    )
    if row is None:
        raise Conflict(f"name: a key named {spec.name!r} exists and is not revoked", field="name")
    key = Key.from_row(row)
    audit.record(conn, audit.KEY_CREATED, by, key.prefix, {"name": key.name, "scopes": key.scopes})
    return NewKey(key, secret)


def list_all(conn: Connection) -> list[Key]:
    """Every key, revoked and expired ones included, oldest first."""
    return [Key.from_row(r) for r in conn.execute(query("access.sql", "list_keys")).mappings()]


def find(conn: Connection, prefix: str) -> StoredKey | None:
    row = conn.execute(query("access.sql", "find_key"), {"prefix": prefix}).mappings().first()
    return None if row is None else StoredKey.from_row(row)


def revoke(conn: Connection, ident: str, *, by: Caller | None = None) -> Key:
    """Revoke the key with prefix `ident`, or the unrevoked key named `ident`."""
    found = (
        conn.execute(query("access.sql", "lock_key_to_revoke"), {"ident": ident}).mappings().first()
    )
    if found is None:
        raise NotFound(
            f"no key with the prefix {ident!r}, nor an unrevoked key of that name", field="key"
        )
    if found["revoked_at"] is not None:
        raise Conflict(f"key {found['prefix']} was revoked already, at {found['revoked_at']}")
    revoked = conn.execute(query("access.sql", "revoke_key"), {"id": found["id"]}).mappings()
    key = Key.from_row(revoked.one())
    audit.record(conn, audit.KEY_REVOKED, by, key.prefix, {"name": key.name})
    return key


def touch(conn: Connection, key_id: int) -> None:
    """Mark the key used now (at most once a minute; never waits for a lock)."""
    conn.execute(query("access.sql", "touch_key"), {"id": key_id})


def check_secret(stored: StoredKey | None, secret: str) -> StoredKey:
    """`stored` (the key with the secret's prefix, if any) when the secret is its own."""
    expected = stored.secret_hash if stored is not None else _DUMMY_DIGEST
    if not hmac.compare_digest(digest(secret), expected) or stored is None:
        raise Unauthorized(
            "unknown API key: no key has this secret", reason="unknown", prefix=prefix_of(secret)
        )
    return stored


def check_usable(key: Key, now: datetime | None = None) -> None:
    """Refuse a revoked or expired key, saying which and since when."""
    state = key.state(now)
    if state == "revoked":
        raise Unauthorized(
            f"API key {key.prefix} was revoked at {key.revoked_at}",
            reason="revoked",
            prefix=key.prefix,
        )
    if state == "expired":
        raise Unauthorized(
            f"API key {key.prefix} expired at {key.expires_at}", reason="expired", prefix=key.prefix
        )


def new_secret() -> tuple[str, str]:
    """A fresh (prefix, secret)."""
    prefix = secrets.token_hex(6)
    return prefix, f"{SECRET_START}{prefix}_{secrets.token_urlsafe(32)}"


def prefix_of(secret: str) -> str | None:
    """The prefix of a well-formed secret, else None."""
    match = SECRET_PATTERN.fullmatch(secret)
    return match.group(1) if match else None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def signing_key(secret: str) -> bytes:
    """The key the holder of `secret` signs tenant tokens with (HS256)."""
    return hmac.new(secret.encode(), TOKEN_KEY_LABEL, hashlib.sha256).digest()


def check(spec: KeySpec) -> KeySpec:
    """`spec` with duplicates removed, or Invalid naming the field at fault."""
    return KeySpec(
        name=_check_text("name", spec.name, MAX_NAME_CHARS, required=True),
        scopes=_check_scopes(spec.scopes),
        principals=_check_names("principals", spec.principals),
        collections=None
        if spec.collections is None
        else _check_names("collections", spec.collections, required=True),
        filter=_check_filter(spec.filter),
        rate_per_minute=_check_rate("rate_per_minute", spec.rate_per_minute),
        answer_rate_per_minute=_check_rate("answer_rate_per_minute", spec.answer_rate_per_minute),
        expires_at=_check_expiry(spec.expires_at),
        description=_check_text("description", spec.description, MAX_DESCRIPTION_CHARS),
    )


def _check_text(name: str, value: str, max_chars: int, *, required: bool = False) -> str:
    if (required and not value.strip()) or len(value) > max_chars or "\x00" in value:
        raise Invalid(
            f"{name}: expected {'1' if required else '0'} to {max_chars} characters without "
            f"NUL, got {value!r:.120}",
            field=name,
        )
    return value


def _check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise Invalid(
            f"scopes: expected one or more of {', '.join(SCOPES)}, got {list(scopes)}",
            field="scopes",
        )
    return tuple(s for s in SCOPES if s in scopes)


def _check_names(name: str, values: tuple[str, ...], *, required: bool = False) -> tuple[str, ...]:
    """Names kept exactly as given (case and spaces count), each non-blank."""
    if required and not values:
        raise Invalid(f"{name}: expected at least one, got none", field=name)
    for value in values:
        if not value.strip() or len(value) > MAX_PRINCIPAL_CHARS or "\x00" in value:
            raise Invalid(
                f"{name}: expected non-blank names of at most {MAX_PRINCIPAL_CHARS} characters "
                f"without NUL, got {value!r:.120}",
                field=name,
            )
    return tuple(dict.fromkeys(values))


def _check_filter(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object; whether the search filter language accepts it is the caller's check
    (`app.search.filters.compile_filter`), which lives above this layer."""
    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise Invalid(f"filter: expected a JSON object, got {type(spec).__name__}", field="filter")
    try:
        return dict(json.loads(json.dumps(spec)))
    except (TypeError, ValueError) as exc:
        raise Invalid(f"filter: expected JSON values only: {exc}", field="filter") from exc


def _check_rate(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise Invalid(f"{name}: expected a positive number a minute, got {value}", field=name)
    return value


def _check_expiry(expires_at: datetime | None) -> datetime | None:
    if expires_at is not None and expires_at.tzinfo is None:
        raise Invalid(
            f"expires_at: expected a time with its zone, got {expires_at}", field="expires_at"
        )
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise Invalid(f"expires_at: expected a time to come, got {expires_at}", field="expires_at")
    return expires_at


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
