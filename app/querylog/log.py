"""Recording searches and answers without slowing them down.

`QueryLog.record` appends an entry to a bounded in-process queue and returns at once (a
request pays for no more than that: redaction, hashing and encoding are the writer's); a
writer thread takes what is waiting every `HYBRID_QUERY_LOG_FLUSH_INTERVAL` (at most a
second) and writes it with one COPY. A full queue drops the new entry and counts it (a
warning says how many, at most every ten seconds); a failed write (the database down, say)
is logged and its entries counted as failed: neither ever reaches the request. `close`
writes what is left.

The writer also keeps the partitions: at start and every hour it creates the days ahead and
drops the days past `HYBRID_QUERY_LOG_RETENTION_DAYS`. With `HYBRID_QUERY_LOG=redacted` the
query text and filter values are redacted (`app.redact`) before anything is written;
principals are stored only as a keyed hash. The last entries recorded are also kept in
memory by id, so that feedback on a search can be checked before its row is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from app.db.engine import driver_connection
from app.db.queries import query
from app.redact import Redactor
from app.settings import QueryLogSettings

log = logging.getLogger(__name__)

# The log's columns and their PostgreSQL types, for binary COPY (no text to parse either side).
COLUMN_TYPES = (
    ("id", "uuid"),
    ("logged_at", "timestamptz"),
    ("kind", "text"),
    ("collection", "text"),
    ("mode", "text"),
    ("k", "int4"),
    ("page_offset", "int4"),
    ("filter", "jsonb"),
    ("boosts", "jsonb"),
    ("key_id", "int8"),
    ("key_prefix", "text"),
    ("principals_hash", "text"),
    ("subject_hash", "text"),
    ("query", "text"),
    ("embed_ms", "float4"),
    ("sql_ms", "float4"),
    ("faiss_ms", "float4"),
    ("rerank_ms", "float4"),
    ("generation_ms", "float4"),
    ("total_ms", "float4"),
    ("hits", "int4"),
    ("chunk_ids", "int8[]"),
    ("document_ids", "text[]"),
    ("cache", "text"),
    ("vector_backend", "text"),
    ("status", "int4"),
    ("error", "text"),
    ("model", "text"),
    ("fallback", "bool"),
    ("extractive", "bool"),
    ("prompt_tokens", "int4"),
    ("completion_tokens", "int4"),
    ("cited_chunk_ids", "int8[]"),
)
COLUMNS = tuple(column for column, _ in COLUMN_TYPES)
TYPES = tuple(kind for _, kind in COLUMN_TYPES)
COPY = f"COPY {{}} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
PARENT = sql.Identifier("query_log")
BATCH = 1000
RECENT = 10_000
MAINTAIN_EVERY_S = 3600.0
RETRY_S = 60.0
DAYS_AHEAD = 7
WARN_EVERY_S = 10.0


@dataclass(slots=True)
class Entry:
    """One search or answer as the log stores it (`principals` become a keyed hash)."""

    kind: str
    collection: str
    query: str
    status: int
    total_ms: float
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    mode: str | None = None
    k: int | None = None
    page_offset: int | None = None
    filter: dict[str, Any] | None = None
    boosts: dict[str, Any] | None = None
    key_id: int | None = None
    key_prefix: str | None = None
    principals: list[str] | None = None
    # The end user a tenant token names (hashed as it is written).
    subject: str | None = None
    embed_ms: float | None = None
    sql_ms: float | None = None
    faiss_ms: float | None = None
    rerank_ms: float | None = None
    generation_ms: float | None = None
    hits: int = 0
    chunk_ids: list[int] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    cache: str | None = None
    vector_backend: str | None = None
    error: str | None = None
    model: str | None = None
    fallback: bool | None = None
    extractive: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cited_chunk_ids: list[int] | None = None


@dataclass(frozen=True)
class Logged:
    """What feedback on a logged search is checked against."""

    id: uuid.UUID
    logged_at: datetime
    kind: str
    collection: str
    key_id: int | None
    page_offset: int
    chunk_ids: tuple[int, ...]
    document_ids: tuple[str, ...]
    status: int
    subject_hash: str | None = None

    @classmethod
    def of(cls, entry: Entry, subject_hash: str | None) -> Logged:
        return cls(
            entry.id, entry.logged_at, entry.kind, entry.collection, entry.key_id,
            entry.page_offset or 0, tuple(entry.chunk_ids), tuple(entry.document_ids),
            entry.status, subject_hash,
        )  # fmt: skip


class QueryLog:
    """The queue, the writer thread and the counts of what was written, dropped and lost."""

    def __init__(self, engine: Engine, settings: QueryLogSettings, redactor: Redactor) -> None:
        self.engine = engine
        self.settings = settings
        self.redactor = redactor
        # Most queries are asked again: each text is redacted once while it stays in the cache.
        self._redact = lru_cache(maxsize=4096)(redactor)
        self.enabled = settings.mode != "off"
        self.written = 0
        self.dropped = 0
        self.failed = 0
        # Appending to a deque and setting a dict item are atomic: the request side takes no
        # lock. The bound is checked before the append, so it may be passed by a few entries.
        self._pending: deque[Entry] = deque()
        # The last entries by id (the entries themselves: nothing is copied on the request),
        # and their ids in the order they came, so that the oldest are forgotten first.
        self._recent: dict[uuid.UUID, Entry] = {}
        self._order: deque[uuid.UUID] = deque()
        self._count_lock = threading.Lock()
        self._forget_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._salt: bytes | None = None
        # Partitions known to exist (dropped ones are forgotten by `maintain`).
        self._partitions: set[str] = set()
        self._maintained_at = -math.inf
        self._warned_at = 0.0
        self._unreported = 0

    # -- the request side ------------------------------------------------------------------

    def record(self, entry: Entry) -> None:
        """Queue `entry`; never blocks, never raises."""
        if not self.enabled:
            return
        self.remember(entry)
        if len(self._pending) >= self.settings.queue:
            self._drop()
        else:
            self._pending.append(entry)

    def remember(self, entry: Entry) -> None:
        """Keep `entry` among the recent ones (feedback on it is checked against them)."""
        if not self.enabled:
            return
        self._recent[entry.id] = entry
        self._order.append(entry.id)
        if len(self._order) > 2 * RECENT:  # the writer forgets; this bounds it if it cannot
            self._forget()

    def _forget(self) -> None:
        """Forget the oldest entries beyond the last `RECENT`."""
        with self._forget_lock:
            while len(self._order) > RECENT:
                self._recent.pop(self._order.popleft(), None)

    def _redacted(self, entry: Entry) -> Entry:
        """`entry` with its query and filter values redacted (when so set), in place."""
        if self.settings.mode == "redacted":
            entry.query = self.redact(entry.query)
            if entry.filter is not None:
                entry.filter = self._redact_values(entry.filter)
        return entry

    def _redact_values(self, value: Any) -> Any:
        """A filter with every string in it redacted (its fields and operators kept)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self._redact_values(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._redact_values(item) for item in value]
        return value

    def redact(self, text: str) -> str:
        try:
            return self._redact(text)
        except Exception:  # a redactor that fails keeps nothing rather than everything
            log.exception("query log redactor failed; text withheld")
            return "[redaction failed]"

    def recent(self, search_id: uuid.UUID) -> Logged | None:
        entry = self._recent.get(search_id)
        return None if entry is None else Logged.of(entry, self.subject_hash(entry.subject))

    def subject_hash(self, subject: str | None) -> str | None:
        """The keyed hash the log stores of a tenant token's end user."""
        return None if subject is None else keyed_hash(self._salt_value(), subject.encode())

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def _drop(self) -> None:
        with self._count_lock:
            self.dropped += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._warned_at < WARN_EVERY_S:
                return
            count, self._unreported, self._warned_at = self._unreported, 0, now
        log.warning("query log queue full: %d entries dropped", count)

    # -- the writer ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (which first creates the partitions ahead)."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="query-log-writer", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writer after it has written every entry waiting (within `timeout_s`);
        entries recorded afterwards are written by `flush` (as the last thing `close` does)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        elif self.enabled:
            self.flush()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.settings.flush_s)
            if time.monotonic() - self._maintained_at >= MAINTAIN_EVERY_S:
                self.maintain()
            self.flush()
            if stopping:
                return

    def flush(self) -> int:
        """Write every entry waiting now; the number written."""
        done = 0
        with self._write_lock:
            while batch := self._take():
                done += self._write([self._redacted(entry) for entry in batch])
        self._forget()
        return done

    def _take(self) -> list[Entry]:
        batch: list[Entry] = []
        pending = self._pending
        while pending and len(batch) < BATCH:
            batch.append(pending.popleft())
        return batch

    def _write(self, batch: list[Entry]) -> int:
        """One transaction; a COPY per UTC day straight into its partition (no routing)."""
        days: dict[str, list[Entry]] = {}
        for entry in batch:
            days.setdefault(f"query_log_{entry.logged_at.astimezone(UTC):%Y%m%d}", []).append(entry)
        try:
            salt = self._salt_value()
            hashes: dict[tuple[str, ...] | None, str | None] = {}
            with self.engine.begin() as conn, driver_connection(conn).cursor() as cur:
                for partition, entries in days.items():
                    target = sql.Identifier(partition) if self._exists(cur, partition) else PARENT
                    with cur.copy(sql.SQL(COPY).format(target)) as copy:
                        copy.set_types(TYPES)
                        for entry in entries:
                            copy.write_row(_row(entry, salt, hashes))
        except psycopg.errors.DataError as exc:
            # One entry the database refuses fails the COPY of its batch: the halves are tried
            # alone, so that only that entry is lost.
            if len(batch) > 1:
                half = len(batch) // 2
                return self._write(batch[:half]) + self._write(batch[half:])
            self.failed += 1
            log.warning("query log: an entry not written: %s", _first_line(exc))
            return 0
        except Exception as exc:
            self.failed += len(batch)
            log.warning("query log: %d entries not written: %s", len(batch), _first_line(exc))
            return 0
        self.written += len(batch)
        return len(batch)

    def _exists(self, cur: Any, partition: str) -> bool:
        if partition not in self._partitions:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (partition,))
            if cur.fetchone()[0]:
                self._partitions.add(partition)
        return partition in self._partitions

    def _salt_value(self) -> bytes:
        if self._salt is None:
            with self.engine.connect() as conn:
                salt = conn.execute(query("query_log.sql", "salt")).scalar_one()
            self._salt = salt.encode()
        return self._salt

    def maintain(self, today: datetime | None = None) -> tuple[int, int]:
        """Create the partitions from yesterday to a week ahead, and drop the days past the
        retention, each in its own transaction: (days created, days dropped). A failure is
        logged and tried again a minute later."""
        self._maintained_at = time.monotonic()
        self._partitions = set()
        day = (today or datetime.now(UTC)).date()
        steps = (
            (
                "add_partitions",
                {"first": day - timedelta(days=1), "last": day + timedelta(days=DAYS_AHEAD)},
            ),
            ("drop_partitions", {"cutoff": day - timedelta(days=self.settings.retention_days)}),
        )
        done = []
        for name, params in steps:
            try:
                with self.engine.begin() as conn:
                    done.append(
                        int(conn.execute(query("query_log.sql", name), params).scalar_one())
                    )
            except Exception as exc:
                log.warning("query log partitions not maintained (%s): %s", name, _first_line(exc))
                self._maintained_at = time.monotonic() - MAINTAIN_EVERY_S + RETRY_S
                done.append(0)
        return done[0], done[1]

    def stats(self) -> dict[str, int]:
        return {
            "waiting": self.waiting,
            "written": self.written,
            "dropped": self.dropped,
            "failed": self.failed,
        }


