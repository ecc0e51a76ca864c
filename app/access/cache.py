"""Key lookups kept in process for a few seconds, so that a request costs no database read.

An entry (the key, or the fact that no key has the prefix) lives `HYBRID_AUTH_CACHE_TTL`
seconds, then the next request reads the key again: a key revoked on any instance, or from
the command line, stops working everywhere within that time. A revocation made through this
process can `forget` the key at once. The database is read only on a miss, in a transaction
of its own that the caller opens (`connect`), before the request's own work begins.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress

from cachetools import TTLCache
from sqlalchemy import Connection

from app.access import keys
from app.access.keys import StoredKey

Connect = Callable[[], AbstractContextManager[Connection]]
MAX_ENTRIES = 10_000


class KeyCache:
    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = MAX_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TTLCache[str, StoredKey | None] = TTLCache(max_entries, ttl_s, timer=timer)
        self._lock = threading.Lock()

    def get(self, prefix: str | None, connect: Connect) -> StoredKey | None:
        """The key with `prefix` (None for no prefix, or no such key)."""
        if prefix is None:
            return None
        with self._lock, suppress(KeyError):
            return self._entries[prefix]
        with connect() as conn:
            found = keys.find(conn, prefix)
        with self._lock:
            self._entries[prefix] = found
        return found

    def forget(self, prefix: str) -> None:
        with self._lock:
            self._entries.pop(prefix, None)
