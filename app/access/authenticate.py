"""From an `Authorization` header to the `Caller` a request acts as.

`Authorization: Bearer <credential>`, where the credential is an API key's secret
(`hs_...`) or a tenant token minted with one. With HYBRID_AUTH=off every request is
`caller.OPEN`. Keys are found through the key cache, so most requests cost no database read;
on a miss, and at most once a minute per key to mark it used, a short transaction of its own
is opened through `connect`: call this before the request's work, never inside its
transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cachetools import TTLCache

from app.access import keys, tokens
from app.access.cache import MAX_ENTRIES, Connect, KeyCache
from app.access.caller import OPEN, Caller
from app.errors import Unauthorized
from app.settings import ServerSettings

USAGE = "send `Authorization: Bearer <API key or tenant token>`"
# How often a key in use is marked used (`last_used_at`).
MARK_USED_EVERY_S = 60.0


class Authenticator:
    """One per process: the key cache and the settings of authentication."""

    def __init__(
        self, settings: ServerSettings, *, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.required = settings.auth == "required"
        self.token_max_ttl_s = settings.tenant_token_max_ttl_s
        self.keys = KeyCache(settings.auth_cache_ttl_s, timer=timer)
        self._marked: TTLCache[int, bool] = TTLCache(MAX_ENTRIES, MARK_USED_EVERY_S, timer=timer)
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None, connect: Connect) -> Caller:
        """The caller of a request with this `Authorization` header, or Unauthorized (with
        its `reason`), or Forbidden (a tenant token wider than its key allows)."""
        if not self.required:
            return OPEN
        credential = bearer(authorization)
        if credential.startswith(keys.SECRET_START):
            caller = self._by_secret(credential, connect)
        else:
            parent = self.keys.get(tokens.key_prefix(credential), connect)
            caller = tokens.verify(credential, parent, max_ttl_s=self.token_max_ttl_s)
        self._mark_used(caller, connect)
        return caller

    def forget(self, prefix: str) -> None:
        """Drop a key from this process's cache at once (after revoking it here)."""
        self.keys.forget(prefix)

    def _by_secret(self, secret: str, connect: Connect) -> Caller:
        stored = keys.check_secret(self.keys.get(keys.prefix_of(secret), connect), secret)
        keys.check_usable(stored)
        return stored.caller()

    def _mark_used(self, caller: Caller, connect: Connect) -> None:
        if caller.key_id is None:
            return
        with self._lock:
            if caller.key_id in self._marked:
                return
            self._marked[caller.key_id] = True
        with connect() as conn:
            keys.touch(conn, caller.key_id)


def bearer(authorization: str | None) -> str:
    """The credential of an `Authorization: Bearer ...` header (never echoed in errors)."""
    if authorization is None or not authorization.strip():
        raise Unauthorized(f"no credential: {USAGE}", reason="missing")
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized(f"malformed Authorization header: {USAGE}", reason="invalid")
    return credential.strip()
