"""The write path end to end: documents → dedup → chunk → embed (cached) → store.

Documents are processed in batches. For each batch the stored versions are read first: an
unchanged document is skipped (or only its metadata/ACL updated), a new or changed one is
chunked and embedded outside any transaction, then the whole batch is written in one
transaction. Up to `HYBRID_INGEST_WRITERS` batches are written at once while the next one is
prepared (see writers.py). A failure (provider down, database error, process killed) loses
only the batches in flight, and every document in them keeps its previous version.

Chunks are embedded with the collection's own model (`Embedders`). A batch's transaction
reads the collection's model again, under a lock a re-embedding's switch waits for: vectors
computed with a model the collection has just left are computed again before they are
written, into the column the collection now reads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, RowMapping
from tqdm import tqdm

from app import collections, redact
from app.collections import Collection
from app.db.engine import driver_connection
from app.db.queries import query
from app.documents import check_acl, check_external_id
from app.errors import ConfigError, Invalid
from app.ingest import vector_index
from app.ingest.chunk import Tokenizer, chunk_document
from app.ingest.embed import Embedder, Embedders
from app.ingest.model import SourceDocument, embedding_text
from app.ingest.store import PreparedDocument, stored_fields, write_documents
from app.ingest.writers import concurrent_writer
from app.observe.metrics import METRICS, ingest_errors_counted
from app.observe.tracing import span
from app.settings import Settings

# What can become of a document given to ingest.
DOCUMENT_OUTCOMES = ("created", "updated", "metadata_updated", "unchanged")
# ... and of a refused one, when the caller asked for failures to be isolated.
FAILED = "failed"


@dataclass(frozen=True)
class Defaults:
    """Per-call values that records may override: metadata is merged, the ACL replaced."""

    metadata: dict[str, Any] = field(default_factory=dict)
    acl: list[str] | None = None


@dataclass
class DocumentResult:
    external_id: str
    status: str  # created | updated | metadata_updated | unchanged | failed
    document_id: int | None
    chunks: int
    content_hash: str | None = None
    error: str | None = None


@dataclass
class IngestReport:
    documents: list[DocumentResult] = field(default_factory=list)
    embedded: int = 0
    cached: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def chunks(self) -> int:
        return sum(d.chunks for d in self.documents if d.status in ("created", "updated"))

    def summary(self) -> dict[str, Any]:
        return {
            **{status: self.count(status) for status in DOCUMENT_OUTCOMES},
            "chunks": self.chunks,
            "embedded": self.embedded,
            "cached": self.cached,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class PendingBatch:
    """A batch chunked and embedded, waiting for its transaction."""

    rewrites: list[PreparedDocument] = field(default_factory=list)
    field_updates: list[tuple[int, PreparedDocument]] = field(default_factory=list)
    results: list[DocumentResult] = field(default_factory=list)
    # Chunks the model embedded for this batch (the others came from the cache).
    embedded: int = 0
    # The model and dimension of the rewrites' vectors.
    model: tuple[str, int] | None = None


# Called in a batch's write transaction with the batch's outcomes: what it records commits (or
# rolls back) with the documents.
BatchRecorder = Callable[[Connection, PendingBatch], None]


class Ingestor:
    """Runs the write path over any number of calls: `embedder` embeds new collections (and
    those of its model), `embedders` (when given) the collections of other models."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        embedder: Embedder,
        tokenizer: Tokenizer,
        embedders: Embedders | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.embedder = embedder
        self.embedders = embedders
        self.tokenizer = tokenizer
        # HYBRID_INGEST_REDACT: documents are redacted before anything is hashed or stored.
        self.redactor = redact.load(settings.query_log.redactor) if settings.ingest.redact else None

    def ingest(
        self,
        collection_name: str,
        documents: Iterable[SourceDocument],
        *,
        defaults: Defaults | None = None,
        create: bool = False,
        total: int | None = None,
        progress: bool = False,
        writers: int | None = None,
        batch: int | None = None,
        isolate_failures: bool = False,
        record: BatchRecorder | None = None,
    ) -> IngestReport:
        """Write `documents` into the collection (created first if `create`), `batch`
        documents a transaction (default `HYBRID_INGEST_BATCH`), up to `writers` batches at
        once (default `HYBRID_INGEST_WRITERS`). With `isolate_failures` a document that is
        refused (no ACL, a bad id) becomes a `failed` outcome instead of failing the call;
        `record` runs in each batch's transaction."""
        with ingest_errors_counted(), span("ingest", collection=collection_name):
            report = self._ingest(
                collection_name, documents, defaults=defaults, create=create, total=total,
                progress=progress, writers=writers, batch=batch,
                isolate_failures=isolate_failures, record=record,
            )  # fmt: skip
        METRICS.observe_ingest(
            {status: report.count(status) for status in DOCUMENT_OUTCOMES},
            report.chunks, report.embedded, report.cached, report.seconds,
        )  # fmt: skip
        return report

    def _ingest(
        self,
        collection_name: str,
        documents: Iterable[SourceDocument],
        *,
        defaults: Defaults | None,
        create: bool,
        total: int | None,
        progress: bool,
        writers: int | None,
        batch: int | None,
        isolate_failures: bool,
        record: BatchRecorder | None,
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        collection = self.collection(collection_name, create=create)
        bar = tqdm(total=total, unit="doc", disable=not progress, dynamic_ncols=True)
        settings = self.settings.ingest
        with (
            bar,
            vector_index.deferred(self.engine, collection.id, settings.index_memory),
            concurrent_writer(
                self.engine, writers or settings.writers, self.settings.database.write_retries
            ) as writer,
        ):

            def written(read: int, pending: PendingBatch) -> None:
                """`read`: the input documents of the batch (repeats included)."""
                report.documents.extend(pending.results)
                bar.update(read)
                bar.set_postfix(chunks=report.chunks, embedded=report.embedded, refresh=False)

            for part in _batched(documents, batch or settings.batch_documents):
                unique = _last_wins(part)
                keys = [d.external_id for d in unique]
                # A document still being written by an earlier batch is read once it is.
                writer.wait_for(keys)
                with span("ingest.prepare", documents=len(unique)):
                    pending = self._prepare_batch(
                        collection, unique, defaults or Defaults(), report, isolate_failures
                    )
                write = partial(self._write_batch, collection, pending, record)
                writer.submit(keys, write, partial(written, len(part)))
        report.seconds = time.perf_counter() - started
        return report

    def stored_hash(self, doc: SourceDocument) -> str:
        """The content hash `doc` is stored with (after redaction, when it is on)."""
        if self.redactor is not None:
            doc = redact_document(doc, self.redactor)
        return doc.content_hash()

    def prepare(
        self, docs: list[SourceDocument], defaults: Defaults | None = None
    ) -> list[PreparedDocument]:
        """Resolve, chunk and embed documents as if new, without writing anything."""
        prepared = [self._resolve(doc, None, defaults or Defaults()) for doc in docs]
        for doc, ready in zip(docs, prepared, strict=True):
            self._chunk(doc, ready)
        self._embed(prepared, IngestReport(), self.embedder)
        return prepared

    def collection(self, name: str, *, create: bool) -> Collection:
        with self.engine.begin() as conn:
            if create:
                found = collections.get_or_create(
                    conn,
                    name,
                    embedding_model=self.embedder.model_id,
                    embedding_dim=self.embedder.dimension,
                )
            else:
                found = collections.get(conn, name)
        self.embedder_for(found)
        return found

    def embedder_for(self, collection: Collection) -> Embedder:
        """The embedder of the collection's vectors."""
        model = (collection.embedding_model, collection.embedding_dim)
        if model == (self.embedder.model_id, self.embedder.dimension):
            return self.embedder
        if self.embedders is None:
            raise Invalid(
                f"collection {collection.name!r} holds vectors of model "
                f"{collection.embedding_model!r}, but this service embeds with "
                f"{self.embedder.model_id!r}",
                field="collection",
            )
        try:
            return self.embedders.get(*model)
        except ConfigError as exc:
            raise Invalid(
                f"collection {collection.name!r} holds vectors of model "
                f"{collection.embedding_model!r}, which this service cannot load: {exc.message}",
                field="collection",
            ) from exc

    def _prepare_batch(
        self,
        collection: Collection,
        batch: list[SourceDocument],
        defaults: Defaults,
        report: IngestReport,
        isolate_failures: bool = False,
    ) -> PendingBatch:
        """Classify the batch against what is stored, chunk and embed what must be written."""
        with self.engine.connect() as conn:
            existing = _existing(conn, collection.id, [d.external_id for d in batch])
            # Its model now (a re-embedding may have switched it since the ingest began).
            collection = collections.get(conn, collection.name)
        pending = PendingBatch()
        for given in batch:
            doc = given if self.redactor is None else redact_document(given, self.redactor)
            stored = existing.get(doc.external_id)
            try:
                prepared = self._resolve(doc, stored, defaults)
            except Invalid as exc:
                if not isolate_failures:
                    raise
                pending.results.append(
                    DocumentResult(doc.external_id, FAILED, None, 0, error=exc.message)
                )
                continue
            status = _classify(prepared, stored)
            if status == "metadata_updated" and stored is not None:
                pending.field_updates.append((stored["id"], prepared))
            if status in ("created", "updated"):
                self._chunk(doc, prepared)
                pending.rewrites.append(prepared)
            pending.results.append(
                DocumentResult(doc.external_id, status, _id(stored), 0, prepared.content_hash)
            )
        embedded_before = report.embedded
        embedder = self.embedder_for(collection)
        self._embed(pending.rewrites, report, embedder)
        pending.embedded = report.embedded - embedded_before
        pending.model = (embedder.model_id, embedder.dimension)
        return pending

    def _write_batch(
        self,
        collection: Collection,
        pending: PendingBatch,
        record: BatchRecorder | None,
        conn: Connection,
    ) -> PendingBatch:
        """Write a prepared batch in the caller's transaction (a writer thread's own)."""
        # The collection as it is now, held against a re-embedding's switch until commit.
        current = collections.lock_for_write(conn, collection.id)
        if pending.rewrites and pending.model != (current.embedding_model, current.embedding_dim):
            # Switched to another model since the batch was embedded.
            report = IngestReport()
            embedder = self.embedder_for(current)
            self._embed(pending.rewrites, report, embedder)
            pending.embedded += report.embedded
            pending.model = (embedder.model_id, embedder.dimension)
        ids = write_documents(conn, current, pending.rewrites, self.settings.ingest.work_mem)
        for document_id, prepared in pending.field_updates:
            update_fields(conn, collection.id, document_id, prepared)
        chunk_counts = {p.external_id: len(p.chunks) for p in pending.rewrites}
        for result in pending.results:
            result.document_id = ids.get(result.external_id, result.document_id)
            result.chunks = chunk_counts.get(result.external_id, 0)
        if record is not None:
            record(conn, pending)
        return pending

    def _resolve(
        self, doc: SourceDocument, stored: RowMapping | None, defaults: Defaults
    ) -> PreparedDocument:
        old: dict[str, Any] = dict(stored) if stored is not None else {}
        acl = _first_given(
            doc.acl, defaults.acl, old.get("acl"), list(self.settings.ingest.default_acl)
        )
        if not acl:
            raise Invalid(f"{doc.external_id}: acl must name at least one principal", field="acl")
        try:
            check_external_id(doc.external_id)
            check_acl(acl)
        except Invalid as exc:
            raise Invalid(f"{doc.external_id[:80]}: {exc.message}", field=exc.field) from exc
        popularity = doc.popularity if doc.popularity is not None else old.get("popularity", 0.0)
        return PreparedDocument(
            external_id=doc.external_id,
            title=doc.title,
            source=doc.source or old.get("source"),
            content_hash=doc.content_hash(),
            metadata={**old.get("metadata", {}), **defaults.metadata, **doc.metadata},
            acl=sorted(set(acl)),
            popularity=float(popularity),
            published_at=doc.published_at or old.get("published_at"),
            sections=[],
            chunks=[],
            embeddings=np.empty((0, self.embedder.dimension), dtype=np.float32),
        )

    def _chunk(self, doc: SourceDocument, prepared: PreparedDocument) -> None:
        prepared.sections, prepared.chunks = chunk_document(
            doc, self.settings.chunking, self.tokenizer
        )

    def _embed(
        self, docs: list[PreparedDocument], report: IngestReport, embedder: Embedder
    ) -> None:
        texts = [embedding_text(d.title, c) for d in docs for c in d.chunks]
        if not texts:
            return
        vectors = self.embed_cached(texts, report, embedder)
        offset = 0
        for doc in docs:
            doc.embeddings = vectors[offset : offset + len(doc.chunks)]
            offset += len(doc.chunks)

    def embed_cached(
        self,
        texts: list[str],
        report: IngestReport | None = None,
        embedder: Embedder | None = None,
    ) -> np.ndarray:
        """Vectors for `texts` by `embedder` (default: this ingestor's), from the embedding
        cache where possible, the model otherwise."""
        embedder = embedder or self.embedder
        hashes = [hashlib.sha256(t.encode()).digest() for t in texts]
        # The token cap changes what the local model sees, and one model may give vectors of
        # several dimensions: both are part of the cache key.
        model = f"{embedder.model_id}#{self.settings.embedding.max_tokens}@{embedder.dimension}"
        with self.engine.connect() as conn:
            rows = conn.execute(
                query("write.sql", "cached_embeddings"),
                {"model": model, "text_hashes": list(set(hashes))},
            )
            found = {bytes(r.text_hash): r.embedding.to_numpy() for r in rows}
        missing = list(dict.fromkeys(h for h in hashes if h not in found))
        if missing:
            text_of = dict(zip(hashes, texts, strict=True))
            fresh = embedder.embed([text_of[h] for h in missing])
            new = dict(zip(missing, fresh, strict=True))
            self._store_cache(model, new)
            found.update(new)
        if report is not None:
            report.embedded += len(missing)
            report.cached += len(texts) - len(missing)
        return np.stack([found[h] for h in hashes]).astype(np.float32)

    def _store_cache(self, model: str, vectors: dict[bytes, np.ndarray]) -> None:
        with self.engine.begin() as conn, driver_connection(conn).cursor() as cur:
            cur.executemany(
                "INSERT INTO embedding_cache (model, text_hash, embedding) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(model, h, v) for h, v in vectors.items()],
            )


def update_fields(
    conn: Connection, collection_id: int, document_id: int, doc: PreparedDocument
) -> None:
    """Change the stored fields (`FIELDS`: metadata, ACL, source, date, popularity) of a
    stored document without re-embedding."""
    fields = doc.fields()
    conn.execute(
        query("documents.sql", "update_document_fields"),
        {
            **fields,
            "metadata": json.dumps(fields["metadata"]),
            "collection_id": collection_id,
            "document_id": document_id,
        },
    )


def _existing(
    conn: Connection, collection_id: int, external_ids: list[str]
) -> dict[str, RowMapping]:
    rows = conn.execute(
        query("write.sql", "existing_documents"),
        {"collection_id": collection_id, "external_ids": external_ids},
    ).mappings()
    return {row["external_id"]: row for row in rows}


def _classify(doc: PreparedDocument, stored: RowMapping | None) -> str:
    if stored is None:
        return "created"
    if stored["deleted_at"] is not None or stored["content_hash"] != doc.content_hash:
        return "updated"
    return "unchanged" if stored_fields(stored) == doc.fields() else "metadata_updated"


def redact_document(doc: SourceDocument, redactor: redact.Redactor) -> SourceDocument:
    """`doc` with its title, headings and text redacted (its id, metadata and ACL as given)."""
    blocks = [
        replace(b, text=redactor(b.text), heading_path=tuple(redactor(h) for h in b.heading_path))
        for b in doc.blocks
    ]
    return replace(doc, title=redactor(doc.title), blocks=blocks)


def _first_given(*candidates: list[str] | None) -> list[str]:
    """The first ACL that was given at all: an explicit empty list is kept, and refused."""
    return next((c for c in candidates if c is not None), [])


def _id(stored: RowMapping | None) -> int | None:
    return int(stored["id"]) if stored is not None else None


def _batched(items: Iterable[SourceDocument], size: int) -> Iterator[list[SourceDocument]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _last_wins(batch: list[SourceDocument]) -> list[SourceDocument]:
    """Within one batch a repeated external id is one document: its last occurrence."""
    return list({doc.external_id: doc for doc in batch}.values())
