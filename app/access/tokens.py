"""Tenant tokens: short-lived signed tokens a backend mints for one of its end users.

A backend holding a key with the `search` scope signs a JWT (HS256 only, `exp` required, the
key's prefix as the `kid` header) with the key derived from its secret
(`keys.signing_key`). The token carries the end user's principals, which the key must hold
(any, for a key that may `act-as`), and an optional filter that is ANDed with the key's. The
service checks it against the parent key alone, found through the key cache: no other
database read. A token only ever searches, answers and reads documents, in the parent key's
collections, and stops working when the parent is revoked or expires.

    Authorization: Bearer <token>

Claims: `principals` (a non-empty list of names), `exp` (required, at most
HYBRID_TENANT_TOKEN_MAX_TTL seconds away), and optionally `filter` (an object) and `sub`
(the end user, for logs).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import jwt

from app.access import keys
from app.access.caller import SEARCH, Caller, both, effective_principals
from app.access.keys import StoredKey
from app.errors import Forbidden, Invalid, Unauthorized

ALGORITHM = "HS256"


def mint(
    secret: str,
    principals: list[str],
    *,
    ttl_s: int = 600,
    filter: dict[str, Any] | None = None,
    subject: str | None = None,
) -> str:
    """A token for `principals`, as a backend holding the key's `secret` makes one."""
    claims: dict[str, Any] = {"principals": principals, "exp": int(time.time()) + ttl_s}
    if filter is not None:
        claims["filter"] = filter
    if subject is not None:
        claims["sub"] = subject
    prefix = keys.prefix_of(secret)
    if prefix is None:
        raise Invalid("secret: expected an API key secret (hs_<prefix>_<random>)", field="secret")
    return jwt.encode(claims, keys.signing_key(secret), ALGORITHM, headers={"kid": prefix})


def key_prefix(token: str) -> str:
    """The prefix of the key that signed `token` (its `kid`), read before any check of the
    signature: it only says which key to check it with. Any algorithm but HS256 (`none`,
    RS256, HS512, ...) is refused here."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise _invalid(f"not a JWT ({exc})") from exc
    if header.get("alg") != ALGORITHM:
        raise _invalid(f"expected alg {ALGORITHM}, got {header.get('alg')!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not keys.PREFIX_PATTERN.fullmatch(kid):
        raise _invalid(f"expected a key's prefix as the `kid` header, got {kid!r:.40}")
    return kid


def verify(token: str, parent: StoredKey | None, *, max_ttl_s: int) -> Caller:
    """The caller `token` stands for, given the key its `kid` names (None: no such key)."""
    if parent is None:
        raise Unauthorized("tenant token: no key has its `kid`", reason="unknown")
    claims = _claims(token, parent)
    keys.check_usable(parent)
    key = parent.caller()
    if SEARCH not in key.scopes:
        raise Forbidden(f"tenant token: {key.describe()} lacks the {SEARCH!r} scope")
    if claims["exp"] > time.time() + max_ttl_s:
        raise _invalid(f"lives longer than HYBRID_TENANT_TOKEN_MAX_TTL ({max_ttl_s} s)", parent)
    principals = _principals(claims, parent)
    return replace(
        key,
        principals=tuple(effective_principals(key, principals) or ()),
        scopes=frozenset({SEARCH}),
        filter=both(key.filter, _filter(claims, parent)),
        subject=str(claims["sub"]) if "sub" in claims else None,
    )


def _claims(token: str, parent: StoredKey) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, parent.token_key, algorithms=[ALGORITHM], options={"require": ["exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("tenant token: expired", reason="expired", prefix=parent.prefix) from exc
    except jwt.PyJWTError as exc:
        raise _invalid(str(exc), parent) from exc
    return claims


def _principals(claims: dict[str, Any], parent: StoredKey) -> list[str]:
    found = claims.get("principals")
    if not isinstance(found, list) or not found or not all(isinstance(p, str) for p in found):
        raise _invalid(f"expected `principals`, a non-empty list of names, got {found!r}", parent)
    return found


def _filter(claims: dict[str, Any], parent: StoredKey) -> dict[str, Any] | None:
    found = claims.get("filter")
    if found is not None and not isinstance(found, dict):
        raise _invalid(f"expected `filter` to be an object, got {type(found).__name__}", parent)
    return found


def _invalid(problem: str, parent: StoredKey | None = None) -> Unauthorized:
    return Unauthorized(
        f"tenant token: {problem}",
        reason="invalid",
        prefix=parent.prefix if parent is not None else None,
    )
