"""API keys over HTTP, for admins: create (the secret is in the answer, once), list, revoke.

The same operations as `hybrid keys`; a revoked key stops working on this instance at once and
on the others within the key cache's lifetime (`HYBRID_AUTH_CACHE_TTL`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State

from app.access import keys
from app.access.caller import ADMIN, Caller
from app.access.keys import KeySpec
from app.api.auth import Gate
from app.search.filters import compile_filter
from app.service import Services

ADMIN_ONLY = {"scope": ADMIN}


Rate = Annotated[int, msgspec.Meta(ge=1, le=10**9, description="Requests a minute")]


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    scopes: list[str]
    principals: list[str] = []
    collections: list[str] | None = None
    filter: dict[str, Any] | None = None
    rate_per_minute: Rate | None = None
    answer_rate_per_minute: Rate | None = None
    expires_days: Annotated[int, msgspec.Meta(ge=1, le=36_500)] | None = None
    description: str = ""


class KeyController(Controller):
    path = "/v1/admin/keys"
    tags = ["admin"]

    @get("/", sync_to_thread=True, opt=ADMIN_ONLY)
    def list_keys(self, services: Services) -> list[dict[str, Any]]:
        """Every key: prefix, name, scopes, principals, state, last use; never a secret."""
        with services.transaction() as conn:
            return [k.as_json() for k in keys.list_all(conn)]

    @post("/", sync_to_thread=True, opt=ADMIN_ONLY)
    def create_key(self, data: KeyIn, services: Services, caller: Caller) -> dict[str, Any]:
        """Create a key; the answer holds its `secret`, the only time it is shown."""
        if data.filter is not None:
            compile_filter(data.filter)
        expires = data.expires_days
        spec = KeySpec(
            name=data.name,
            scopes=tuple(data.scopes),
            principals=tuple(data.principals),
            collections=None if data.collections is None else tuple(data.collections),
            filter=data.filter,
            rate_per_minute=data.rate_per_minute,
            answer_rate_per_minute=data.answer_rate_per_minute,
            expires_at=datetime.now(UTC) + timedelta(days=expires) if expires else None,
            description=data.description,
        )
        with services.transaction() as conn:
            created = keys.create(conn, spec, by=caller)
        return {**created.key.as_json(), "secret": created.secret}

    @delete("/{ident:str}", sync_to_thread=True, opt=ADMIN_ONLY)
    def revoke_key(self, ident: str, services: Services, caller: Caller, state: State) -> None:
        """Revoke a key by name or prefix."""
        with services.transaction() as conn:
            revoked = keys.revoke(conn, ident, by=caller)
        gate: Gate = state.gate
        gate.authenticator.forget(revoked.prefix)
