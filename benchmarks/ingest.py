"""Ingest throughput: the whole write path, and the store step alone.

    python benchmarks/ingest.py ../shared/data/scifact [--repeats 3] [--limit N]

1. End to end: the BEIR corpus goes through the normal write path (load → chunk → embed with
   the bundled model → store) into a fresh collection: documents/s, chunks/s, peak memory.
2. Store step alone: the same chunks with their vectors already computed are written again
   into fresh collections, through COPY (the product's path) and, as a baseline in the same
   run, through row-by-row INSERTs; median chunks/s over the repeats.

It runs against a throwaway embedded PostgreSQL (or --database-url) and prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from app.db import embedded
from app.ingest import load
from app.ingest.model import SourceDocument, chunk_context
from app.ingest.store import PreparedDocument, write_documents
from app.service import Services
from app.settings import load_settings


def main() -> None:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="hybrid-bench-"))
    url = args.database_url or embedded.start(scratch)[0]
    settings = load_settings({**os.environ, "DATABASE_URL": url, "HYBRID_DATA_DIR": str(scratch)})
    services = Services.open(settings)
    try:
        docs = load.load_path(args.corpus / "corpus.jsonl", max_bytes=1 << 31, max_chars=1 << 30)
        docs = docs[: args.limit] if args.limit else docs
        _machine(len(docs), args.corpus)
        prepared = _end_to_end(services, docs)
        _store_only(services, prepared, args.repeats)
    finally:
        services.close()
        if not args.database_url:
            embedded.stop(scratch)
            shutil.rmtree(scratch, ignore_errors=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="BEIR folder with corpus.jsonl")
    parser.add_argument("--repeats", type=int, default=3, help="Store-step runs (median)")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N documents")
    parser.add_argument("--database-url", help="Use this server instead of a throwaway one")
    return parser.parse_args()


def _machine(documents: int, corpus: Path) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {memory:.1f} GiB, {cpu}")
    print(f"corpus: {corpus.name}, {documents} documents\n")


def _end_to_end(services: Services, docs: list[SourceDocument]) -> list[PreparedDocument]:
    started = time.perf_counter()
    report = services.ingestor.ingest(
        "bench-e2e", docs, create=True, total=len(docs), progress=True
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    chunks = report.chunks
    print("| end to end (local model) | value |\n|---|---|")
    print(f"| documents | {len(docs)} |\n| chunks | {chunks} |\n| seconds | {seconds:.1f} |")
    print(f"| documents/s | {len(docs) / seconds:.1f} |\n| chunks/s | {chunks / seconds:.1f} |")
    print(f"| peak memory (RSS) | {peak:.0f} MiB |\n")
    return _stored(services, docs)


def _stored(services: Services, docs: list[SourceDocument]) -> list[PreparedDocument]:
    """The chunks and vectors of the end-to-end run (from the embedding cache), to write again."""
    return services.ingestor.prepare(docs)


def _store_only(services: Services, prepared: list[PreparedDocument], repeats: int) -> None:
    chunks = sum(len(p.chunks) for p in prepared)
    batch = services.settings.ingest.batch_documents
    copy_rates, insert_rates = [], []
    for run in range(repeats):
        copy_rates.append(
            chunks / _timed(services, f"bench-copy-{run}", prepared, batch, write_documents)
        )
        insert_rates.append(
            chunks / _timed(services, f"bench-insert-{run}", prepared, batch, _insert_rows)
        )
    copy, insert = statistics.median(copy_rates), statistics.median(insert_rates)
    heading = f"store step: {chunks} chunks, {batch} documents a batch"
    print(f"| {heading} | chunks/s, median of {repeats} |")
    print("|---|---|")
    print(f"| binary COPY (product path) | {copy:,.0f} |")
    print(f"| row-by-row INSERT (baseline) | {insert:,.0f} |")
    print(f"| ratio | {copy / insert:.1f}x |")


def _timed(
    services: Services, name: str, prepared: list[PreparedDocument], batch: int, write: Any
) -> float:
    collection = services.ingestor.collection(name, create=True)
    started = time.perf_counter()
    for start in range(0, len(prepared), batch):
        with services.engine.begin() as conn:
            write(conn, collection, prepared[start : start + batch])
    seconds = time.perf_counter() - started
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM collections WHERE id = :id"), {"id": collection.id})
    return seconds


def _insert_rows(conn: Any, collection: Any, docs: list[PreparedDocument]) -> None:
    """Baseline: the same rows as write_documents, one INSERT per section and chunk."""
    from app.ingest.store import _upsert

    ids = _upsert(conn, collection.id, docs)
    driver = conn.connection.driver_connection
    with driver.cursor() as cur:
        for doc in docs:
            document_id = ids[doc.external_id]
            cur.executemany(
                "INSERT INTO sections (collection_id, document_id, ordinal, heading_path, text) "
                "VALUES (%s, %s, %s, %s, %s)",
                [
                    (collection.id, document_id, s.ordinal, list(s.heading_path), s.text)
                    for s in doc.sections
                ],
            )
            cur.executemany(
                "INSERT INTO chunks (collection_id, document_id, ordinal, section_ordinal,"
                " heading_path, context, text, token_count, text_config, embedding)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CAST(%s AS regconfig), %s)",
                [
                    (collection.id, document_id, c.ordinal, c.section_ordinal, list(c.heading_path),
                     chunk_context(doc.title, c.heading_path), c.text, c.token_count,
                     collection.text_config, v)
                    for c, v in zip(doc.chunks, doc.embeddings, strict=True)
                ],
            )  # fmt: skip


if __name__ == "__main__":
    main()