def principals_hash(principals: list[str] | None, salt: bytes) -> str | None:
    """A keyed hash of the principals (sorted, deduplicated): equal sets hash alike, and no
    one without the salt can test a guess of the names."""
    if principals is None:
        return None
    return keyed_hash(salt, "\x1f".join(sorted(set(principals))).encode())


def keyed_hash(salt: bytes, value: bytes) -> str:
    return hmac.new(salt, value, hashlib.sha256).hexdigest()[:32]


_FIELDS = attrgetter(*(name for name in COLUMNS if name not in ("principals_hash", "subject_hash")))
_HASH_AT = COLUMNS.index("principals_hash")
_JSON_AT = (COLUMNS.index("filter"), COLUMNS.index("boosts"))


def _row(
    entry: Entry, salt: bytes, hashes: dict[tuple[str, ...] | None, str | None]
) -> tuple[Any, ...]:
    """The entry as COPY takes it; `hashes` keeps each set of principals' hash for the batch."""
    key = None if entry.principals is None else tuple(entry.principals)
    if key not in hashes:
        hashes[key] = principals_hash(entry.principals, salt)
    values = list(_FIELDS(entry))
    values.insert(_HASH_AT, hashes[key])
    subject = entry.subject
    values.insert(_HASH_AT + 1, None if subject is None else keyed_hash(salt, subject.encode()))
    for at in _JSON_AT:
        if values[at] is not None:
            values[at] = Jsonb(values[at], dumps=_json)
    return tuple(values)


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
